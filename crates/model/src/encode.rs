//! Request → tensors: turns one context and a list of candidates into the model's input tensors,
//! following the manifest's feature spec. The context is encoded once; candidates as one batch.

use std::borrow::Cow;
use std::fmt;

use std::sync::Arc;

use super::manifest::{ContextRows, DType, Feature, FeatureKind, Manifest, Side};
use super::vocabulary::{Vocab, Vocabulary};

/// A feature value as the encoder sees it, whatever it was read from (JSON, TOML, Parquet).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Absent or null: the feature's default is used and the miss is counted.
    Missing,
    Int(i64),
    /// An integer past `i64::MAX` (a 64-bit unsigned id).
    Uint(u64),
    Float(f64),
    Str(&'a str),
    Bool(bool),
    List(Cow<'a, [f64]>),
    /// Something no feature kind accepts (an object, a list holding non-numbers); the name of
    /// what it was, for the error message.
    Other(&'static str),
}

impl Value<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Missing => "null",
            Value::Int(_) | Value::Uint(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::List(_) => "a list",
            Value::Other(what) => what,
        }
    }
}

/// Anything that can be asked for a feature by name: a request's context, a candidate, a row.
pub trait FeatureSource {
    fn get(&self, name: &str) -> Value<'_>;
}

impl<T: FeatureSource + ?Sized> FeatureSource for &T {
    fn get(&self, name: &str) -> Value<'_> {
        (**self).get(name)
    }
}

/// A dense row-major 2-D tensor, `[rows, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: [usize; 2],
    pub data: TensorData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    I64(Vec<i64>),
    F32(Vec<f32>),
}

/// The model's inputs for one request, in the encoder's input order.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Every input; with an item tower, the context inputs only (the item inputs are in
    /// [`Towered::items`]).
    pub tensors: Vec<Tensor>,
    /// Number of candidates encoded.
    pub rows: usize,
    /// Per manifest feature: how many values took the default because they were missing.
    pub missing: Vec<u32>,
    /// For a model with an item tower: each candidate's item-tower output, or its item inputs
    /// for the tower to compute it.
    pub tower: Option<Towered>,
}

/// The item side of a request for a model with an item tower: the tower's output for every
/// candidate, `[rows, width]`, known already for catalog items; the candidates in `rows` have
/// their item inputs in `items` instead (one row each, in that order), and their part of
/// `vectors` is filled in when the tower runs.
#[derive(Debug, Clone)]
pub struct Towered {
    pub width: usize,
    pub vectors: Vec<f32>,
    /// Ascending.
    pub rows: Vec<usize>,
    /// The item inputs, in the encoder's order.
    pub items: Vec<Tensor>,
}

impl Encoded {
    /// Keeps the first `rows` candidates (context rows shared by all candidates stay).
    pub fn truncate(&mut self, rows: usize) {
        if rows >= self.rows {
            return;
        }
        for t in &mut self.tensors {
            if t.shape[0] == self.rows {
                truncate_rows(t, rows);
            }
        }
        if let Some(tower) = &mut self.tower {
            tower.vectors.truncate(rows * tower.width);
            let kept = tower.rows.partition_point(|&r| r < rows);
            tower.rows.truncate(kept);
            for t in &mut tower.items {
                truncate_rows(t, kept);
            }
        }
        self.rows = rows;
    }
}

fn truncate_rows(t: &mut Tensor, rows: usize) {
    let len = rows * t.shape[1];
    match &mut t.data {
        TensorData::I64(d) => d.truncate(len),
        TensorData::F32(d) => d.truncate(len),
    }
    t.shape[0] = rows;
}

/// One ONNX input as the encoder lays it out.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLayout {
    pub name: String,
    pub side: Side,
    pub dtype: DType,
    pub width: usize,
}

/// Where a feature's values go.
#[derive(Debug, Clone)]
struct Slot {
    /// Index into the manifest's feature list (and into `Encoded::missing`).
    feature: usize,
    name: String,
    input: usize,
    offset: usize,
    rule: Rule,
}

/// A feature kind with its defaults already encoded, so a miss costs a copy.
#[derive(Debug, Clone)]
enum Rule {
    Categorical { rows: Rows, default: i64 },
    Number { mean: f64, std: f64, default: f32 },
    Vector { dim: usize, default: Vec<f32> },
}

