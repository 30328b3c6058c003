//! The item side of ranking: a catalog of item features keyed by item id, which the server
//! looks candidates up in so that a request may send ids alone.
//!
//! A catalog is columnar in memory (one array per feature, the ids in one string arena, an
//! index of 4-byte rows), so a million items cost their values and little more. It is built
//! once, validated while it is built, and never changed: a new version is a new catalog.
//!
//! # Layout
//! - this file: [`Catalog`], its [`Builder`] and the [`Item`] a lookup gives.
//! - [`file`]: the catalog package on disk, `<catalogs>/<name>/<version>/{catalog.toml, items.bin}`.

pub mod file;

use std::borrow::Cow;

use crate::encode::{FeatureSource, Value};
use crate::ids::{IdIndex, Strings, TooLarge};
use crate::item_tower::ItemVectors;

/// What a catalog column holds. A categorical value is kept as text: an integer id hashes as
/// its decimal text anyway (see `encode.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    Categorical,
    Number,
    Vector { dim: usize },
}

impl ColumnKind {
    pub fn name(&self) -> &'static str {
        match self {
            ColumnKind::Categorical => "categorical",
            ColumnKind::Number => "number",
            ColumnKind::Vector { .. } => "vector",
        }
    }
}

/// One column's values, row by row. A missing value is `NaN` for numbers and vectors (finite
/// values only are accepted, so `NaN` is free to mean "missing") and `false` in `present` for
/// text.
#[derive(Debug, Clone)]
enum Values {
    Text { strings: Strings, present: Vec<bool> },
    Number(Vec<f64>),
    Vector { dim: usize, values: Vec<f64> },
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    values: Values,
}

impl Column {
    fn kind(&self) -> ColumnKind {
        match &self.values {
            Values::Text { .. } => ColumnKind::Categorical,
            Values::Number(_) => ColumnKind::Number,
            Values::Vector { dim, .. } => ColumnKind::Vector { dim: *dim },
        }
    }

