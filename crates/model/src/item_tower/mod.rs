//! Item towers run once per item: a model whose manifest names its item tower's output
//! (`[item_tower]`) is served as two graphs cut there, the item tower and the ranker. The
//! server computes each catalog item's tower output once per (model version, catalog
//! version), so a request runs only the ranker (the context tower, the join and the heads),
//! and the tower only for candidates the catalog lacks or whose request gives item features.
//!
//! # Layout
//! - this file: [`Tower`], the two engines and how a request's inputs reach them.
//! - [`split`]: cutting the ONNX graph in two at the named tensor.
//! - [`vectors`]: the tower's outputs for a catalog's items, [`ItemVectors`].

pub mod split;
pub mod vectors;

use std::path::Path;

pub use vectors::{ItemVectors, ItemVectorsError};

use crate::encode::{Encoded, Encoder, InputLayout, Tensor, TensorData, Towered};
use crate::engine::{self, Engine, EngineError, EngineKind, GraphIo};
use crate::manifest::{DType, ItemTower, Manifest, Side};

/// A model served in two parts: the item-tower graph and the ranker (the rest of the graph,
/// reading the tower's output). The model's own engine keeps the whole graph.
pub struct Tower {
    engine: Box<dyn Engine>,
    pub(crate) ranker: Box<dyn Engine>,
    pub width: usize,
}

impl Tower {
    /// Cuts `graph` at `spec.output` and loads both parts: the tower and the ranker. Each must
    /// read only its side's inputs: the tower item inputs, the ranker context inputs and the
    /// tower's output.
    pub(crate) fn load(
        manifest: &Manifest,
        spec: &ItemTower,
        encoder: &Encoder,
        graph: &[u8],
        origin: &Path,
        kind: EngineKind,
        outputs: &[String],
    ) -> Result<Tower, EngineError> {
        let mismatch =
            |message: String| EngineError::Mismatch { path: origin.display().to_string(), message };
        let model: tract_onnx::pb::ModelProto =
            prost::Message::decode(graph).map_err(|e| EngineError::Load {
                path: origin.display().to_string(),
                message: format!("not an ONNX model: {e}"),
            })?;
        let parts = split::split(&model, &spec.output, spec.width).map_err(mismatch)?;
        let side_of = |name: &str| encoder.inputs().iter().find(|i| i.name == name).map(|i| i.side);
        for input in &parts.tower_inputs {
            if side_of(input) != Some(Side::Item) {
                return Err(mismatch(format!(
                    "the item tower (up to `{}`) reads `{input}`, which is not an item input",
                    spec.output
                )));
            }
        }
        if let Some(input) = parts.ranker_inputs.iter().find(|i| side_of(i) == Some(Side::Item)) {
            return Err(mismatch(format!(
                "the graph reads item input `{input}` besides the item tower's output `{}`: \
                 item_tower.output must be the only way outputs depend on item inputs",
                spec.output
            )));
        }
        let (items, context): (Vec<InputLayout>, Vec<InputLayout>) =
            encoder.inputs().iter().cloned().partition(|i| i.side == Side::Item);
        let tower_io = GraphIo {
            inputs: &items,
            context_once: true,
            // One item's output depends on that item alone: what computing it once per item
            // rests on.
            candidates_independent: true,
            outputs: std::slice::from_ref(&spec.output),
        };
        let tower = engine::load(kind, &crate::onnx::to_bytes(&parts.tower), origin, &tower_io)?;
        let mut ranker_inputs = context;
        ranker_inputs.push(InputLayout {
            name: spec.output.clone(),
            side: Side::Item,
            dtype: DType::F32,
            width: spec.width,
        });
        let ranker_io = GraphIo {
            inputs: &ranker_inputs,
            context_once: encoder.context_rows() == crate::manifest::ContextRows::Once,
            candidates_independent: manifest.model.independent_candidates,
            outputs,
        };
        let ranker = engine::load(kind, &crate::onnx::to_bytes(&parts.ranker), origin, &ranker_io)?;
        Ok(Tower { engine: tower, ranker, width: spec.width })
    }

    /// Moves the item inputs of an encoding (every input, in the encoder's order) into its
    /// [`Towered`] part, for the tower to run on every row.
    pub(crate) fn separate(&self, encoder: &Encoder, mut encoded: Encoded) -> Encoded {
        if encoded.tower.is_some() {
            return encoded;
        }
        let items = take_item_inputs(encoder, &mut encoded);
        encoded.tower = Some(Towered {
            width: self.width,
            vectors: vec![0.0; encoded.rows * self.width],
            rows: (0..encoded.rows).collect(),
            items,
        });
        encoded
    }

    /// Runs the tower on item inputs of `rows` rows: their outputs, row-major.
    pub(crate) fn run(&self, items: Vec<Tensor>, rows: usize) -> Result<Vec<f32>, EngineError> {
        let out = self
            .engine
            .run(items)?
            .pop()
            .ok_or_else(|| EngineError::Run("the item tower gave no output".into()))?;
        if out.shape != [rows, self.width] {
            return Err(EngineError::Run(format!(
                "the item tower's output has shape {:?}; the manifest declares [{rows}, {}]",
                out.shape, self.width
            )));
        }
        Ok(out.data)
    }

