//! The tract engine: pure Rust, no runtime library, always available.
//!
//! tract runs a plan with a symbolic batch about half as fast as one compiled for a fixed batch
//! (it cannot pick matrix kernels or plan buffers ahead). When the manifest declares candidates
//! independent, the engine compiles one plan per size in a ladder of batch sizes (1, 2, 3, 4, 6,
//! 8, … 2048: each step at most 1.5x the last) and pads a batch up to the next size, so the
//! padding costs at most a third of the work; larger batches run in chunks of the largest
//! size. A model that mixes candidates (a softmax over the list, say) keeps the symbolic plan.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;

use tract_onnx::prelude::*;

use super::{Engine, EngineError, EngineKind, GraphIo, Output, match_io};
use crate::encode::{Tensor as Input, TensorData};
use crate::manifest::{DType, Side};

type Plan = TypedRunnableModel;
type State = TypedSimpleState;

/// Batch sizes compiled ahead when candidates are independent.
pub fn batch_ladder() -> Vec<usize> {
    let mut sizes = vec![1, 2, 3];
    let mut p = 4;
    while p <= 2048 {
        sizes.push(p);
        if p * 3 / 2 < 2048 {
            sizes.push(p * 3 / 2);
        }
        p *= 2;
    }
    sizes
}

/// A runnable plan and the run states kept for it: spawning a state allocates every
/// intermediate buffer, and a ranking server runs the same graph thousands of times a second.
///
/// A state is only ever run by the thread that spawned it. tract's matrix products keep scratch
/// space per run state in a thread-local table that only the thread dropping the state clears:
/// a state that moved between threads, or was dropped on another thread when its model retired,
/// would leave scratch space behind on every thread it ran on, for good.
struct Compiled {
    /// Fixed batch of this plan; `None` for the symbolic plan.
    rows: Option<usize>,
    plan: Arc<Plan>,
    states: Mutex<Vec<Owned>>,
}

/// A run state and the thread that owns it.
struct Owned {
    owner: ThreadId,
    /// Dead once the owner has exited (its thread-local tables are gone with it).
    owner_alive: Weak<()>,
    state: State,
}

impl Owned {
    /// Whether dropping the state on this thread clears everything it left behind.
    fn droppable_here(&self, here: ThreadId) -> bool {
        self.owner == here || self.owner_alive.strong_count() == 0
    }
}

thread_local! {
    static THREAD_ALIVE: Arc<()> = Arc::new(());
}

/// States of dropped plans waiting for their owner thread to drop them.
static ORPHANS: Mutex<Vec<Owned>> = Mutex::new(Vec::new());
static ORPHAN_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Drops the run states of retired plans that this thread owns. Every run does it first; a
/// thread that may sit idle while versions retire (an inference worker, the rollout thread)
/// calls it when idle, since the states hold their plan's memory until then.
pub fn release_retired_states() {
    if retired_states_pending() == 0 {
        return;
    }
    let here = std::thread::current().id();
    let mine: Vec<Owned> = {
        let mut orphans = ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest) = orphans.drain(..).partition(|o| o.droppable_here(here));
        *orphans = rest;
        ORPHAN_COUNT.store(orphans.len(), Ordering::Release);
        mine
    };
    drop(mine);
}

/// Run states of retired plans not yet dropped by their owner thread.
pub fn retired_states_pending() -> usize {
    ORPHAN_COUNT.load(Ordering::Acquire)
}

impl Compiled {
    fn new(rows: Option<usize>, plan: Arc<Plan>) -> Compiled {
        Compiled { rows, plan, states: Mutex::new(Vec::new()) }
    }

    fn run(&self, values: TVec<TValue>) -> Result<TVec<TValue>, EngineError> {
        release_retired_states();
        let run_err = |e: TractError| EngineError::Run(format!("{e:#}"));
        let here = std::thread::current().id();
        let cached = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            states.iter().position(|o| o.owner == here).map(|i| states.swap_remove(i))
        };
        let mut owned = match cached {
            Some(owned) => owned,
            None => Owned {
                owner: here,
                owner_alive: THREAD_ALIVE.with(Arc::downgrade),
                state: self.plan.spawn().map_err(run_err)?,
            },
        };
        let outputs = owned.state.run(values).map_err(run_err)?;
        self.states.lock().unwrap_or_else(|p| p.into_inner()).push(owned);
        Ok(outputs)
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        let states = std::mem::take(self.states.get_mut().unwrap_or_else(|p| p.into_inner()));
        let here = std::thread::current().id();
        let (here_now, elsewhere): (Vec<Owned>, Vec<Owned>) =
            states.into_iter().partition(|o| o.droppable_here(here));
        drop(here_now);
        if !elsewhere.is_empty() {
            let mut orphans = ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
            orphans.extend(elsewhere);
            ORPHAN_COUNT.store(orphans.len(), Ordering::Release);
        }
    }
}