    /// The value at `row` as the cell it was built from.
    fn cell(&self, row: usize) -> Cell<'_> {
        match self.value(row) {
            Value::Str(s) => Cell::Text(Cow::Borrowed(s)),
            Value::Float(x) => Cell::Number(x),
            Value::List(v) => Cell::Vector(v),
            _ => Cell::Missing,
        }
    }

    fn value(&self, row: usize) -> Value<'_> {
        match &self.values {
            Values::Text { strings, present } => match present[row] {
                true => Value::Str(strings.get(row)),
                false => Value::Missing,
            },
            Values::Number(v) => match v[row] {
                x if x.is_nan() => Value::Missing,
                x => Value::Float(x),
            },
            Values::Vector { dim, values } => {
                let v = &values[row * dim..(row + 1) * dim];
                match v.first() {
                    Some(x) if x.is_nan() => Value::Missing,
                    _ => Value::List(Cow::Borrowed(v)),
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    #[error("row {row}: item id `{id}` appears twice (first at row {first})")]
    DuplicateId { row: usize, id: String, first: usize },
    #[error("row {row}: an empty item id")]
    EmptyId { row: usize },
    #[error("row {row}, column `{column}`: {problem}")]
    Value { row: usize, column: String, problem: String },
    #[error("column `{0}` is declared twice")]
    DuplicateColumn(String),
    #[error("the catalog's text is over 4 GiB; split it")]
    TooLarge,
}

impl From<TooLarge> for CatalogError {
    fn from(_: TooLarge) -> Self {
        CatalogError::TooLarge
    }
}

/// Items with their values: a whole catalog version, or a delta's new and changed items.
#[derive(Clone)]
struct Layer {
    ids: IdIndex,
    columns: Vec<Column>,
}

impl Layer {
    fn find(&self, id: &str) -> Option<usize> {
        self.ids.find(id)
    }

    fn heap_bytes(&self) -> usize {
        let values: usize = self
            .columns
            .iter()
            .map(|c| match &c.values {
                Values::Text { strings, present } => strings.heap_bytes() + present.capacity(),
                Values::Number(v) | Values::Vector { values: v, .. } => 8 * v.capacity(),
            })
            .sum();
        self.ids.heap_bytes() + values
    }
}

/// Past this many layers (a whole version and its deltas), a new delta is merged with them
/// into one layer: each lookup probes every layer, so their number stays small.
pub const MAX_LAYERS: usize = 8;

/// A versioned table of item features keyed by item id. Immutable once built; a delta makes a
/// new catalog that shares its base's layers.
#[derive(Clone)]
pub struct Catalog {
    pub name: String,
    pub version: String,
    /// The column of the examples the ids come from (`track_id`): a feature of that name reads
    /// the id itself.
    pub id_column: String,
    /// Newest first: a delta's items over those of the versions below it.
    layers: Vec<std::sync::Arc<Layer>>,
    /// Distinct items over all layers.
    len: usize,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("items", &self.len())
            .field("columns", &self.columns().collect::<Vec<_>>())
            .finish()
    }
}

impl Catalog {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item with this id (from the newest layer that has it), or `None`.
    pub fn get(&self, id: &str) -> Option<Item<'_>> {
        self.layers.iter().enumerate().find_map(|(depth, layer)| {
            let row = layer.find(id)?;
            Some(Item { layer, depth, id_column: &self.id_column, row })
        })
    }

    /// Every item of layer `depth` (0: the newest), in the order it was built, including any
    /// that a newer layer overrides.
    pub fn layer_items(&self, depth: usize) -> impl ExactSizeIterator<Item = Item<'_>> {
        let layer = &self.layers[depth];
        (0..layer.ids.len()).map(move |row| Item { layer, depth, id_column: &self.id_column, row })
    }

    /// Whether layer `depth` of this catalog is layer `other_depth` of `other`: the same items,
    /// shared in memory (a delta shares its base's layers).
    pub fn same_layer(&self, depth: usize, other: &Catalog, other_depth: usize) -> bool {
        std::sync::Arc::ptr_eq(&self.layers[depth], &other.layers[other_depth])
    }

    /// Each column's name and kind, in order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, ColumnKind)> {
        self.layers[0].columns.iter().map(|c| (c.name.as_str(), c.kind()))
    }

    /// Bytes held by the values, ids and index of every layer (not counting allocator
    /// overhead; a layer shared with the previous version counts here too).
    pub fn heap_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.heap_bytes()).sum()
    }

    /// Layers: 1 for a whole version, one more per delta over it (at most [`MAX_LAYERS`]).
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// `delta` (new and changed items, as version `delta.version`) over this catalog. Its id
    /// column and columns must be this catalog's. Shares this catalog's layers, unless there
    /// would be more than [`MAX_LAYERS`]: then all are merged into one.
    pub fn with_delta(&self, delta: Catalog) -> Result<Catalog, String> {
        if delta.id_column != self.id_column || !delta.columns().eq(self.columns()) {
            return Err(format!(
                "delta {}/{} has other columns than its base {}/{} (id column `{}`, columns {:?}; the base: `{}`, {:?})",
                delta.name,
                delta.version,
                self.name,
                self.version,
                delta.id_column,
                delta.columns().map(|(n, _)| n).collect::<Vec<_>>(),
                self.id_column,
                self.columns().map(|(n, _)| n).collect::<Vec<_>>(),
            ));
        }
        let top = delta.layers.into_iter().next().expect("a built catalog has a layer");
        let added = (0..top.ids.len()).filter(|&r| self.get(top.ids.get(r)).is_none()).count();
        let mut layers = vec![top];
        layers.extend(self.layers.iter().cloned());
        let layered = Catalog {
            name: self.name.clone(),
            version: delta.version,
            id_column: self.id_column.clone(),
            layers,
            len: self.len + added,
        };
        Ok(if layered.layers.len() > MAX_LAYERS { layered.merged() } else { layered })
    }

    /// The same items in one layer, each with its newest values.
    pub fn merged(&self) -> Catalog {
        if self.layers.len() == 1 {
            return self.clone();
        }
        let columns: Vec<(String, ColumnKind)> = self.columns().map(|(n, k)| (n.to_string(), k)).collect();
        let mut b = Builder::new(&self.name, &self.version, &self.id_column, &columns, self.len)
            .expect("a catalog's columns are valid");
        let mut cells = Vec::with_capacity(columns.len());
        for layer in &self.layers {
            for row in 0..layer.ids.len() {
                let id = layer.ids.get(row);
                if b.layer.find(id).is_some() {
                    continue; // a newer layer had it
                }
                cells.clear();
                cells.extend(layer.columns.iter().map(|c| c.cell(row)));
                b.push(id, &cells).expect("a catalog's values are valid");
            }
        }
        b.finish()
    }

    /// The one layer of a catalog that has one (a built catalog, a whole version read).
    fn only_layer(&self) -> &Layer {
        assert_eq!(self.layers.len(), 1, "one layer: write a delta's catalog before composing it");
        &self.layers[0]
    }
}