/// How a categorical id finds its table row.
#[derive(Debug, Clone)]
enum Rows {
    Hashed {
        buckets: u64,
    },
    Vocabulary(Arc<Vocabulary>),
    /// The vocabulary is still to be built from the rows being encoded: every id takes row 0
    /// until it is (the values are checked all the same).
    Pending,
}

impl Rows {
    fn of(id: &str, rows: &Rows) -> i64 {
        match rows {
            Rows::Hashed { buckets } => bucket(id.as_bytes(), *buckets),
            Rows::Vocabulary(v) => v.row(id),
            Rows::Pending => 0,
        }
    }
}

/// Where in a request a bad value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Context,
    Candidate(usize),
}

impl Location {
    /// The candidate's (or row's) index; 0 for the context.
    pub fn row(self) -> usize {
        match self {
            Location::Context => 0,
            Location::Candidate(i) => i,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Context => write!(f, "context"),
            Location::Candidate(i) => write!(f, "candidate {i}"),
        }
    }
}

/// A feature value the model cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{location}, feature `{feature}`: {problem}")]
pub struct EncodeError {
    pub location: Location,
    pub feature: String,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    inputs: Vec<InputLayout>,
    context: Vec<Slot>,
    item: Vec<Slot>,
    context_rows: ContextRows,
    features: usize,
}

impl Encoder {
    /// Lays out the manifest's inputs: each input is the concatenation, in manifest order, of
    /// the features that name it. The manifest must have been validated.
    pub fn new(manifest: &Manifest) -> Encoder {
        Encoder::for_features(&manifest.features, manifest.model.context_rows)
    }

    /// An encoder for features that feed the named inputs, without a manifest (training).
    pub fn for_features(features: &[Feature], context_rows: ContextRows) -> Encoder {
        let mut inputs: Vec<InputLayout> = Vec::new();
        let mut context = Vec::new();
        let mut item = Vec::new();
        for (feature, f) in features.iter().enumerate() {
            let input = match inputs.iter().position(|i| i.name == f.input) {
                Some(i) => i,
                None => {
                    inputs.push(InputLayout {
                        name: f.input.clone(),
                        side: f.side,
                        dtype: f.kind.dtype(),
                        width: 0,
                    });
                    inputs.len() - 1
                }
            };
            let offset = inputs[input].width;
            inputs[input].width += f.kind.width();
            let rule = match &f.kind {
                FeatureKind::Categorical { buckets, default, vocabulary } => {
                    let rows = match vocabulary {
                        None => Rows::Hashed { buckets: *buckets },
                        Some(Vocab::Ids(v)) => Rows::Vocabulary(v.clone()),
                        Some(Vocab::Build(_)) => Rows::Pending,
                        Some(Vocab::File(file)) => panic!(
                            "feature `{}`: vocabulary `{file}` is encoded before it is read. This is a bug.",
                            f.name
                        ),
                    };
                    let default = default.as_deref().map_or(0, |d| Rows::of(d, &rows));
                    Rule::Categorical { rows, default }
                }
                FeatureKind::Number { mean, std, default } => {
                    Rule::Number { mean: *mean, std: *std, default: ((default - mean) / std) as f32 }
                }
                FeatureKind::Vector { dim, default } => Rule::Vector {
                    dim: *dim,
                    default: match default {
                        Some(d) => d.iter().map(|&x| x as f32).collect(),
                        None => vec![0.0; *dim],
                    },
                },
            };
            let slot = Slot { feature, name: f.name.clone(), input, offset, rule };
            match f.side {
                Side::Context => context.push(slot),
                Side::Item => item.push(slot),
            }
        }
        Encoder { inputs, context, item, context_rows, features: features.len() }
    }

    /// Where `feature`'s values go: its input (in [`Encoder::inputs`] order) and its first
    /// column there.
    pub fn position(&self, feature: &str) -> Option<(usize, usize)> {
        self.context.iter().chain(&self.item).find(|s| s.name == feature).map(|s| (s.input, s.offset))
    }