pub struct TractEngine {
    /// For each graph input, the index of the encoded tensor that feeds it.
    order: Vec<usize>,
    /// Per encoded input: true when it has one row per candidate.
    per_row: Vec<bool>,
    /// Fixed-batch plans, ascending; or one symbolic plan.
    plans: Vec<Compiled>,
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
        let per_row: Vec<bool> = io.inputs.iter().map(|i| i.side == Side::Item || !io.context_once).collect();

        // Candidates are a symbolic batch; context inputs are pinned to one row when the graph
        // broadcasts them, which lets tract fold the context part's shapes at load time.
        let batch = model.symbols.sym("batch");
        for (graph_ix, &input_ix) in order.iter().enumerate() {
            let layout = &io.inputs[input_ix];
            let rows: TDim = if per_row[input_ix] { batch.clone().into() } else { 1.into() };
            let dt = match layout.dtype {
                DType::I64 => i64::datum_type(),
                DType::F32 => f32::datum_type(),
            };
            let fact = InferenceFact::dt_shape(dt, tvec![rows, layout.width.to_dim()]);
            model.set_input_fact(graph_ix, fact).map_err(load_err)?;
        }
        model.select_outputs_by_name(io.outputs).map_err(load_err)?;
        let typed = model.into_typed().and_then(|m| m.into_decluttered()).map_err(load_err)?;

        let plans = if io.candidates_independent {
            batch_ladder()
                .into_iter()
                .map(|rows| {
                    let subs = HashMap::from([(batch.clone(), TDim::Val(rows as i64))]);
                    let plan = typed
                        .set_symbols(&subs)
                        .and_then(|m| m.into_optimized())
                        .and_then(|m| m.into_runnable())
                        .map_err(load_err)?;
                    Ok(Compiled::new(Some(rows), plan))
                })
                .collect::<Result<Vec<_>, EngineError>>()?
        } else {
            let plan = typed.into_optimized().and_then(|m| m.into_runnable()).map_err(load_err)?;
            vec![Compiled::new(None, plan)]
        };
        Ok(TractEngine { order, per_row, plans })
    }

    /// Runs one batch of `rows` candidates on `compiled`, padding per-row inputs up to its size.
    fn run_on(
        &self,
        compiled: &Compiled,
        inputs: Vec<Input>,
        rows: usize,
    ) -> Result<Vec<Output>, EngineError> {
        let target = compiled.rows.unwrap_or(rows);
        let mut slots: Vec<Option<Input>> = inputs.into_iter().map(Some).collect();
        let mut values: TVec<TValue> = TVec::with_capacity(self.order.len());
        for &ix in &self.order {
            let mut input = slots
                .get_mut(ix)
                .and_then(Option::take)
                .ok_or_else(|| EngineError::Run(format!("input {ix} was not supplied")))?;
            if self.per_row[ix] && target != rows {
                // Padding rows are zeros: bucket 0 and zero features, a valid (ignored) input.
                let len = target * input.shape[1];
                match &mut input.data {
                    TensorData::I64(d) => d.resize(len, 0),
                    TensorData::F32(d) => d.resize(len, 0.0),
                }
                input.shape[0] = target;
            }
            values.push(to_tract(input, ix)?.into_tvalue());
        }
        let outputs = compiled.run(values)?;
        outputs
            .iter()
            .map(|t| {
                let view = t.to_plain_array_view::<f32>().map_err(|e| EngineError::Run(format!("{e:#}")))?;
                let mut shape = view.shape().to_vec();
                let mut data: Vec<f32> = view.iter().copied().collect();
                if target != rows {
                    let stride = shape.iter().skip(1).product::<usize>();
                    data.truncate(rows * stride);
                    shape[0] = rows;
                }
                Ok(Output { shape, data })
            })
            .collect()
    }
}

fn to_tract(input: Input, ix: usize) -> Result<Tensor, EngineError> {
    let shape = input.shape;
    match input.data {
        TensorData::I64(d) => tract_ndarray::Array2::from_shape_vec(shape, d).map(Tensor::from),
        TensorData::F32(d) => tract_ndarray::Array2::from_shape_vec(shape, d).map(Tensor::from),
    }
    .map_err(|e| EngineError::Run(format!("input {ix}: {e}")))
}