/// One catalog item: its features, read as a request's would be.
#[derive(Clone, Copy)]
pub struct Item<'c> {
    layer: &'c Layer,
    /// The layer's place in its catalog, 0 the newest.
    depth: usize,
    id_column: &'c str,
    row: usize,
}

impl<'c> Item<'c> {
    pub fn id(&self) -> &'c str {
        self.layer.ids.get(self.row)
    }

    /// Its layer in the catalog (0 the newest) and its row in that layer.
    pub fn position(&self) -> (usize, usize) {
        (self.depth, self.row)
    }

    /// Asks the CPU to start fetching this item's values, so that a request's candidates'
    /// cache misses overlap instead of following one another when they are encoded.
    fn prefetch(&self) {
        let row = self.row;
        for c in &self.layer.columns {
            match &c.values {
                Values::Text { strings, present } => {
                    prefetch(&strings.offsets[row]);
                    prefetch(&present[row]);
                    let start = strings.offsets[row] as usize;
                    if let Some(b) = strings.bytes.as_bytes().get(start) {
                        prefetch(b);
                    }
                }
                Values::Number(v) => prefetch(&v[row]),
                Values::Vector { dim, values } => {
                    prefetch(&values[row * dim]);
                    prefetch(&values[(row + 1) * dim - 1]);
                }
            }
        }
    }
}

/// A hint to load the cache line holding `x`; nothing on targets without one.
#[inline(always)]
pub(crate) fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault; `x` is a valid
    // reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch(x as *const T as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

impl FeatureSource for Item<'_> {
    fn get(&self, name: &str) -> Value<'_> {
        if let Some(c) = self.layer.columns.iter().find(|c| c.name == name) {
            return c.value(self.row);
        }
        if name == self.id_column {
            return Value::Str(self.id());
        }
        Value::Missing
    }
}

