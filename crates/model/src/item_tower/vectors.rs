//! The item tower's output for every item of a catalog, computed once per (model version,
//! catalog version) and kept per catalog layer, so that a delta computes only its own items
//! and shares the rest with the version below it.

use std::sync::Arc;

use crate::Model;
use crate::catalog::{Catalog, Item, Overlay};
use crate::encode::{EncodeError, FeatureSource, Value};
use crate::engine::EngineError;

/// Items encoded and run through the tower at a time: large enough for the engine's largest
/// plan, small enough that the inputs of one batch stay in cache.
const BATCH: usize = 2048;

/// Item-tower outputs of one catalog's items for one model.
pub struct ItemVectors {
    /// Held so that the layers compared by identity in [`ItemVectors::is_for`] stay alive.
    catalog: Arc<Catalog>,
    width: usize,
    /// Bits per item of the item features it lacks, in 64-bit words ([`crate::encode::Encoder::missing_item_features`]).
    words: usize,
    /// One per catalog layer, in the catalog's order.
    layers: Vec<Arc<LayerVectors>>,
}

/// The vectors of one catalog layer's items, by row.
struct LayerVectors {
    values: Vec<f32>,
    /// `words` per row, or empty when no item of the layer lacks a feature.
    missing: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ItemVectorsError {
    #[error("catalog {catalog}, item `{item}`: {error}")]
    Encode { catalog: String, item: String, error: EncodeError },
    #[error("catalog {catalog}: the item tower failed: {error}")]
    Engine { catalog: String, error: EngineError },
}

impl std::fmt::Debug for ItemVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemVectors")
            .field("catalog", &format_args!("{}/{}", self.catalog.name, self.catalog.version))
            .field("width", &self.width)
            .field("items", &self.catalog.len())
            .finish()
    }
}

/// A candidate with nothing of its own: what a catalog item's tower output is computed from
/// is exactly what a request that sends its id alone gets.
struct Nothing;

impl FeatureSource for Nothing {
    fn get(&self, _: &str) -> Value<'_> {
        Value::Missing
    }
}

impl ItemVectors {
    /// Computes `model`'s tower output for every item of `catalog`, reusing the layers that
    /// `reuse` (vectors of the same model for other versions of the catalog) already has.
    /// `None` when the model has no item tower.
    pub fn compute(
        model: &Model,
        catalog: &Arc<Catalog>,
        reuse: &[&ItemVectors],
    ) -> Result<Option<ItemVectors>, ItemVectorsError> {
        let Some(tower) = model.tower() else { return Ok(None) };
        let encoder = model.encoder();
        let words = encoder.item_features().div_ceil(64);
        let mut layers = Vec::with_capacity(catalog.layers());
        for depth in 0..catalog.layers() {
            let shared = reuse.iter().find_map(|v| {
                (0..v.catalog.layers())
                    .find(|&d| v.catalog.same_layer(d, catalog, depth))
                    .map(|d| v.layers[d].clone())
            });
            let layer = match shared {
                Some(layer) => layer,
                None => Arc::new(compute_layer(model, catalog, depth, words)?),
            };
            layers.push(layer);
        }
        Ok(Some(ItemVectors { catalog: catalog.clone(), width: tower.width, words, layers }))
    }