    /// The names of the features it encodes, context side first.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.context.iter().chain(&self.item).map(|s| s.name.as_str())
    }

    pub fn inputs(&self) -> &[InputLayout] {
        &self.inputs
    }

    pub fn context_rows(&self) -> ContextRows {
        self.context_rows
    }

    /// Whether `source` gives any item feature of its own (such a candidate's item inputs
    /// differ from its catalog item's).
    pub fn gives_item_features(&self, source: &impl FeatureSource) -> bool {
        self.item.iter().any(|slot| source.get(&slot.name) != Value::Missing)
    }

    /// The item features `source` lacks, as bits by item feature (in manifest order among the
    /// item features), `words` 64-bit words of them.
    pub fn missing_item_features(&self, source: &impl FeatureSource, words: &mut [u64]) {
        words.fill(0);
        for (k, slot) in self.item.iter().enumerate() {
            if source.get(&slot.name) == Value::Missing {
                words[k / 64] |= 1 << (k % 64);
            }
        }
    }

    /// Adds to `missing` (per manifest feature) the item features marked in `words`, as
    /// [`Encoder::missing_item_features`] marks them.
    pub fn count_missing_items(&self, words: &[u64], missing: &mut [u32]) {
        for (w, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let k = w * 64 + bits.trailing_zeros() as usize;
                missing[self.item[k].feature] += 1;
                bits &= bits - 1;
            }
        }
    }

    /// Item features, hence bits per item in [`Encoder::missing_item_features`].
    pub fn item_features(&self) -> usize {
        self.item.len()
    }

    /// Overwrites, in rows laid out by [`Encoder::encode_rows`], each feature value with what a
    /// missing value encodes to, independently per row and feature with probability
    /// `p(feature name)` (`draw` returns uniform numbers in [0, 1)). Training with it teaches a
    /// model what a missing feature means, before it meets a product that lacks the feature.
    /// Every feature of every row draws once whatever its probability, so one feature's
    /// probability does not change which rows another's masks.
    pub fn mask_missing(
        &self,
        encoded: &mut Encoded,
        p: impl Fn(&str) -> f64,
        mut draw: impl FnMut() -> f64,
    ) {
        let slots: Vec<(&Slot, f64)> =
            self.context.iter().chain(&self.item).map(|s| (s, p(&s.name))).collect();
        if slots.iter().all(|&(_, p)| p <= 0.0) {
            return;
        }
        for row in 0..encoded.rows {
            for &(slot, p) in &slots {
                if draw() >= p {
                    continue;
                }
                let t = &mut encoded.tensors[slot.input];
                let at = row * t.shape[1] + slot.offset;
                match (&slot.rule, &mut t.data) {
                    (Rule::Categorical { default, .. }, TensorData::I64(d)) => d[at] = *default,
                    (Rule::Number { default, .. }, TensorData::F32(d)) => d[at] = *default,
                    (Rule::Vector { default, dim }, TensorData::F32(d)) => {
                        d[at..at + dim].copy_from_slice(default)
                    }
                    _ => unreachable!(
                        "the encoder lays out each input with its slots' element type. This is a bug."
                    ),
                }
            }
        }
    }

    /// Encodes a context and its candidates. Context inputs get one row (or one per candidate
    /// when the graph does not broadcast); item inputs one row per candidate.
    pub fn encode<C, I>(&self, context: &C, candidates: &[I]) -> Result<Encoded, EncodeError>
    where
        C: FeatureSource + ?Sized,
        I: FeatureSource,
    {
        let rows = candidates.len();
        let mut missing = vec![0u32; self.features];
        let context_batch = match self.context_rows {
            ContextRows::Once => 1,
            ContextRows::PerCandidate => rows,
        };
        let mut tensors: Vec<Tensor> = self
            .inputs
            .iter()
            .map(|input| {
                let batch = match input.side {
                    Side::Context => 1,
                    Side::Item => rows,
                };
                let len = batch * input.width;
                let data = match input.dtype {
                    DType::I64 => TensorData::I64(vec![0; len]),
                    DType::F32 => TensorData::F32(vec![0.0; len]),
                };
                Tensor { shape: [batch, input.width], data }
            })
            .collect();

        for slot in &self.context {
            let value = context.get(&slot.name);
            let t = &mut tensors[slot.input];
            write_value(slot, value, t, 0, &mut missing, Location::Context)?;
        }
        for (row, candidate) in candidates.iter().enumerate() {
            for slot in &self.item {
                let value = candidate.get(&slot.name);
                let t = &mut tensors[slot.input];
                write_value(slot, value, t, row, &mut missing, Location::Candidate(row))?;
            }
        }
        if context_batch != 1 {
            for (t, input) in tensors.iter_mut().zip(&self.inputs) {
                if input.side == Side::Context {
                    repeat_rows(t, context_batch);
                }
            }
        }
        Ok(Encoded { tensors, rows, missing, tower: None })
    }

    /// Encodes rows that each carry their own context (training or labelling data, one row per
    /// shown candidate): every input gets one row per row. The model must have been loaded with
    /// `context_rows = per_candidate` (see [`crate::Model::load_per_row`]).
    pub fn encode_rows<R: FeatureSource>(&self, rows: &[R]) -> Result<Encoded, EncodeError> {
        let n = rows.len();
        let mut missing = vec![0u32; self.features];
        let mut tensors: Vec<Tensor> = self
            .inputs
            .iter()
            .map(|input| {
                let len = n * input.width;
                let data = match input.dtype {
                    DType::I64 => TensorData::I64(vec![0; len]),
                    DType::F32 => TensorData::F32(vec![0.0; len]),
                };
                Tensor { shape: [n, input.width], data }
            })
            .collect();
        for (row, source) in rows.iter().enumerate() {
            for slot in self.context.iter().chain(&self.item) {
                let value = source.get(&slot.name);
                let t = &mut tensors[slot.input];
                write_value(slot, value, t, row, &mut missing, Location::Candidate(row))?;
            }
        }
        Ok(Encoded { tensors, rows: n, missing, tower: None })
    }
}

