//! Inference engines: run an ONNX graph on encoded tensors. `tract` (pure Rust) is always built;
//! `ort` (ONNX Runtime, loaded at run time) is behind the `ort` cargo feature.
//!
//! # Layout
//! - [`tract`]: the pure-Rust engine, one plan per batch size, run states per thread.
//! - [`native`]: the `tract` engine's interpreter for the graphs retort exports, used where it
//!   runs every node and agrees with tract.
//! - [`ort`]: ONNX Runtime from the shared library `ORT_DYLIB_PATH` names (feature `ort`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::encode::{InputLayout, Tensor};

pub mod native;
pub mod tract;

#[cfg(feature = "ort")]
pub mod ort;

/// A loaded graph. Immutable after load; `run` may be called from several threads at once.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;

    /// What runs the graph: the engine's name, or `native` for a graph the `tract` engine runs
    /// on retort's own interpreter ([`native`]).
    fn interpreter(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Runs the graph on `inputs` (in the order of the layouts given at load) and returns the
    /// requested outputs, in the order they were requested at load.
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Output>, EngineError>;
}

/// One output of a run, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What an engine needs to know about a graph beyond the file: its inputs as the encoder lays
/// them out, whether context inputs have one row, and which outputs to fetch.
#[derive(Debug, Clone)]
pub struct GraphIo<'a> {
    pub inputs: &'a [InputLayout],
    /// Context inputs have exactly one row (broadcast in the graph) rather than one per candidate.
    pub context_once: bool,
    /// Each candidate's outputs depend only on its own rows and the context, so batches may be
    /// padded or split.
    pub candidates_independent: bool,
    pub outputs: &'a [String],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    #[default]
    Tract,
    Ort,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Tract => "tract",
            EngineKind::Ort => "ort",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: cannot load the graph: {message}")]
    Load { path: String, message: String },
    #[error("{path}: the graph and the manifest disagree: {message}")]
    Mismatch { path: String, message: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("the {0} engine is not built in; rebuild with `--features {0}`")]
    Unavailable(EngineKind),
}

pub use tract::{release_retired_states, retired_states_pending};

/// Loads an ONNX graph (its protobuf bytes; `path` names it in errors) with the chosen engine.
pub fn load(
    kind: EngineKind,
    graph: &[u8],
    path: &Path,
    io: &GraphIo<'_>,
) -> Result<Box<dyn Engine>, EngineError> {
    match kind {
        EngineKind::Tract => {
            if native::enabled() {
                // The probe's reference is tract's one plan for any batch size: exact, and quick
                // to compile; the fixed-size ladder is only for a graph that stays on tract (the
                // shipped model loads in ~45 ms instead of ~260).
                let any_batch = GraphIo { candidates_independent: false, ..io.clone() };
                let reference = tract::TractEngine::load(graph, path, &any_batch)?;
                match native::beside(&reference, graph, io) {
                    Ok(native) => return Ok(Box::new(native)),
                    Err(why) => tracing::info!(graph = %path.display(), "runs on tract, not natively: {why}"),
                }
            }
            Ok(Box::new(tract::TractEngine::load(graph, path, io)?))
        }
        #[cfg(feature = "ort")]
        EngineKind::Ort => Ok(Box::new(ort::OrtEngine::load(graph, path, io)?)),
        #[cfg(not(feature = "ort"))]
        EngineKind::Ort => Err(EngineError::Unavailable(EngineKind::Ort)),
    }
}

/// Checks that the graph declares exactly the inputs the manifest feeds and every output it
/// reads, naming what is missing. Returns, for each graph input, its index in `io.inputs`.
pub(crate) fn match_io(
    path: &Path,
    graph_inputs: &[String],
    graph_outputs: &[String],
    io: &GraphIo<'_>,
) -> Result<Vec<usize>, EngineError> {
    let mismatch = |message: String| EngineError::Mismatch { path: path.display().to_string(), message };
    let mut order = Vec::with_capacity(graph_inputs.len());
    for name in graph_inputs {
        match io.inputs.iter().position(|i| &i.name == name) {
            Some(ix) => order.push(ix),
            None => {
                return Err(mismatch(format!("graph input `{name}` is fed by no manifest feature")));
            }
        }
    }
    for input in io.inputs {
        if !graph_inputs.contains(&input.name) {
            return Err(mismatch(format!(
                "manifest features feed input `{}`, which the graph does not have (it has {})",
                input.name,
                graph_inputs.join(", ")
            )));
        }
    }
    for name in io.outputs {
        if !graph_outputs.contains(name) {
            return Err(mismatch(format!(
                "manifest head reads output `{name}`, which the graph does not have (it has {})",
                graph_outputs.join(", ")
            )));
        }
    }
    Ok(order)
}