    /// Whether these are the vectors of `catalog`'s items (the same layers in memory).
    pub fn is_for(&self, catalog: &Catalog) -> bool {
        self.catalog.layers() == catalog.layers()
            && (0..catalog.layers()).all(|d| self.catalog.same_layer(d, catalog, d))
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// The tower's output for `item` (an item of this catalog), and the item features it
    /// lacks (empty when none of its layer's items lacks any).
    pub fn of(&self, item: &Item<'_>) -> (&[f32], &[u64]) {
        let (depth, row) = item.position();
        let layer = &self.layers[depth];
        let values = &layer.values[row * self.width..(row + 1) * self.width];
        let missing = if layer.missing.is_empty() {
            &[][..]
        } else {
            &layer.missing[row * self.words..(row + 1) * self.words]
        };
        (values, missing)
    }

    /// Asks the CPU to start fetching `item`'s output (and its missing bits), so that the
    /// cache misses of a request's candidates overlap.
    pub fn prefetch(&self, item: &Item<'_>) {
        let (values, missing) = self.of(item);
        crate::catalog::prefetch(&values[0]);
        crate::catalog::prefetch(&values[values.len() - 1]);
        if let Some(m) = missing.first() {
            crate::catalog::prefetch(m);
        }
    }

    /// Bytes the vectors hold (a layer shared with another version's vectors counts here too).
    pub fn heap_bytes(&self) -> usize {
        self.layers.iter().map(|l| 4 * l.values.capacity() + 8 * l.missing.capacity()).sum()
    }
}

fn compute_layer(
    model: &Model,
    catalog: &Catalog,
    depth: usize,
    words: usize,
) -> Result<LayerVectors, ItemVectorsError> {
    let tower = model.tower().expect("checked by the caller");
    let encoder = model.encoder();
    let n = catalog.layer_items(depth).len();
    let mut values = Vec::with_capacity(n * tower.width);
    let mut missing = vec![0u64; n * words];
    let mut any_missing = false;
    let items: Vec<Item<'_>> = catalog.layer_items(depth).collect();
    for (start, batch) in items.chunks(BATCH).enumerate().map(|(k, b)| (k * BATCH, b)) {
        let sources: Vec<Overlay<'_, Nothing>> = batch
            .iter()
            .map(|item| Overlay {
                request: &Nothing,
                item: Some(*item),
                id: Some((catalog.id_column.as_str(), std::borrow::Cow::Borrowed(item.id()))),
            })
            .collect();
        for (k, source) in sources.iter().enumerate() {
            let row = start + k;
            let bits = &mut missing[row * words..(row + 1) * words];
            encoder.missing_item_features(source, bits);
            any_missing |= bits.iter().any(|&w| w != 0);
        }
        let mut encoded = encoder.encode(&Nothing, &sources).map_err(|error| ItemVectorsError::Encode {
            catalog: format!("{}/{}", catalog.name, catalog.version),
            item: batch[error.location.row()].id().to_string(),
            error,
        })?;
        let items = super::take_item_inputs(encoder, &mut encoded);
        let out = tower.run(items, batch.len()).map_err(|error| ItemVectorsError::Engine {
            catalog: format!("{}/{}", catalog.name, catalog.version),
            error,
        })?;
        values.extend_from_slice(&out);
    }
    if !any_missing {
        missing = Vec::new();
    }
    Ok(LayerVectors { values, missing })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ItemSource;
    use crate::catalog::{Builder, Cell, ColumnKind};
    use crate::engine::EngineKind;
    use crate::item_tower::tests::{assert_close, both};
    use crate::scaffold;

    /// `n` tracks from `first` on, every fifth without a genre and every seventh without a
    /// duration; `shift` changes their popularity (a delta's changed items).
    fn tracks(version: &str, first: usize, n: usize, shift: f64) -> Catalog {
        let columns = [
            ("artist_id".to_string(), ColumnKind::Categorical),
            ("genre".to_string(), ColumnKind::Categorical),
            ("duration_s".to_string(), ColumnKind::Number),
            ("popularity".to_string(), ColumnKind::Number),
            ("track_embedding".to_string(), ColumnKind::Vector { dim: 8 }),
        ];
        let mut b = Builder::new("music", version, "track_id", &columns, n).unwrap();
        for i in first..first + n {
            let embedding: Vec<f64> = (0..8).map(|k| ((i * 7 + k) % 11) as f64 / 10.0 - 0.5).collect();
            let genre = if i % 5 == 0 { Cell::Missing } else { Cell::Text(format!("g{}", i % 4).into()) };
            let duration = if i % 7 == 0 { Cell::Missing } else { Cell::Number(120.0 + i as f64) };
            let cells = [
                Cell::Text(format!("a{}", i % 13).into()),
                genre,
                duration,
                Cell::Number((i % 10) as f64 / 10.0 + shift),
                Cell::Vector(embedding.into()),
            ];
            b.push(&format!("t{i}"), &cells).unwrap();
        }
        b.finish()
    }

    /// Ids found and not, one with item features of its own, one with a feature the model
    /// does not read.
    const REQUEST: &[u8] = br#"{"context": {"user_id": "u1", "hour": 20}, "candidates": [
        "t3", "t10", "t14", {"id": "t21", "features": {"popularity": 0.9}}, "t9999", 12,
        {"id": "t35", "features": {"lyrics": "x"}}, "t2", "t70"]}"#;

    #[test]
    fn a_catalog_items_computed_tower_output_scores_as_the_whole_graph_and_counts_the_same_misses() {
        let (manifest, graph) = scaffold::seeded_package("m", "1", 5);
        let (split, whole) = both(&manifest, &graph, EngineKind::Tract);
        let catalog = Arc::new(tracks("1", 0, 5000, 0.0));
        let vectors = ItemVectors::compute(&split, &catalog, &[]).unwrap().unwrap();
        assert!(vectors.is_for(&catalog) && vectors.width() == 32);
        assert_eq!(vectors.heap_bytes(), 5000 * 32 * 4 + 5000 * 8, "32 floats and a word of misses each");
        assert!(
            ItemVectors::compute(&whole, &catalog, &[]).unwrap().is_none(),
            "no tower, nothing to compute"
        );

        let req = crate::request::decode(REQUEST).unwrap();
        let with = ItemSource { catalog: &catalog, vectors: Some(&vectors) };
        let fast = split.score_request(&req, Some(with)).unwrap();
        let slow = split.score_request(&req, Some(ItemSource::catalog(&catalog))).unwrap();
        let reference = whole.score_request(&req, Some(ItemSource::catalog(&catalog))).unwrap();
        assert_close(&fast.values, &reference.values);
        assert_close(&slow.values, &reference.values);

        let found = crate::catalog::look_up(Some(&catalog), &req.candidates, None);
        let encoded = split.encode_found(&req.context, &found, Some(&vectors)).unwrap();
        let towered = &encoded.tower.as_ref().unwrap().rows;
        assert_eq!(towered, &[3, 4, 5], "the candidate with item features and the misses run the tower");
        let reference = whole.encode(&req.context, &found.sources).unwrap();
        assert_eq!(encoded.missing, reference.missing, "misses counted as the whole encoding counts them");
        assert!(encoded.missing.iter().any(|&m| m > 0));
    }

    #[test]
    fn vectors_of_another_catalog_are_not_used_and_a_delta_computes_only_its_items() {
        let (manifest, graph) = scaffold::seeded_package("m", "1", 5);
        let (split, whole) = both(&manifest, &graph, EngineKind::Tract);
        let base = Arc::new(tracks("1", 0, 3000, 0.0));
        let v1 = ItemVectors::compute(&split, &base, &[]).unwrap().unwrap();
        // New items t3000.., and t10..t59 changed.
        let mut delta = tracks("2", 3000, 100, 0.0).merged();
        delta = tracks("2", 10, 50, 0.3).with_delta(delta).unwrap().merged();
        let layered = Arc::new(base.with_delta(delta).unwrap());
        assert_eq!(layered.layers(), 2);
        let v2 = ItemVectors::compute(&split, &layered, &[&v1]).unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&v2.layers[1], &v1.layers[0]),
            "the base's vectors are shared, not computed again"
        );
        assert_eq!(v2.layers[0].values.len(), 150 * 32);

        let req =
            crate::request::decode(br#"{"context": {}, "candidates": ["t3", "t20", "t3050", "t2999"]}"#)
                .unwrap();
        let fast =
            split.score_request(&req, Some(ItemSource { catalog: &layered, vectors: Some(&v2) })).unwrap();
        let reference = whole.score_request(&req, Some(ItemSource::catalog(&layered))).unwrap();
        assert_close(&fast.values, &reference.values);
        // Vectors of the base catalog do not answer for the delta: no tower output is known, so
        // the whole graph runs.
        assert!(!v1.is_for(&layered));
        let found = crate::catalog::look_up(Some(&layered), &req.candidates, None);
        let encoded = split.encode_found(&req.context, &found, Some(&v1)).unwrap();
        assert!(encoded.tower.is_none() && encoded.tensors.len() == split.encoder().inputs().len());
        let stale =
            split.score_request(&req, Some(ItemSource { catalog: &layered, vectors: Some(&v1) })).unwrap();
        assert_close(&stale.values, &reference.values);
    }
}
