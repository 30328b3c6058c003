//! The tract engine: pure Rust, no runtime library, always available.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use super::{Engine, EngineError, EngineKind, GraphIo, Output, match_io};
use crate::model::encode::{Tensor as Input, TensorData};
use crate::model::manifest::{DType, Side};

type Plan = TypedRunnableModel;
type State = TypedSimpleState;

pub struct TractEngine {
    plan: Arc<Plan>,
    /// For each graph input, the index of the encoded tensor that feeds it.
    order: Vec<usize>,
    /// Run states kept between calls: spawning one allocates every intermediate buffer, and a
    /// ranking server runs the same graph thousands of times a second.
    states: Mutex<Vec<State>>,
}

impl TractEngine {
    pub fn load(graph: &[u8], path: &Path, io: &GraphIo<'_>) -> Result<TractEngine, EngineError> {
        let load_err =
            |e: TractError| EngineError::Load { path: path.display().to_string(), message: format!("{e:#}") };
        let mut model = tract_onnx::onnx().model_for_read(&mut &graph[..]).map_err(load_err)?;

        let graph_inputs: Vec<String> = model
            .input_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let graph_outputs: Vec<String> = model
            .output_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string())
            .collect();
        let order = match_io(path, &graph_inputs, &graph_outputs, io)?;

        // Candidates are a symbolic batch; context inputs are pinned to one row when the graph
        // broadcasts them, which lets tract fold the context part's shapes at load time.
        let batch = model.symbols.sym("batch");
        for (graph_ix, &input_ix) in order.iter().enumerate() {
            let layout = &io.inputs[input_ix];
            let rows: TDim = match (layout.side, io.context_once) {
                (Side::Context, true) => 1.into(),
                _ => batch.clone().into(),
            };
            let dt = match layout.dtype {
                DType::I64 => i64::datum_type(),
                DType::F32 => f32::datum_type(),
            };
            let fact = InferenceFact::dt_shape(dt, tvec![rows, layout.width.to_dim()]);
            model.set_input_fact(graph_ix, fact).map_err(load_err)?;
        }
        model.select_outputs_by_name(io.outputs).map_err(load_err)?;
        let plan = model.into_optimized().and_then(|m| m.into_runnable()).map_err(load_err)?;
        Ok(TractEngine { plan, order, states: Mutex::new(Vec::new()) })
    }

    fn state(&self) -> Result<State, EngineError> {
        let cached = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match cached {
            Some(state) => Ok(state),
            None => self.plan.spawn().map_err(|e| EngineError::Run(format!("{e:#}"))),
        }
    }
}

impl Engine for TractEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn run(&self, inputs: Vec<Input>) -> Result<Vec<Output>, EngineError> {
        let run_err = |e: TractError| EngineError::Run(format!("{e:#}"));
        let mut slots: Vec<Option<Input>> = inputs.into_iter().map(Some).collect();
        let mut values: TVec<TValue> = TVec::with_capacity(self.order.len());
        for &ix in &self.order {
            let input = slots
                .get_mut(ix)
                .and_then(Option::take)
                .ok_or_else(|| EngineError::Run(format!("input {ix} was not supplied")))?;
            let shape = input.shape;
            let tensor = match input.data {
                TensorData::I64(d) => tract_ndarray::Array2::from_shape_vec(shape, d).map(Tensor::from),
                TensorData::F32(d) => tract_ndarray::Array2::from_shape_vec(shape, d).map(Tensor::from),
            }
            .map_err(|e| EngineError::Run(format!("input {ix}: {e}")))?;
            values.push(tensor.into_tvalue());
        }
        let mut state = self.state()?;
        let outputs = state.run(values).map_err(run_err)?;
        self.states.lock().unwrap_or_else(|p| p.into_inner()).push(state);
        outputs
            .iter()
            .map(|t| {
                let view = t.to_plain_array_view::<f32>().map_err(run_err)?;
                Ok(Output { shape: view.shape().to_vec(), data: view.iter().copied().collect() })
            })
            .collect()
    }
}