/// One value given to [`Builder::push`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Missing,
    Text(Cow<'a, str>),
    Number(f64),
    Vector(Cow<'a, [f64]>),
}

/// Builds a catalog row by row, refusing a duplicate id or a bad value with its row and column.
pub struct Builder {
    /// Its name, version and id column (no layer yet).
    catalog: Catalog,
    layer: Layer,
}

impl Builder {
    pub fn new(
        name: &str,
        version: &str,
        id_column: &str,
        columns: &[(String, ColumnKind)],
        rows: usize,
    ) -> Result<Builder, CatalogError> {
        let mut built = Vec::with_capacity(columns.len());
        for (name, kind) in columns {
            if built.iter().any(|c: &Column| &c.name == name) || name == id_column {
                return Err(CatalogError::DuplicateColumn(name.clone()));
            }
            let values = match kind {
                ColumnKind::Categorical => {
                    Values::Text { strings: Strings::with_capacity(rows), present: Vec::with_capacity(rows) }
                }
                ColumnKind::Number => Values::Number(Vec::with_capacity(rows)),
                ColumnKind::Vector { dim } => {
                    Values::Vector { dim: *dim, values: Vec::with_capacity(rows * dim) }
                }
            };
            built.push(Column { name: name.clone(), values });
        }
        let layer = Layer { ids: IdIndex::with_capacity(rows), columns: built };
        Ok(Builder {
            catalog: Catalog {
                name: name.to_string(),
                version: version.to_string(),
                id_column: id_column.to_string(),
                layers: Vec::new(),
                len: 0,
            },
            layer,
        })
    }

    /// Rows pushed so far.
    pub fn len(&self) -> usize {
        self.layer.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an item, its `cells` in the columns' order. Nothing is added when it is refused.
    pub fn push(&mut self, id: &str, cells: &[Cell<'_>]) -> Result<(), CatalogError> {
        let row = self.len();
        let c = &mut self.layer;
        if id.is_empty() {
            return Err(CatalogError::EmptyId { row });
        }
        if let Some(first) = c.ids.find(id) {
            return Err(CatalogError::DuplicateId { row, id: id.to_string(), first });
        }
        assert_eq!(cells.len(), c.columns.len(), "one cell per column");
        // Check every cell before writing any, so that a refused row leaves no trace.
        for (column, cell) in c.columns.iter().zip(cells) {
            check(column, cell).map_err(|problem| CatalogError::Value {
                row,
                column: column.name.clone(),
                problem,
            })?;
        }
        for (column, cell) in c.columns.iter_mut().zip(cells) {
            match (&mut column.values, cell) {
                (Values::Text { strings, present }, Cell::Text(s)) => {
                    strings.push(s)?;
                    present.push(true);
                }
                (Values::Text { strings, present }, _) => {
                    strings.push("")?;
                    present.push(false);
                }
                (Values::Number(v), Cell::Number(x)) => v.push(*x),
                (Values::Number(v), _) => v.push(f64::NAN),
                (Values::Vector { values, .. }, Cell::Vector(x)) => values.extend_from_slice(x),
                (Values::Vector { dim, values }, _) => values.extend(std::iter::repeat_n(f64::NAN, *dim)),
            }
        }
        c.ids.push_new(id)?;
        Ok(())
    }

    pub fn finish(self) -> Catalog {
        let len = self.layer.ids.len();
        Catalog { layers: vec![std::sync::Arc::new(self.layer)], len, ..self.catalog }
    }
}

/// Why `cell` cannot go in `column`, if it cannot.
fn check(column: &Column, cell: &Cell<'_>) -> Result<(), String> {
    match (&column.values, cell) {
        (_, Cell::Missing) | (Values::Text { .. }, Cell::Text(_)) => Ok(()),
        (Values::Number(_), Cell::Number(x)) if x.is_finite() => Ok(()),
        (Values::Number(_), Cell::Number(x)) => Err(format!("{x} is not a finite number")),
        (Values::Vector { dim, .. }, Cell::Vector(v)) => {
            if v.len() != *dim {
                Err(format!("a vector of {} numbers; expected {dim}", v.len()))
            } else if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                Err(format!("element {i} is {x}, not a finite number"))
            } else {
                Ok(())
            }
        }
        (values, cell) => {
            let expected = match values {
                Values::Text { .. } => "text",
                Values::Number(_) => "a number",
                Values::Vector { .. } => "a vector",
            };
            let found = match cell {
                Cell::Text(_) => "text",
                Cell::Number(_) => "a number",
                Cell::Vector(_) => "a vector",
                Cell::Missing => "nothing",
            };
            Err(format!("{found}; expected {expected}"))
        }
    }
}

/// Whether a model whose manifest is `manifest` can read its item features from `catalog`: each
/// catalog column the model reads must be of the feature's kind (a vector of its length), and
/// the id column, when the model reads it, categorical. A catalog that fails would make every
/// request by id fail, blamed on the caller.
pub fn compatible(manifest: &crate::manifest::Manifest, catalog: &Catalog) -> Result<(), String> {
    use crate::manifest::{FeatureKind, Side};
    for f in manifest.features.iter().filter(|f| f.side == Side::Item) {
        let fits = |kind: &ColumnKind| match (&f.kind, kind) {
            (FeatureKind::Categorical { .. }, ColumnKind::Categorical) => true,
            (FeatureKind::Number { .. }, ColumnKind::Number) => true,
            (FeatureKind::Vector { dim, .. }, ColumnKind::Vector { dim: d }) => dim == d,
            _ => false,
        };
        let kind = if f.name == catalog.id_column {
            Some(ColumnKind::Categorical)
        } else {
            catalog.columns().find(|(n, _)| *n == f.name).map(|(_, k)| k)
        };
        if let Some(kind) = kind.filter(|k| !fits(k)) {
            let dim = |k: &ColumnKind| match k {
                ColumnKind::Vector { dim } => format!(" of {dim}"),
                _ => String::new(),
            };
            let wanted = match &f.kind {
                FeatureKind::Vector { dim, .. } => format!("vector of {dim}"),
                other => other.name().to_string(),
            };
            return Err(format!(
                "catalog {}/{} holds `{}` as {}{}, but model {} reads it as {wanted}",
                catalog.name,
                catalog.version,
                f.name,
                kind.name(),
                dim(&kind),
                manifest.id(),
            ));
        }
    }
    Ok(())
}

/// A candidate's features: those the request gave, over its catalog item's. With a catalog,
/// the catalog's id column reads the candidate's id, even for an item the catalog lacks.
pub struct Overlay<'a, R> {
    pub request: &'a R,
    pub item: Option<Item<'a>>,
    /// The catalog's id column, and the candidate's id.
    pub id: Option<(&'a str, Cow<'a, str>)>,
}

impl<'a, R> Overlay<'a, R> {
    /// The request's features alone (no catalog).
    pub fn alone(request: &'a R) -> Overlay<'a, R> {
        Overlay { request, item: None, id: None }
    }
}

impl<R: FeatureSource> FeatureSource for Overlay<'_, R> {
    fn get(&self, name: &str) -> Value<'_> {
        match self.request.get(name) {
            Value::Missing => {}
            given => return given,
        }
        match (&self.item, &self.id) {
            (Some(item), _) => item.get(name),
            (None, Some((column, id))) if *column == name => Value::Str(id),
            _ => Value::Missing,
        }
    }
}