fn write_value(
    slot: &Slot,
    value: Value<'_>,
    tensor: &mut Tensor,
    row: usize,
    missing: &mut [u32],
    location: Location,
) -> Result<(), EncodeError> {
    let at = row * tensor.shape[1] + slot.offset;
    let error = |problem: String| EncodeError { location, feature: slot.name.clone(), problem };
    if value == Value::Missing {
        missing[slot.feature] += 1;
    }
    match (&slot.rule, &mut tensor.data) {
        (Rule::Categorical { rows, default }, TensorData::I64(data)) => {
            data[at] = match id_text(&value, &mut [0; 20]).map_err(error)? {
                None => *default,
                Some(id) => Rows::of(id, rows),
            };
        }
        (Rule::Number { mean, std, default }, TensorData::F32(data)) => {
            data[at] = match value {
                Value::Missing => *default,
                Value::Int(i) => normalise(i as f64, *mean, *std).ok_or_else(|| error(non_finite()))?,
                Value::Uint(u) => normalise(u as f64, *mean, *std).ok_or_else(|| error(non_finite()))?,
                Value::Float(x) => normalise(x, *mean, *std).ok_or_else(|| error(non_finite()))?,
                other => return Err(error(format!("expected a number, got {}", other.type_name()))),
            };
        }
        (Rule::Vector { dim, default }, TensorData::F32(data)) => {
            let out = &mut data[at..at + dim];
            match value {
                Value::Missing => out.copy_from_slice(default),
                Value::List(items) if items.len() == *dim => {
                    for (o, &x) in out.iter_mut().zip(items.iter()) {
                        let x = x as f32;
                        if !x.is_finite() {
                            return Err(error(non_finite()));
                        }
                        *o = x;
                    }
                }
                Value::List(items) => {
                    return Err(error(format!("expected a list of {dim} numbers, got {}", items.len())));
                }
                other => {
                    return Err(error(format!(
                        "expected a list of {dim} numbers, got {}",
                        other.type_name()
                    )));
                }
            }
        }
        _ => unreachable!("the encoder lays out each input with its slots' element type. This is a bug."),
    }
    Ok(())
}