/// Rows `start..end` of a row-major tensor.
fn slice_rows(t: &Input, start: usize, end: usize) -> Input {
    let w = t.shape[1];
    let data = match &t.data {
        TensorData::I64(d) => TensorData::I64(d[start * w..end * w].to_vec()),
        TensorData::F32(d) => TensorData::F32(d[start * w..end * w].to_vec()),
    };
    Input { shape: [end - start, w], data }
}

impl Engine for TractEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn run(&self, inputs: Vec<Input>) -> Result<Vec<Output>, EngineError> {
        let rows =
            inputs.iter().zip(&self.per_row).find(|(_, per_row)| **per_row).map_or(1, |(t, _)| t.shape[0]);
        let largest = self.plans.last().expect("at least one plan");
        if largest.rows.is_none() {
            return self.run_on(largest, inputs, rows);
        }
        if let Some(fit) = self.plans.iter().find(|p| p.rows.is_some_and(|r| r >= rows)) {
            return self.run_on(fit, inputs, rows);
        }
        // More candidates than the largest plan: run in chunks and stack the outputs.
        let chunk = largest.rows.expect("fixed-size plans");
        let mut stacked: Vec<Output> = Vec::new();
        for start in (0..rows).step_by(chunk) {
            let end = (start + chunk).min(rows);
            let part: Vec<Input> = inputs
                .iter()
                .zip(&self.per_row)
                .map(|(t, &per_row)| if per_row { slice_rows(t, start, end) } else { t.clone() })
                .collect();
            let fit = self.plans.iter().find(|p| p.rows.is_some_and(|r| r >= end - start)).unwrap_or(largest);
            let outputs = self.run_on(fit, part, end - start)?;
            if stacked.is_empty() {
                stacked = outputs;
            } else {
                for (acc, out) in stacked.iter_mut().zip(outputs) {
                    acc.data.extend_from_slice(&out.data);
                    acc.shape[0] += out.shape[0];
                }
            }
        }
        Ok(stacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_climbs_by_at_most_half_and_ends_at_2048() {
        let ladder = batch_ladder();
        assert_eq!(&ladder[..8], &[1, 2, 3, 4, 6, 8, 12, 16]);
        assert_eq!(*ladder.last().unwrap(), 2048);
        assert!(ladder.windows(2).all(|w| w[1] > w[0] && w[1] * 2 <= w[0] * 3 + 2), "{ladder:?}");
    }

    /// `x + x` over a 2x2 input.
    fn doubling_plan() -> Arc<Plan> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 2])).unwrap();
        let y = model.wire_node("y", tract_onnx::tract_core::ops::math::add(), &[x, x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model.into_optimized().unwrap().into_runnable().unwrap()
    }

    fn input() -> TVec<TValue> {
        tvec![tract_ndarray::arr2(&[[1f32, 2.], [3., 4.]]).into_tensor().into_tvalue()]
    }

    #[test]
    fn a_thread_runs_only_the_states_it_spawned() {
        let compiled = Arc::new(Compiled::new(Some(2), doubling_plan()));
        compiled.run(input()).unwrap();
        let elsewhere = compiled.clone();
        std::thread::spawn(move || elsewhere.run(input()).unwrap()).join().unwrap();
        compiled.run(input()).unwrap();
        let states = compiled.states.lock().unwrap();
        assert_eq!(states.len(), 2, "one state per thread, each reused by its own thread");
        assert_ne!(states[0].owner, states[1].owner);
    }

    #[test]
    fn a_plan_dropped_elsewhere_is_freed_once_its_threads_let_go() {
        let compiled = Compiled::new(Some(2), doubling_plan());
        let plan = Arc::downgrade(&compiled.plan);
        let (give, take) = std::sync::mpsc::channel::<Compiled>();
        let (ran, wait_run) = std::sync::mpsc::channel();
        let (retired, wait_retired) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let compiled = take.recv().unwrap();
            let outputs = compiled.run(input()).unwrap();
            assert_eq!(outputs[0].to_plain_array_view::<f32>().unwrap()[[1, 1]], 8.0);
            ran.send(compiled).unwrap();
            wait_retired.recv().unwrap();
            // What an idle inference thread does.
            release_retired_states();
        });
        give.send(compiled).unwrap();
        // Retired on this thread: the worker's state still holds the plan, and must be dropped
        // by the worker, not here.
        drop(wait_run.recv().unwrap());
        assert!(plan.upgrade().is_some(), "the worker's run state keeps the plan until it lets go");
        retired.send(()).unwrap();
        worker.join().unwrap();
        assert!(plan.upgrade().is_none(), "the plan outlived the thread that ran it");
    }
}