    /// Runs the ranker on a separated encoding: its context inputs, then every row's item-tower
    /// output, those the encoding lacks computed here first.
    pub(crate) fn rank(&self, mut encoded: Encoded) -> Result<Vec<engine::Output>, EngineError> {
        let towered = encoded.tower.take().expect("separated first");
        let Towered { width, mut vectors, rows, items } = towered;
        if !rows.is_empty() {
            let computed = self.run(items, rows.len())?;
            if rows.len() == encoded.rows {
                vectors = computed;
            } else {
                for (k, &row) in rows.iter().enumerate() {
                    vectors[row * width..(row + 1) * width]
                        .copy_from_slice(&computed[k * width..(k + 1) * width]);
                }
            }
        }
        encoded.tensors.push(Tensor { shape: [encoded.rows, width], data: TensorData::F32(vectors) });
        self.ranker.run(encoded.tensors)
    }
}

/// Takes the item inputs out of an encoding of every input (in the encoder's order), leaving
/// its context inputs.
pub(crate) fn take_item_inputs(encoder: &Encoder, encoded: &mut Encoded) -> Vec<Tensor> {
    let mut items = Vec::new();
    let mut context = Vec::new();
    for (t, layout) in encoded.tensors.drain(..).zip(encoder.inputs()) {
        match layout.side {
            Side::Item => items.push(t),
            Side::Context => context.push(t),
        }
    }
    encoded.tensors = context;
    items
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::Model;
    use crate::manifest::Manifest;
    use crate::scaffold;
    use crate::two_tower::{Layers, TwoTower};

    /// The package's model served as it says (in two parts), and the same graph run whole.
    pub fn both(manifest: &Manifest, graph: &[u8], kind: EngineKind) -> (Model, Model) {
        let split = Model::from_parts(manifest.clone(), graph, Path::new("m.onnx"), kind).unwrap();
        assert!(split.tower().is_some());
        let whole = Manifest { item_tower: None, ..manifest.clone() };
        let whole = Model::from_parts(whole, graph, Path::new("m.onnx"), kind).unwrap();
        (split, whole)
    }

    pub fn assert_close(a: &crate::HeadValues, b: &crate::HeadValues) {
        assert_eq!(a.rows, b.rows);
        for (x, y) in a.values.iter().zip(&b.values) {
            assert!((x - y).abs() <= 1e-5, "{x} against {y}");
        }
    }

    /// The golden requests and a request of many candidates, some missing features.
    fn check_equal(manifest: &Manifest, graph: &[u8]) {
        let (split, whole) = both(manifest, graph, EngineKind::Tract);
        split.check_golden().unwrap();
        for example in &manifest.golden.examples {
            assert_close(&split.run_example_apart(example).unwrap(), &whole.run_example(example).unwrap());
        }
        let example = &manifest.golden.examples[0];
        let many: Vec<_> = example.candidates.iter().cycle().take(37).map(|c| c.features.clone()).collect();
        let a = split.infer(split.apart(split.encode(&example.context, &many).unwrap())).unwrap();
        let b = whole.infer(whole.encode(&example.context, &many).unwrap()).unwrap();
        assert_close(&a, &b);
    }

    #[test]
    fn a_model_served_in_two_parts_scores_as_its_whole_graph() {
        let (manifest, graph) = scaffold::seeded_package("m", "1", 3);
        // The default student: the item tower's 32 wide output is narrower than the join's 64.
        assert_eq!(manifest.item_tower.as_ref().map(|t| t.width), Some(32));
        check_equal(&manifest, &graph);

        // A narrow join: its item half is cut out with the tower; with experts and task towers.
        let mut arch = scaffold::music_architecture();
        arch = TwoTower {
            interaction_hidden: vec![16, 8],
            experts: 3,
            task_hidden: vec![4],
            ..TwoTower::new(arch.features, Layers::default(), arch.heads, false)
        };
        let (manifest, graph) = scaffold::random_package("m", "1", 4, &arch, &[("play", 1.0)]);
        assert_eq!(manifest.item_tower.as_ref().map(|t| t.width), Some(16));
        check_equal(&manifest, &graph);
    }

    #[test]
    fn a_cut_the_graph_cannot_be_split_at_is_refused_by_name() {
        let (manifest, graph) = scaffold::seeded_package("m", "1", 3);
        let cut_at = |output: &str, width: usize| {
            let mut m = manifest.clone();
            m.item_tower = Some(crate::manifest::ItemTower { output: output.into(), width });
            Model::from_parts(m, &graph, Path::new("m.onnx"), EngineKind::Tract).err().unwrap().to_string()
        };
        let err = cut_at("nope", 32);
        assert!(err.contains("item_tower.output `nope` is no tensor the graph computes"), "{err}");
        // A head's output depends on the context too.
        let err = cut_at("play", 1);
        assert!(err.contains("reads `context_dense`") || err.contains("reads `context_ids`"), "{err}");
        assert!(err.contains("not an item input"), "{err}");
        let err = cut_at(crate::two_tower::ITEM_VECTOR, 31);
        assert!(err.starts_with("m.onnx"), "a wrong width is the graph's disagreement: {err}");
    }
}