/// The text a categorical value is known by, hashed or looked up: a string as it is, an integer
/// as its decimal text (so `21` and `"21"` are one id); `None` for a missing value. `buf` holds
/// an integer's text.
pub fn id_text<'v>(value: &'v Value<'_>, buf: &'v mut [u8; 20]) -> Result<Option<&'v str>, String> {
    let digits = |b: &'v [u8]| std::str::from_utf8(b).expect("decimal digits are UTF-8");
    match *value {
        Value::Missing => Ok(None),
        Value::Str(s) => Ok(Some(s)),
        Value::Int(i) => Ok(Some(digits(itoa(i, buf)))),
        Value::Uint(u) => Ok(Some(digits(utoa(u, buf)))),
        // JSON has one number type: `21.0` is the id 21, `21.5` is no id at all.
        Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(Some(digits(itoa(x as i64, buf)))),
        Value::Float(x) if x.fract() == 0.0 => Err(format!(
            "expected a string or integer id, got {x:e}, too large to be an exact integer \
             (send ids past 2^53 as strings)"
        )),
        Value::Float(_) => Err("expected a string or integer id, got a fractional number".into()),
        ref other => Err(format!("expected a string or integer id, got {}", other.type_name())),
    }
}

fn non_finite() -> String {
    "value is not finite after normalisation".to_string()
}

fn normalise(x: f64, mean: f64, std: f64) -> Option<f32> {
    let v = ((x - mean) / std) as f32;
    v.is_finite().then_some(v)
}

/// Repeats row 0 of a one-row tensor `rows` times.
fn repeat_rows(t: &mut Tensor, rows: usize) {
    let width = t.shape[1];
    match &mut t.data {
        TensorData::I64(d) => *d = d[..width].repeat(rows),
        TensorData::F32(d) => *d = d[..width].repeat(rows),
    }
    t.shape[0] = rows;
}