/// Candidates over their catalog items, in the order given, and the positions (in that order)
/// of the misses: candidates sent as ids alone whose id the catalog lacks. (One that carries
/// features of its own and is not in the catalog is a request-time item, not a miss.)
pub struct Lookup<'a, 'r> {
    pub sources: Vec<Overlay<'a, crate::request::Candidate<'r>>>,
    pub misses: Vec<usize>,
    /// The catalog looked up in.
    pub catalog: Option<&'a Catalog>,
}

/// Looks each candidate up in `catalog` by its id (none looked up without a catalog). With
/// `vectors` (the item tower's outputs over this catalog), an id alone will be encoded from its
/// vector, so that is what is fetched ahead; otherwise the item's values are.
pub fn look_up<'a, 'r>(
    catalog: Option<&'a Catalog>,
    candidates: impl IntoIterator<Item = &'a crate::request::Candidate<'r>>,
    vectors: Option<&ItemVectors>,
) -> Lookup<'a, 'r> {
    let vectors = vectors.filter(|v| catalog.is_some_and(|c| v.is_for(c)));
    let candidates = candidates.into_iter();
    let mut sources = Vec::with_capacity(candidates.size_hint().0);
    let mut misses = Vec::new();
    for (i, candidate) in candidates.enumerate() {
        let Some(catalog) = catalog else {
            sources.push(Overlay::alone(candidate));
            continue;
        };
        let id = candidate.id.text();
        let item = catalog.get(&id);
        match (&item, vectors) {
            (Some(item), Some(vectors)) if candidate.features.0.is_empty() => vectors.prefetch(item),
            (Some(item), _) => item.prefetch(),
            (None, _) => {}
        }
        if item.is_none() && candidate.features.0.is_empty() {
            misses.push(i);
        }
        sources.push(Overlay { request: candidate, item, id: Some((catalog.id_column.as_str(), id)) });
    }
    Lookup { sources, misses, catalog }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Three tracks: an artist, a duration and an embedding each, the third without a duration.
    pub fn tracks() -> Catalog {
        let columns = [
            ("artist_id".to_string(), ColumnKind::Categorical),
            ("duration_s".to_string(), ColumnKind::Number),
            ("track_embedding".to_string(), ColumnKind::Vector { dim: 2 }),
        ];
        let mut b = Builder::new("music", "1", "track_id", &columns, 3).unwrap();
        for (id, artist, duration, e) in [("t1", "a1", 200.0, [0.5, 1.0]), ("t2", "a2", 180.0, [-1.0, 0.0])] {
            let cells = [Cell::Text(artist.into()), Cell::Number(duration), Cell::Vector(e.to_vec().into())];
            b.push(id, &cells).unwrap();
        }
        b.push("t3", &[Cell::Text("a1".into()), Cell::Missing, Cell::Vector(vec![0.0, 0.0].into())]).unwrap();
        b.finish()
    }

    #[test]
    fn an_item_reads_its_features_and_its_id() {
        let c = tracks();
        assert_eq!(c.len(), 3);
        let t2 = c.get("t2").unwrap();
        assert_eq!(t2.id(), "t2");
        assert_eq!(t2.get("artist_id"), Value::Str("a2"));
        assert_eq!(t2.get("duration_s"), Value::Float(180.0));
        assert_eq!(t2.get("track_embedding"), Value::List(Cow::Borrowed(&[-1.0, 0.0])));
        assert_eq!(t2.get("track_id"), Value::Str("t2"));
        assert_eq!(t2.get("genre"), Value::Missing);
        assert_eq!(c.get("t3").unwrap().get("duration_s"), Value::Missing);
        assert!(c.get("t4").is_none() && c.get("").is_none());
    }

    #[test]
    fn a_duplicate_id_or_a_bad_value_is_refused_with_its_row_and_column_and_leaves_no_trace() {
        let columns =
            [("d".to_string(), ColumnKind::Number), ("v".to_string(), ColumnKind::Vector { dim: 2 })];
        let mut b = Builder::new("c", "1", "id", &columns, 0).unwrap();
        let ok = |x: f64| [Cell::Number(x), Cell::Vector(vec![1.0, 2.0].into())];
        b.push("a", &ok(1.0)).unwrap();
        let err = b.push("a", &ok(2.0)).unwrap_err();
        assert_eq!(err, CatalogError::DuplicateId { row: 1, id: "a".into(), first: 0 });
        let err = b.push("b", &ok(f64::INFINITY)).unwrap_err().to_string();
        assert_eq!(err, "row 1, column `d`: inf is not a finite number");
        let err = b.push("b", &[Cell::Number(1.0), Cell::Vector(vec![1.0].into())]).unwrap_err().to_string();
        assert!(err.contains("column `v`") && err.contains("expected 2"), "{err}");
        let err = b.push("b", &[Cell::Text("x".into()), Cell::Missing]).unwrap_err().to_string();
        assert_eq!(err, "row 1, column `d`: text; expected a number");
        assert!(matches!(b.push("", &ok(1.0)), Err(CatalogError::EmptyId { row: 1 })));
        b.push("b", &ok(3.0)).unwrap();
        let c = b.finish();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b").unwrap().get("d"), Value::Float(3.0));
        assert_eq!(c.get("b").unwrap().get("v"), Value::List(Cow::Borrowed(&[1.0, 2.0])));
        assert!(matches!(
            Builder::new("c", "1", "id", &[("id".into(), ColumnKind::Number)], 0),
            Err(CatalogError::DuplicateColumn(_))
        ));
    }

    #[test]
    fn a_request_feature_overrides_the_catalog_and_a_miss_reads_nothing() {
        let c = tracks();
        let request =
            crate::request::Features(vec![("duration_s".into(), crate::request::FeatureValue::Float(1.0))]);
        let over = Overlay { request: &request, item: c.get("t1"), id: None };
        assert_eq!(over.get("duration_s"), Value::Float(1.0));
        assert_eq!(over.get("artist_id"), Value::Str("a1"));
        let miss = Overlay { request: &request, item: c.get("nope"), id: Some(("track_id", "nope".into())) };
        assert_eq!(miss.get("artist_id"), Value::Missing);
        assert_eq!(miss.get("track_id"), Value::Str("nope"));
        assert_eq!(Overlay::alone(&request).get("track_id"), Value::Missing);
    }

    #[test]
    fn a_lookup_names_the_candidates_the_catalog_lacks() {
        let c = tracks();
        let req = crate::request::decode(
            br#"{"context": {}, "candidates": ["t2", 5, {"id": "t1", "features": {"artist_id": "x"}},
                {"id": "new", "features": {"genre": "g"}}]}"#,
        )
        .unwrap();
        let found = look_up(Some(&c), &req.candidates, None);
        assert_eq!(found.misses, [1], "a candidate with features of its own is not a miss");
        assert_eq!(found.sources[0].get("artist_id"), Value::Str("a2"));
        assert_eq!(found.sources[1].get("track_id"), Value::Str("5"));
        assert_eq!(found.sources[2].get("artist_id"), Value::Str("x"));
        assert_eq!(found.sources[2].get("duration_s"), Value::Float(200.0));
        let alone = look_up(None, &req.candidates, None);
        assert!(alone.misses.is_empty() && alone.sources[0].get("artist_id") == Value::Missing);
    }

    #[test]
    fn a_catalog_is_compatible_with_a_model_only_if_its_columns_are_the_features_kinds() {
        let (manifest, _) = crate::scaffold::seeded_package("m", "1", 1);
        let good = {
            let columns = [
                ("duration_s".to_string(), ColumnKind::Number),
                ("track_embedding".to_string(), ColumnKind::Vector { dim: 8 }),
            ];
            Builder::new("music", "1", "track_id", &columns, 0).unwrap().finish()
        };
        compatible(&manifest, &good).unwrap();
        let bad = |name: &str, kind: ColumnKind| {
            let columns = [(name.to_string(), kind)];
            compatible(&manifest, &Builder::new("music", "2", "track_id", &columns, 0).unwrap().finish())
        };
        let err = bad("track_embedding", ColumnKind::Vector { dim: 2 }).unwrap_err();
        assert!(err.contains("`track_embedding` as vector of 2") && err.contains("vector of 8"), "{err}");
        let err = bad("duration_s", ColumnKind::Categorical).unwrap_err();
        assert!(
            err.contains("catalog music/2 holds `duration_s` as categorical") && err.contains("as number"),
            "{err}"
        );
        // Columns the model does not read are its own business.
        bad("lyrics_language", ColumnKind::Categorical).unwrap();
    }

    #[test]
    fn a_large_catalog_finds_every_item() {
        let columns = [("n".to_string(), ColumnKind::Number)];
        let mut b = Builder::new("c", "1", "id", &columns, 100_000).unwrap();
        for i in 0..100_000 {
            b.push(&format!("item-{i}"), &[Cell::Number(i as f64)]).unwrap();
        }
        let c = b.finish();
        for i in (0..100_000).step_by(997) {
            assert_eq!(c.get(&format!("item-{i}")).unwrap().get("n"), Value::Float(i as f64));
        }
        assert!(c.get("item-100000").is_none());
        assert!(c.heap_bytes() < 100_000 * 40, "{} bytes", c.heap_bytes());
    }
}
