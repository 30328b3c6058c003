//! The ONNX Runtime engine. ONNX Runtime is loaded at run time from the shared library named by
//! `ORT_DYLIB_PATH` (for instance the one in the PyPI `onnxruntime` wheel); nothing is downloaded.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor as OrtTensor};

use super::{Engine, EngineError, EngineKind, GraphIo, Output, match_io};
use crate::encode::{InputLayout, Tensor, TensorData};

/// ONNX Runtime keeps one process-wide environment; sessions must not outlive it.
static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

fn environment() -> Result<&'static Environment, EngineError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = std::env::var_os("ORT_DYLIB_PATH").ok_or_else(|| {
                "ORT_DYLIB_PATH is not set; point it at libonnxruntime.so (for instance the one \
                 in the onnxruntime wheel: site-packages/onnxruntime/capi/)"
                    .to_string()
            })?;
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.to_string_lossy()))?
                .with_name("retort")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .as_ref()
        .map_err(|message| EngineError::Load { path: "ONNX Runtime".into(), message: message.clone() })
}

pub struct OrtEngine {
    /// `Session::run` takes `&mut self`, so each inference thread gets a session of its own;
    /// a caller takes whichever is free.
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    inputs: Vec<InputLayout>,
    outputs: Vec<String>,
}

impl OrtEngine {
    pub fn load(graph: &[u8], path: &Path, io: &GraphIo<'_>) -> Result<OrtEngine, EngineError> {
        let env = environment()?;
        let load_err = |message: String| EngineError::Load { path: path.display().to_string(), message };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut sessions = Vec::with_capacity(threads);
        for _ in 0..threads {
            // Parallelism comes from running requests side by side, one thread each; intra-op
            // threads would fight the inference pool for the same cores.
            let builder_err = |e: ort::Error<ort::session::builder::SessionBuilder>| load_err(e.to_string());
            let session = Session::builder(env)
                .map_err(|e| load_err(e.to_string()))?
                .with_intra_threads(1)
                .map_err(builder_err)?
                .with_inter_threads(1)
                .map_err(builder_err)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(builder_err)?
                .commit_from_memory(graph)
                .map_err(|e| load_err(e.to_string()))?;
            sessions.push(Mutex::new(session));
        }
        let first = sessions[0].lock().unwrap_or_else(|p| p.into_inner());
        let graph_inputs: Vec<String> = first.inputs().iter().map(|o| o.name().to_string()).collect();
        let graph_outputs: Vec<String> = first.outputs().iter().map(|o| o.name().to_string()).collect();
        drop(first);
        match_io(path, &graph_inputs, &graph_outputs, io)?;
        Ok(OrtEngine {
            sessions,
            next: AtomicUsize::new(0),
            inputs: io.inputs.to_vec(),
            outputs: io.outputs.to_vec(),
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        self.sessions[start % n].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for OrtEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Ort
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Output>, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(e.to_string());
        let mut values: Vec<(&str, DynValue)> = Vec::with_capacity(inputs.len());
        for (layout, tensor) in self.inputs.iter().zip(inputs) {
            let shape = [tensor.shape[0] as i64, tensor.shape[1] as i64];
            let value = match tensor.data {
                TensorData::I64(d) => OrtTensor::from_array((shape, d)).map_err(run_err)?.into_dyn(),
                TensorData::F32(d) => OrtTensor::from_array((shape, d)).map_err(run_err)?.into_dyn(),
            };
            values.push((layout.name.as_str(), value));
        }
        let mut session = self.session();
        let results = session.run(values).map_err(run_err)?;
        self.outputs
            .iter()
            .map(|name| {
                let (shape, data) = results[name.as_str()].try_extract_tensor::<f32>().map_err(run_err)?;
                Ok(Output { shape: shape.iter().map(|&d| d as usize).collect(), data: data.to_vec() })
            })
            .collect()
    }
}