/// The bucket of a categorical id: `1 + fnv1a64(utf8 bytes) % (buckets - 1)`. Bucket 0 is kept
/// for missing values. Integer ids hash as their decimal text, so `21` and `"21"` agree. The
/// function is part of the model-package contract: a student trained elsewhere must hash the same.
pub fn bucket(id: &[u8], buckets: u64) -> i64 {
    1 + (fnv1a64(id) % (buckets - 1)) as i64
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Decimal text of `v` without allocating.
fn itoa(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    if v >= 0 {
        return utoa(v as u64, buf);
    }
    let start = buf.len() - utoa(v.unsigned_abs(), buf).len();
    // i64::MIN has 19 digits, so the sign always fits.
    buf[start - 1] = b'-';
    &buf[start - 1..]
}

/// Decimal text of `n` without allocating (u64::MAX has 20 digits).
fn utoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

impl FeatureSource for std::collections::BTreeMap<String, toml::Value> {
    fn get(&self, name: &str) -> Value<'_> {
        match std::collections::BTreeMap::get(self, name) {
            None => Value::Missing,
            Some(toml::Value::String(s)) => Value::Str(s),
            Some(toml::Value::Integer(i)) => Value::Int(*i),
            Some(toml::Value::Float(x)) => Value::Float(*x),
            Some(toml::Value::Boolean(b)) => Value::Bool(*b),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::Float(x) => Some(*x),
                    toml::Value::Integer(i) => Some(*i as f64),
                    _ => None,
                })
                .collect::<Option<Vec<f64>>>()
                .map_or(Value::Other("a list holding non-numbers"), |v| Value::List(Cow::Owned(v))),
            Some(_) => Value::Other("a table or date"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(context_rows: ContextRows) -> Manifest {
        let text = r#"
[model]
name = "m"
version = "1"

[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 10
input = "ctx_ids"

[[features]]
name = "hour"
side = "context"
kind = "categorical"
buckets = 25
default = 12
input = "ctx_ids"

[[features]]
name = "age"
side = "context"
kind = "number"
mean = 30.0
std = 10.0
default = 30.0
input = "ctx_dense"

[[features]]
name = "artist_id"
side = "item"
kind = "categorical"
buckets = 7
input = "item_ids"

[[features]]
name = "emb"
side = "item"
kind = "vector"
dim = 2
default = [0.5, -0.5]
input = "item_dense"

[[features]]
name = "duration_s"
side = "item"
kind = "number"
mean = 200.0
std = 50.0
input = "item_dense"

[[heads]]
name = "play"
kind = "binary"
output = "play"

[objective]
play = 1.0
"#;
        let mut m: Manifest = toml::from_str(text).unwrap();
        m.model.context_rows = context_rows;
        m.validate().unwrap();
        m
    }

    type Row = std::collections::BTreeMap<String, toml::Value>;

    fn row(text: &str) -> Row {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn integer_ids_hash_as_their_decimal_text() {
        for v in [0i64, 7, -3, 21, i64::MAX, i64::MIN] {
            assert_eq!(itoa(v, &mut [0; 20]), v.to_string().as_bytes());
        }
        let m = manifest(ContextRows::Once);
        let enc = Encoder::new(&m);
        let a = enc.encode(&row("user_id = 21"), &[] as &[Row]).unwrap();
        let b = enc.encode(&row("user_id = \"21\""), &[] as &[Row]).unwrap();
        let c = enc.encode(&row("user_id = 21.0"), &[] as &[Row]).unwrap();
        assert_eq!(a.tensors[0], b.tensors[0]);
        assert_eq!(a.tensors[0], c.tensors[0]);
    }

    #[test]
    fn a_vocabulary_numbers_its_ids_and_sends_every_other_value_to_row_zero() {
        let mut m = manifest(ContextRows::Once);
        let genres =
            Vocabulary::from_ids("vocabularies/artist_id.txt", ["a", "b", "21", "18446744073709551615"])
                .unwrap();
        m.features[3].kind = FeatureKind::Categorical {
            buckets: genres.buckets(),
            default: Some("b".into()),
            vocabulary: Some(Vocab::Ids(Arc::new(genres))),
        };
        m.validate().unwrap();
        let enc = Encoder::new(&m);
        let items = [
            row("artist_id = \"b\""),
            row("artist_id = 21"),
            row("artist_id = \"18446744073709551615\""),
            row("artist_id = \"new\""),
            row(""),
        ];
        let e = enc.encode(&row(""), &items).unwrap();
        assert_eq!(e.tensors[2].data, TensorData::I64(vec![2, 3, 4, 0, 2]));
        let big = [Value::Uint(u64::MAX)];
        assert_eq!(id_text(&big[0], &mut [0; 20]).unwrap(), Some("18446744073709551615"));
        // A masked value is a missing one: the default's row.
        let mut masked = e.clone();
        enc.mask_missing(&mut masked, |f| if f == "artist_id" { 1.0 } else { 0.0 }, || 0.5);
        assert_eq!(masked.tensors[2].data, TensorData::I64(vec![2; 5]));
        let e = enc.encode(&row(""), &[row("artist_id = 2.5")]).unwrap_err();
        assert!(e.to_string().contains("fractional"), "{e}");
    }

    #[test]
    fn lays_out_inputs_and_encodes_values() {
        let m = manifest(ContextRows::Once);
        let enc = Encoder::new(&m);
        let names: Vec<_> = enc.inputs().iter().map(|i| (i.name.as_str(), i.width)).collect();
        assert_eq!(names, [("ctx_ids", 2), ("ctx_dense", 1), ("item_ids", 1), ("item_dense", 3)]);

        let ctx = row("user_id = \"u1\"\nage = 50");
        let items = [row("artist_id = \"a\"\nemb = [1.0, 2.0]\nduration_s = 250"), row("")];
        let e = enc.encode(&ctx, &items).unwrap();
        assert_eq!(e.rows, 2);
        let ids = TensorData::I64(vec![bucket(b"u1", 10), bucket(b"12", 25)]);
        assert_eq!(e.tensors[0], Tensor { shape: [1, 2], data: ids });
        assert_eq!(e.tensors[1], Tensor { shape: [1, 1], data: TensorData::F32(vec![2.0]) });
        assert_eq!(e.tensors[2], Tensor { shape: [2, 1], data: TensorData::I64(vec![bucket(b"a", 7), 0]) });
        // Second candidate: vector default, and number default 0 normalised: (0-200)/50.
        assert_eq!(
            e.tensors[3],
            Tensor { shape: [2, 3], data: TensorData::F32(vec![1.0, 2.0, 1.0, 0.5, -0.5, -4.0]) }
        );
        // Missing: hour (ctx), artist_id, emb, duration_s on candidate 1.
        let feature_names: Vec<&str> = m.features.iter().map(|f: &Feature| f.name.as_str()).collect();
        let missed: Vec<(&str, u32)> =
            feature_names.iter().zip(&e.missing).filter(|(_, n)| **n > 0).map(|(f, n)| (*f, *n)).collect();
        assert_eq!(missed, [("hour", 1), ("artist_id", 1), ("emb", 1), ("duration_s", 1)]);
        for b in [bucket(b"u1", 10), bucket(b"x", 2)] {
            assert!(b >= 1);
        }
        assert_eq!(bucket(b"anything", 2), 1);
    }

    #[test]
    fn masking_everything_gives_the_encoding_of_missing_values() {
        let enc = Encoder::new(&manifest(ContextRows::PerCandidate));
        let full = row(
            "user_id = \"u1\"\nhour = 3\nage = 50\nartist_id = \"a\"\nemb = [1.0, 2.0]\nduration_s = 250",
        );
        let mut masked = enc.encode_rows(&[full.clone(), full.clone()]).unwrap();
        enc.mask_missing(&mut masked, |_| 1.0, || 0.5);
        let empty = enc.encode_rows(&[row(""), row("")]).unwrap();
        assert_eq!(masked.tensors, empty.tensors);
        let mut untouched = enc.encode_rows(std::slice::from_ref(&full)).unwrap();
        enc.mask_missing(&mut untouched, |_| 0.3, || 0.9);
        assert_eq!(untouched.tensors, enc.encode_rows(&[full]).unwrap().tensors);
    }

    /// One feature masked always, the rest never: only its values become the missing ones.
    #[test]
    fn masking_by_feature_masks_only_that_feature() {
        let enc = Encoder::new(&manifest(ContextRows::PerCandidate));
        let text =
            "user_id = \"u1\"\nhour = 3\nage = 50\nartist_id = \"a\"\nemb = [1.0, 2.0]\nduration_s = 250";
        let mut masked = enc.encode_rows(&[row(text)]).unwrap();
        let draws = std::cell::Cell::new(0);
        enc.mask_missing(
            &mut masked,
            |name| if name == "user_id" { 1.0 } else { 0.0 },
            || {
                draws.set(draws.get() + 1);
                0.5
            },
        );
        assert_eq!(draws.get(), 6, "every feature draws, masked or not");
        let without_user = text.replacen("user_id = \"u1\"\n", "", 1);
        assert_eq!(masked.tensors, enc.encode_rows(&[row(&without_user)]).unwrap().tensors);
    }

    #[test]
    fn per_candidate_context_repeats_the_row() {
        let enc = Encoder::new(&manifest(ContextRows::PerCandidate));
        let e = enc.encode(&row("age = 40"), &[row(""), row(""), row("")]).unwrap();
        assert_eq!(e.tensors[1], Tensor { shape: [3, 1], data: TensorData::F32(vec![1.0; 3]) });
        assert_eq!(e.tensors[0].shape, [3, 2]);
    }

    #[test]
    fn bad_values_name_the_candidate_and_feature() {
        let enc = Encoder::new(&manifest(ContextRows::Once));
        let ok = row("");
        let cases = [
            ("duration_s = \"long\"", "candidate 1, feature `duration_s`: expected a number, got a string"),
            ("emb = [1.0]", "candidate 1, feature `emb`: expected a list of 2 numbers, got 1"),
            (
                "artist_id = 1.5",
                "candidate 1, feature `artist_id`: expected a string or integer id, got a fractional number",
            ),
            (
                "artist_id = true",
                "candidate 1, feature `artist_id`: expected a string or integer id, got a boolean",
            ),
            (
                "duration_s = 1e308",
                "candidate 1, feature `duration_s`: value is not finite after normalisation",
            ),
            (
                "emb = [1.0, \"x\"]",
                "candidate 1, feature `emb`: expected a list of 2 numbers, got a list holding non-numbers",
            ),
        ];
        for (bad, message) in cases {
            let err = enc.encode(&ok, &[ok.clone(), row(bad)]).unwrap_err();
            assert_eq!(err.to_string(), message);
            assert_eq!(err.location, Location::Candidate(1));
        }
        let err = enc.encode(&row("age = \"old\""), &[ok]).unwrap_err();
        assert_eq!(err.location, Location::Context);
        assert_eq!(err.feature, "age");
    }
}
