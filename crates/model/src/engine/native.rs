//! The native interpreter: graphs made only of the operators retort's exports write (dense
//! layers, embedding lookups, joins, activations, the mixture of experts' gates) run straight
//! on a matrix kernel, with no plan per batch size and no per-operator bookkeeping.
//!
//! A ranking request is a few small matrix products over a few hundred rows; a general graph
//! runtime spends much of such a run between operators. The interpreter runs the graph as a
//! list of steps over values, each value freed after its last reader and updated in place where
//! it is the last reader's only input, so a run allocates a handful of buffers that the
//! allocator hands straight back.
//!
//! It is one half of the `tract` engine: [`super::load`] builds it for a graph whose every
//! operator it knows, runs it beside tract on probe inputs and keeps it only when both agree;
//! any other graph (a hand-written export with operators it lacks) runs on tract.

use std::collections::HashMap;

use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, TensorProto, tensor_proto::DataType};

use super::{Engine, EngineError, EngineKind, GraphIo, Output, match_io};
use crate::encode::{Tensor as Input, TensorData};
use crate::manifest::{DType, Side};

/// Why a graph cannot run natively: the first node that stops it, named.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(String);

/// A value during a run: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl Value {
    fn shape(&self) -> &[usize] {
        match self {
            Value::F32 { shape, .. } | Value::I64 { shape, .. } => shape,
        }
    }
}

/// Where a step reads a value: a constant of the graph or a slot filled during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    Constant(usize),
    Slot(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// `alpha · A' · B' + beta · C`, `'` a transpose where the attribute asks.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Add,
    Relu,
    Sigmoid,
    Softmax {
        axis: i64,
    },
    Gather {
        axis: i64,
    },
    Reshape,
    Concat {
        axis: i64,
    },
    Identity,
    Shape,
    Expand,
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    inputs: Vec<Operand>,
    output: usize,
    /// Slots whose last reader is this step and that are not graph outputs: dropped (or
    /// taken, to be updated in place) here.
    last_reads: Vec<usize>,
    /// The ONNX node, for errors.
    node: String,
}

pub struct NativeGraph {
    constants: Vec<Value>,
    /// For each graph input, in the order the graph declares them: its slot and the index of
    /// the encoded tensor that feeds it.
    inputs: Vec<(usize, usize)>,
    steps: Vec<Step>,
    /// The slot of each requested output, in the order requested.
    outputs: Vec<usize>,
    slots: usize,
}

impl NativeGraph {
    /// Builds the interpreter for `model`, or says which node it cannot run.
    pub fn build(model: &ModelProto, io: &GraphIo<'_>) -> Result<NativeGraph, Unsupported> {
        let unsupported = Unsupported;
        let graph = model.graph.as_ref().ok_or_else(|| unsupported("the model has no graph".into()))?;
        let mut constants = Vec::new();
        let mut names: HashMap<String, Operand> = HashMap::new();
        for init in &graph.initializer {
            names.insert(init.name.clone(), Operand::Constant(constants.len()));
            constants.push(constant(init).map_err(unsupported)?);
        }
        let graph_inputs: Vec<String> =
            graph.input.iter().map(|i| i.name.clone()).filter(|n| !names.contains_key(n)).collect();
        let graph_outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let order = match_io(std::path::Path::new("graph"), &graph_inputs, &graph_outputs, io)
            .map_err(|e| unsupported(e.to_string()))?;
        let mut slots = 0;
        let mut inputs = Vec::new();
        for (name, &feed) in graph_inputs.iter().zip(&order) {
            names.insert(name.clone(), Operand::Slot(slots));
            inputs.push((slots, feed));
            slots += 1;
        }
        let mut steps = Vec::new();
        for node in &graph.node {
            let mut op = op(node).map_err(unsupported)?;
            let mut operands = Vec::new();
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                let operand = names.get(input).copied().ok_or_else(|| {
                    unsupported(format!("node `{}` reads `{input}`, defined by no earlier node", node.name))
                })?;
                operands.push(operand);
            }
            // A constant weight stored `[out, in]` (as a PyTorch `Linear` keeps it) is
            // transposed once here, so every run reads it row by row.
            if let Op::Gemm { trans_b: trans_b @ true, .. } = &mut op
                && let Some(&Operand::Constant(w)) = operands.get(1)
                && let Value::F32 { shape, data } = &constants[w]
                && let &[rows, cols] = &shape[..]
            {
                let t = crate::onnx::transposed(data, rows, cols);
                operands[1] = Operand::Constant(constants.len());
                constants.push(Value::F32 { shape: vec![cols, rows], data: t });
                *trans_b = false;
            }
            let [output] = &node.output[..] else {
                return Err(unsupported(format!(
                    "node `{}` has {} outputs, not one",
                    node.name,
                    node.output.len()
                )));
            };
            names.insert(output.clone(), Operand::Slot(slots));
            steps.push(Step {
                op,
                inputs: operands,
                output: slots,
                last_reads: Vec::new(),
                node: node.name.clone(),
            });
            slots += 1;
        }
        let outputs = io
            .outputs
            .iter()
            .map(|name| match names.get(name) {
                Some(Operand::Slot(s)) => Ok(*s),
                _ => Err(unsupported(format!("output `{name}` is not computed by a node"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut last_reader = vec![None; slots];
        for (ix, step) in steps.iter().enumerate() {
            for operand in &step.inputs {
                if let Operand::Slot(s) = operand {
                    last_reader[*s] = Some(ix);
                }
            }
        }
        for (slot, reader) in last_reader.into_iter().enumerate() {
            if let Some(ix) = reader
                && !outputs.contains(&slot)
            {
                steps[ix].last_reads.push(slot);
            }
        }
        Ok(NativeGraph { constants, inputs, steps, outputs, slots })
    }

    /// Runs the graph on `inputs` (in the order of the layouts given at build).
    pub fn run(&self, inputs: Vec<Input>) -> Result<Vec<Output>, EngineError> {
        let mut given: Vec<Option<Input>> = inputs.into_iter().map(Some).collect();
        let mut values: Vec<Option<Value>> = vec![None; self.slots];
        for &(slot, feed) in &self.inputs {
            let input = given.get_mut(feed).and_then(Option::take).ok_or_else(|| {
                EngineError::Run(format!("input {feed} is missing or feeds two graph inputs"))
            })?;
            let shape = input.shape.to_vec();
            values[slot] = Some(match input.data {
                TensorData::F32(data) => Value::F32 { shape, data },
                TensorData::I64(data) => Value::I64 { shape, data },
            });
        }
        for step in &self.steps {
            let out = self
                .step(step, &mut values)
                .map_err(|e| EngineError::Run(format!("node `{}`: {e}", step.node)))?;
            for &slot in &step.last_reads {
                values[slot] = None;
            }
            values[step.output] = Some(out);
        }
        self.outputs
            .iter()
            .map(|&slot| match values[slot].take() {
                Some(Value::F32 { shape, data }) => Ok(Output { shape, data }),
                Some(Value::I64 { .. }) => Err(EngineError::Run("an output is int64, not float".into())),
                None => Err(EngineError::Run("an output was requested twice".into())),
            })
            .collect()
    }

    fn step(&self, step: &Step, values: &mut [Option<Value>]) -> Result<Value, String> {
        // The first input to update in place: taken when this step is its last reader (and
        // does not read that slot again, as `Add(x, x)` does), copied otherwise.
        let owned_first = |values: &mut [Option<Value>]| match step.inputs.split_first() {
            Some((&Operand::Slot(s), rest))
                if step.last_reads.contains(&s) && !rest.contains(&Operand::Slot(s)) =>
            {
                values[s]
                    .take()
                    .ok_or_else(|| "an input was freed before its last use. This is a bug.".to_string())
            }
            Some((&first, _)) => self.get(values, first).cloned(),
            None => Err("expects an input".into()),
        };
        match &step.op {
            Op::Relu | Op::Sigmoid | Op::Identity => {
                let mut x = owned_first(values)?;
                if let Value::F32 { data, .. } = &mut x {
                    match step.op {
                        Op::Relu => data.iter_mut().for_each(|v| *v = v.max(0.0)),
                        Op::Sigmoid => data.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
                        _ => {}
                    }
                } else if step.op != Op::Identity {
                    return Err("expects float input".into());
                }
                Ok(x)
            }
            Op::Add => {
                let [a, b] = self.operands::<2>(step)?;
                let out = {
                    let (sa, sb) = (self.get(values, a)?.shape(), self.get(values, b)?.shape());
                    broadcast(sa, sb).ok_or_else(|| format!("shapes {sa:?} and {sb:?} do not broadcast"))?
                };
                // The sum in place of an operand of its shape: the one this step consumes, or a
                // copy (the context's row added under every candidate's row lands here).
                for (x, y) in [(a, b), (b, a)] {
                    let consumed = matches!(x, Operand::Slot(s) if step.last_reads.contains(&s) && x != y);
                    if self.get(values, x)?.shape() != out
                        || !matches!(self.get(values, y)?, Value::F32 { .. })
                    {
                        continue;
                    }
                    let Some(Value::F32 { shape, mut data }) = (match consumed {
                        true => values[slot_of(x)].take(),
                        false => Some(self.get(values, x)?.clone()),
                    }) else {
                        return Err("adds a float and an int64 tensor".into());
                    };
                    let (ys, yd) = floats(self.get(values, y)?)?;
                    add_into(&mut data, &shape, yd, ys);
                    return Ok(Value::F32 { shape, data });
                }
                add(self.get(values, a)?, self.get(values, b)?)
            }
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                let x = self.get(values, step.inputs[0])?;
                let w = self.get(values, *step.inputs.get(1).ok_or("expects two or three inputs")?)?;
                let c = match step.inputs.get(2) {
                    Some(&c) => Some(self.get(values, c)?),
                    None => None,
                };
                gemm(x, w, c, *alpha, *beta, *trans_a, *trans_b)
            }
            Op::MatMul => {
                let [a, b] = self.operands::<2>(step)?;
                matmul(self.get(values, a)?, self.get(values, b)?)
            }
            Op::Softmax { axis } => {
                let x = owned_first(values)?;
                softmax(x, *axis)
            }
            Op::Gather { axis } => {
                let [data, indices] = self.operands::<2>(step)?;
                gather(self.get(values, data)?, self.get(values, indices)?, *axis)
            }
            Op::Reshape => {
                let [_, shape] = self.operands::<2>(step)?;
                let Value::I64 { data: target, .. } = self.get(values, shape)? else {
                    return Err("the shape is not int64".into());
                };
                let target = target.clone();
                let x = owned_first(values)?;
                reshape(x, &target)
            }
            Op::Concat { axis } => {
                let parts =
                    step.inputs.iter().map(|&o| self.get(values, o)).collect::<Result<Vec<_>, _>>()?;
                concat(&parts, *axis)
            }
            Op::Shape => {
                let shape = self.get(values, step.inputs[0])?.shape();
                Ok(Value::I64 { shape: vec![shape.len()], data: shape.iter().map(|&d| d as i64).collect() })
            }
            Op::Expand => {
                let [x, shape] = self.operands::<2>(step)?;
                let Value::I64 { data: target, .. } = self.get(values, shape)? else {
                    return Err("the shape is not int64".into());
                };
                let target: Vec<usize> = target.iter().map(|&d| d.max(0) as usize).collect();
                expand(self.get(values, x)?, &target)
            }
        }
    }

    fn operands<const N: usize>(&self, step: &Step) -> Result<[Operand; N], String> {
        <[Operand; N]>::try_from(&step.inputs[..])
            .map_err(|_| format!("expects {N} inputs, has {}", step.inputs.len()))
    }

    fn get<'v>(&'v self, values: &'v [Option<Value>], operand: Operand) -> Result<&'v Value, String> {
        match operand {
            Operand::Constant(c) => Ok(&self.constants[c]),
            Operand::Slot(s) => values[s]
                .as_ref()
                .ok_or_else(|| "an input was freed before its last use. This is a bug.".into()),
        }
    }
}

fn slot_of(operand: Operand) -> usize {
    match operand {
        Operand::Slot(s) => s,
        Operand::Constant(_) => unreachable!("only slots are taken. This is a bug."),
    }
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn op(node: &NodeProto) -> Result<Op, String> {
    let int = |name: &str, default: i64| attr(node, name).map_or(default, |a| a.i);
    let float = |name: &str, default: f32| attr(node, name).map_or(default, |a| a.f);
    if !node.domain.is_empty() && node.domain != "ai.onnx" {
        return Err(format!("node `{}` is in domain `{}`", node.name, node.domain));
    }
    Ok(match node.op_type.as_str() {
        "Gemm" => Op::Gemm {
            alpha: float("alpha", 1.0),
            beta: float("beta", 1.0),
            trans_a: int("transA", 0) != 0,
            trans_b: int("transB", 0) != 0,
        },
        "MatMul" => Op::MatMul,
        "Add" => Op::Add,
        "Relu" => Op::Relu,
        "Sigmoid" => Op::Sigmoid,
        "Softmax" => Op::Softmax { axis: int("axis", -1) },
        "Gather" => Op::Gather { axis: int("axis", 0) },
        "Reshape" if int("allowzero", 0) == 0 => Op::Reshape,
        "Concat" => Op::Concat { axis: int("axis", 0) },
        "Identity" => Op::Identity,
        "Shape" if attr(node, "start").is_none() && attr(node, "end").is_none() => Op::Shape,
        "Expand" => Op::Expand,
        other => {
            return Err(format!(
                "node `{}`: operator {other} is not one the native interpreter runs",
                node.name
            ));
        }
    })
}

fn constant(t: &TensorProto) -> Result<Value, String> {
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let count: usize = shape.iter().product();
    let value = if t.data_type == DataType::Float as i32 {
        let data: Vec<f32> = if !t.raw_data.is_empty() {
            t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        } else {
            t.float_data.clone()
        };
        Value::F32 { shape, data }
    } else if t.data_type == DataType::Int64 as i32 {
        let data: Vec<i64> = if !t.raw_data.is_empty() {
            t.raw_data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
        } else {
            t.int64_data.clone()
        };
        Value::I64 { shape, data }
    } else {
        return Err(format!("constant `{}` has data type {}, not float or int64", t.name, t.data_type));
    };
    let len = match &value {
        Value::F32 { data, .. } => data.len(),
        Value::I64 { data, .. } => data.len(),
    };
    if len != count {
        return Err(format!("constant `{}` holds {len} values for shape {:?}", t.name, t.dims));
    }
    Ok(value)
}

/// The numpy broadcast of two shapes, or `None` when they do not broadcast.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() < rank { 1 } else { s[i + s.len() - rank] };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Row-major strides of `shape` as seen from an output of rank `rank`, 0 where it broadcasts.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let mut strides = vec![0; rank];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        let o = i + rank - shape.len();
        strides[o] = if shape[i] == 1 && out[o] != 1 { 0 } else { stride };
        stride *= shape[i];
    }
    strides
}

/// Visits every element of the broadcast output: `f(out_index, offset in a, offset in b)`.
fn for_each_broadcast(out: &[usize], a: &[usize], b: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let (sa, sb) = (broadcast_strides(a, out), broadcast_strides(b, out));
    let total: usize = out.iter().product();
    let mut index = vec![0usize; out.len()];
    let (mut oa, mut ob) = (0usize, 0usize);
    for k in 0..total {
        f(k, oa, ob);
        for d in (0..out.len()).rev() {
            index[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if index[d] < out[d] {
                break;
            }
            oa -= sa[d] * out[d];
            ob -= sb[d] * out[d];
            index[d] = 0;
        }
    }
}

/// `a += b`, `b` broadcast to `a`'s shape.
fn add_into(a: &mut [f32], shape: &[usize], b: &[f32], b_shape: &[usize]) {
    if b.len() == a.len() {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    } else if !b.is_empty() && shape.ends_with(&b_shape[b_shape.iter().take_while(|&&d| d == 1).count()..]) {
        // A trailing block repeated (a bias row, the context's row under every candidate).
        for chunk in a.chunks_exact_mut(b.len()) {
            chunk.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
    } else {
        for_each_broadcast(shape, shape, b_shape, |k, _, ob| a[k] += b[ob]);
    }
}

fn add(a: &Value, b: &Value) -> Result<Value, String> {
    let out = broadcast(a.shape(), b.shape())
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", a.shape(), b.shape()))?;
    let total: usize = out.iter().product();
    match (a, b) {
        (Value::F32 { shape: sa, data: da }, Value::F32 { shape: sb, data: db }) => {
            let mut data = vec![0.0f32; total];
            for_each_broadcast(&out, sa, sb, |k, oa, ob| data[k] = da[oa] + db[ob]);
            Ok(Value::F32 { shape: out, data })
        }
        (Value::I64 { shape: sa, data: da }, Value::I64 { shape: sb, data: db }) => {
            let mut data = vec![0i64; total];
            for_each_broadcast(&out, sa, sb, |k, oa, ob| data[k] = da[oa].wrapping_add(db[ob]));
            Ok(Value::I64 { shape: out, data })
        }
        _ => Err("adds a float and an int64 tensor".into()),
    }
}

fn floats(v: &Value) -> Result<(&[usize], &[f32]), String> {
    match v {
        Value::F32 { shape, data } => Ok((shape, data)),
        Value::I64 { .. } => Err("expects a float tensor, got int64".into()),
    }
}

/// `c ← alpha · a · b + beta · c` for row-major `a` (`m × k`, strides given), `b` (`k × n`).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
    beta: f32,
    c: &mut [f32],
) {
    assert!(c.len() == m * n, "sgemm: output of {} values for {m}x{n}. This is a bug.", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if a.2 == 1 && b.2 == 1 && n > 1 && k * n <= 16 * 1024 && alpha == 1.0 {
        // Layers a few dozen wide, the shape of every layer of a ranking student: the kernel's
        // packing costs more than the products, so multiply straight from the rows. Each block
        // of rows reads all of `b`, so only a `b` that stays in cache (64 KB) goes this way.
        if beta == 0.0 {
            c.fill(0.0);
        } else if beta != 1.0 {
            c.iter_mut().for_each(|v| *v *= beta);
        }
        rows_times(m, k, n, (a.0, a.1 as usize), (b.0, b.1 as usize), c);
        return;
    }
    if n == 1 && a.2 == 1 && b.1 == 1 {
        // One output column (a head's logit): a dot product per row. The kernel would pack
        // every row of `a` to fill one lane of its tile.
        let w = &b.0[..k];
        for (i, out) in c.iter_mut().enumerate() {
            let start = i * a.1 as usize;
            let dot = dot(&a.0[start..start + k], w);
            *out = alpha * dot + if beta == 0.0 { 0.0 } else { beta * *out };
        }
        return;
    }
    // SAFETY: every index the kernel reads, `i·rs + j·cs` for `i < m, j < k` (a) and
    // `i < k, j < n` (b), lies inside the slices, whose lengths the callers derive from the same
    // dimensions and strides; `c` is `m × n`, row-major, written without aliasing.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.0.as_ptr(),
            a.1,
            a.2,
            b.0.as_ptr(),
            b.1,
            b.2,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `c += a · b` for `m` rows of `a` (`k` wide, row stride given) and `b` (`k × n`, row stride
/// given), one output row at a time in blocks of 16 columns held in registers.
fn rows_times(m: usize, k: usize, n: usize, a: (&[f32], usize), b: (&[f32], usize), c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { rows_times_fma(m, k, n, a, b, c) };
    }
    rows_times_body::<false>(m, k, n, a, b, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_times_fma(m: usize, k: usize, n: usize, a: (&[f32], usize), b: (&[f32], usize), c: &mut [f32]) {
    rows_times_body::<true>(m, k, n, a, b, c);
}

#[inline(always)]
fn rows_times_body<const FMA: bool>(
    m: usize,
    k: usize,
    n: usize,
    a: (&[f32], usize),
    b: (&[f32], usize),
    c: &mut [f32],
) {
    // Four rows at a time: eight independent accumulators keep the multiply-add units busy
    // (one row's two would wait on each other's latency), and each weight load serves four.
    let mut i = 0;
    while i + 4 <= m {
        rows_block::<FMA, 4>(i, k, n, a, b, c);
        i += 4;
    }
    while i < m {
        rows_block::<FMA, 1>(i, k, n, a, b, c);
        i += 1;
    }
}

/// Rows `i..i + R` of [`rows_times`].
#[inline(always)]
fn rows_block<const FMA: bool, const R: usize>(
    i: usize,
    k: usize,
    n: usize,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    c: &mut [f32],
) {
    const BLOCK: usize = 16;
    let madd = |x: f32, y: f32, acc: f32| if FMA { x.mul_add(y, acc) } else { acc + x * y };
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * lda..(i + r) * lda + k]);
    let out = &mut c[i * n..(i + R) * n];
    let mut j0 = 0;
    while j0 + BLOCK <= n {
        let mut acc = [[0.0f32; BLOCK]; R];
        for r in 0..R {
            acc[r].copy_from_slice(&out[r * n + j0..r * n + j0 + BLOCK]);
        }
        for kk in 0..k {
            let w = &b[kk * ldb + j0..kk * ldb + j0 + BLOCK];
            for r in 0..R {
                let x = rows[r][kk];
                for j in 0..BLOCK {
                    acc[r][j] = madd(x, w[j], acc[r][j]);
                }
            }
        }
        for r in 0..R {
            out[r * n + j0..r * n + j0 + BLOCK].copy_from_slice(&acc[r]);
        }
        j0 += BLOCK;
    }
    if j0 < n {
        for r in 0..R {
            for (kk, &x) in rows[r].iter().enumerate() {
                let w = &b[kk * ldb + j0..kk * ldb + n];
                for (o, &y) in out[r * n + j0..(r + 1) * n].iter_mut().zip(w) {
                    *o = madd(x, y, *o);
                }
            }
        }
    }
}

/// `x · y` in eight independent lanes, which the compiler keeps in one vector register.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            lanes[l] += xs[l] * ys[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn gemm(
    x: &Value,
    w: &Value,
    c: Option<&Value>,
    alpha: f32,
    beta: f32,
    ta: bool,
    tb: bool,
) -> Result<Value, String> {
    let (xs, xd) = floats(x)?;
    let (ws, wd) = floats(w)?;
    let (&[r0, c0], &[r1, c1]) = (xs, ws) else {
        return Err(format!("multiplies shapes {xs:?} and {ws:?}: both must be 2-D"));
    };
    let (m, k) = if ta { (c0, r0) } else { (r0, c0) };
    let (kb, n) = if tb { (c1, r1) } else { (r1, c1) };
    if k != kb {
        return Err(format!("multiplies {m}x{k} by {kb}x{n}"));
    }
    let a = if ta { (xd, 1, c0 as isize) } else { (xd, c0 as isize, 1) };
    let b = if tb { (wd, 1, c1 as isize) } else { (wd, c1 as isize, 1) };
    let mut out = vec![0.0f32; m * n];
    let mut beta_kernel = 0.0;
    if let Some(c) = c
        && beta != 0.0
    {
        let (cs, cd) = floats(c)?;
        if broadcast(&[m, n], cs).as_deref() != Some(&[m, n][..]) {
            return Err(format!("C of shape {cs:?} does not broadcast to {m}x{n}"));
        }
        add_into(&mut out, &[m, n], cd, cs);
        if beta != 1.0 {
            out.iter_mut().for_each(|v| *v *= beta);
        }
        beta_kernel = 1.0;
    }
    sgemm(m, k, n, alpha, a, b, beta_kernel, &mut out);
    Ok(Value::F32 { shape: vec![m, n], data: out })
}

/// ONNX MatMul: 2-D by 2-D, a stack of matrices by one matrix, or two stacks of equal batch.
fn matmul(a: &Value, b: &Value) -> Result<Value, String> {
    let (sa, da) = floats(a)?;
    let (sb, db) = floats(b)?;
    if sa.len() < 2 || sb.len() < 2 {
        return Err(format!("multiplies shapes {sa:?} and {sb:?}: both must be at least 2-D"));
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (kb, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != kb {
        return Err(format!("multiplies shapes {sa:?} and {sb:?}"));
    }
    let (batch_a, batch_b) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    if batch_b.is_empty() {
        // Rows of every matrix of the stack at once.
        let rows = da.len() / k.max(1);
        let mut out = vec![0.0f32; rows * n];
        sgemm(rows, k, n, 1.0, (da, k as isize, 1), (db, n as isize, 1), 0.0, &mut out);
        let mut shape = sa.to_vec();
        *shape.last_mut().unwrap() = n;
        return Ok(Value::F32 { shape, data: out });
    }
    if batch_a != batch_b {
        return Err(format!("multiplies stacks of shapes {sa:?} and {sb:?}"));
    }
    let batches: usize = batch_a.iter().product();
    let mut out = vec![0.0f32; batches * m * n];
    for i in 0..batches {
        sgemm(
            m,
            k,
            n,
            1.0,
            (&da[i * m * k..(i + 1) * m * k], k as isize, 1),
            (&db[i * k * n..(i + 1) * k * n], n as isize, 1),
            0.0,
            &mut out[i * m * n..(i + 1) * m * n],
        );
    }
    let mut shape = batch_a.to_vec();
    shape.extend([m, n]);
    Ok(Value::F32 { shape, data: out })
}

fn axis_of(axis: i64, rank: usize) -> Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64)
        .contains(&a)
        .then_some(a as usize)
        .ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
}

fn softmax(x: Value, axis: i64) -> Result<Value, String> {
    let Value::F32 { shape, mut data } = x else { return Err("expects a float tensor".into()) };
    let axis = axis_of(axis, shape.len())?;
    let (len, inner) = (shape[axis], shape[axis + 1..].iter().product::<usize>());
    for block in data.chunks_exact_mut((len * inner).max(1)) {
        for j in 0..inner {
            let at = |i: usize| i * inner + j;
            let top = (0..len).map(|i| block[at(i)]).fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for i in 0..len {
                block[at(i)] = (block[at(i)] - top).exp();
                total += block[at(i)];
            }
            for i in 0..len {
                block[at(i)] /= total;
            }
        }
    }
    Ok(Value::F32 { shape, data })
}

fn gather(data: &Value, indices: &Value, axis: i64) -> Result<Value, String> {
    let (ts, td) = floats(data)?;
    let Value::I64 { shape: is, data: id } = indices else { return Err("indices are not int64".into()) };
    if axis_of(axis, ts.len())? != 0 {
        return Err(format!("gathers along axis {axis}; only axis 0 is supported"));
    }
    let rows = ts[0];
    let width: usize = ts[1..].iter().product();
    let mut out = Vec::with_capacity(id.len() * width);
    for (k, &ix) in id.iter().enumerate() {
        let row = if ix < 0 { ix + rows as i64 } else { ix };
        if !(0..rows as i64).contains(&row) {
            return Err(format!("index {ix} (position {k}) is out of range for a table of {rows} rows"));
        }
        let row = row as usize;
        out.extend_from_slice(&td[row * width..(row + 1) * width]);
    }
    let mut shape = is.clone();
    shape.extend_from_slice(&ts[1..]);
    Ok(Value::F32 { shape, data: out })
}

fn reshape(x: Value, target: &[i64]) -> Result<Value, String> {
    let (old, total) = (x.shape().to_vec(), x.shape().iter().product::<usize>());
    let mut shape = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            0 => shape.push(*old.get(i).ok_or_else(|| format!("reshapes {old:?} to {target:?}"))?),
            -1 if infer.is_none() => {
                infer = Some(i);
                shape.push(1);
            }
            d if d > 0 => shape.push(d as usize),
            _ => return Err(format!("reshapes {old:?} to {target:?}")),
        }
    }
    let known: usize = shape.iter().product();
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(format!("reshapes {old:?} to {target:?}"));
        }
        shape[i] = total / known;
    } else if known != total {
        return Err(format!("reshapes {old:?} to {target:?}"));
    }
    Ok(match x {
        Value::F32 { data, .. } => Value::F32 { shape, data },
        Value::I64 { data, .. } => Value::I64 { shape, data },
    })
}

fn concat(parts: &[&Value], axis: i64) -> Result<Value, String> {
    let first = parts.first().ok_or("concatenates nothing")?.shape();
    let axis = axis_of(axis, first.len())?;
    let outer: usize = first[..axis].iter().product();
    let mut shape = first.to_vec();
    shape[axis] = 0;
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        let (s, d) = floats(part)?;
        if s.len() != first.len() || s.iter().enumerate().any(|(i, &n)| i != axis && n != first[i]) {
            return Err(format!("concatenates shapes {first:?} and {s:?} along axis {axis}"));
        }
        shape[axis] += s[axis];
        blocks.push((d, d.len() / outer.max(1)));
    }
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (d, block) in &blocks {
            data.extend_from_slice(&d[o * block..(o + 1) * block]);
        }
    }
    Ok(Value::F32 { shape, data })
}

fn expand(x: &Value, target: &[usize]) -> Result<Value, String> {
    let out = broadcast(x.shape(), target).ok_or_else(|| format!("expands {:?} to {target:?}", x.shape()))?;
    let total: usize = out.iter().product();
    Ok(match x {
        Value::F32 { shape, data } => {
            let mut o = vec![0.0f32; total];
            for_each_broadcast(&out, shape, &[], |k, oa, _| o[k] = data[oa]);
            Value::F32 { shape: out, data: o }
        }
        Value::I64 { shape, data } => {
            let mut o = vec![0i64; total];
            for_each_broadcast(&out, shape, &[], |k, oa, _| o[k] = data[oa]);
            Value::I64 { shape: out, data: o }
        }
    })
}

/// The `tract` engine's native half: a graph the interpreter runs and that agreed with tract.
pub struct NativeEngine {
    graph: NativeGraph,
}

impl Engine for NativeEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn interpreter(&self) -> &'static str {
        "native"
    }

    fn run(&self, inputs: Vec<Input>) -> Result<Vec<Output>, EngineError> {
        self.graph.run(inputs)
    }
}

/// The environment variable that turns the interpreter off (`RETORT_NATIVE=off`): every graph
/// then runs on tract, an operator's way back should the two ever disagree on a real graph.
pub const SWITCH: &str = "RETORT_NATIVE";

/// Whether the `tract` engine runs on the interpreter the graphs it can.
pub fn enabled() -> bool {
    !matches!(std::env::var(SWITCH).as_deref(), Ok("off" | "0" | "false"))
}

/// Rows of the probe runs: one candidate, and several (a batch tract pads).
const PROBE_ROWS: [usize; 2] = [1, 7];

/// The interpreter for `graph` (ONNX protobuf bytes) when it runs every node and gives
/// `tract`'s outputs on probe inputs (ids 0, dense values drawn from a fixed seed), within
/// `1e-5 · (1 + |value|)`; otherwise why not.
pub fn beside(tract: &dyn Engine, graph: &[u8], io: &GraphIo<'_>) -> Result<NativeEngine, String> {
    let model: ModelProto = prost::Message::decode(graph).map_err(|e| format!("not an ONNX model: {e}"))?;
    let native = NativeGraph::build(&model, io).map_err(|e| e.to_string())?;
    let mut rng = crate::rng::SplitMix64::new(0x6e61_7469_7665);
    for rows in PROBE_ROWS {
        let inputs: Vec<Input> = io
            .inputs
            .iter()
            .map(|layout| {
                let n = if layout.side == Side::Item || !io.context_once { rows } else { 1 };
                let data = match layout.dtype {
                    DType::I64 => TensorData::I64(vec![0; n * layout.width]),
                    DType::F32 => TensorData::F32(
                        (0..n * layout.width).map(|_| rng.uniform(-1.0, 1.0) as f32).collect(),
                    ),
                };
                Input { shape: [n, layout.width], data }
            })
            .collect();
        let want = tract.run(inputs.clone()).map_err(|e| format!("tract on the probe: {e}"))?;
        let got = native.run(inputs).map_err(|e| e.to_string())?;
        for ((name, w), g) in io.outputs.iter().zip(&want).zip(&got) {
            if w.shape != g.shape {
                return Err(format!("output `{name}` has shape {:?}, tract's {:?}", g.shape, w.shape));
            }
            if let Some((x, y)) =
                g.data.iter().zip(&w.data).find(|(x, y)| (*x - *y).abs() > 1e-5 * (1.0 + y.abs()))
            {
                return Err(format!("output `{name}` is {x} where tract gives {y} ({rows} rows)"));
            }
        }
    }
    Ok(NativeEngine { graph: native })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::encode::Encoder;
    use crate::engine::tract::TractEngine;
    use crate::manifest::ContextRows;
    use crate::rng::SplitMix64;
    use crate::scaffold::music_architecture;
    use crate::two_tower::{Layers, TwoTower};

    fn request(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = SplitMix64::new(seed);
        let genres = ["rock", "jazz", "pop", "folk", "metal"];
        let candidates: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let embedding: Vec<f64> = (0..8).map(|_| rng.uniform(-1.0, 1.0)).collect();
                serde_json::json!({"id": format!("c{i}"), "features": {
                    "track_id": format!("t{}", rng.below(100_000)),
                    "artist_id": format!("a{}", rng.below(500)),
                    "genre": genres[rng.below(5) as usize],
                    "duration_s": rng.uniform(60.0, 420.0),
                    "popularity": rng.next_f64(),
                    "track_embedding": embedding,
                }})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "context": {"user_id": format!("u{}", rng.below(1000)), "country": "SE", "hour": rng.below(24)},
            "candidates": candidates,
        }))
        .unwrap()
    }

    fn assert_close(got: &[Output], want: &[Output], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.shape, w.shape, "{what}");
            for (x, y) in g.data.iter().zip(&w.data) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}: {x} against {y}");
            }
        }
    }

    /// The architecture's graph on the interpreter, on tract and in the reference forward pass:
    /// the same values for every batch size, one context row or one per candidate.
    fn runs_as_tract_and_the_reference(arch: &TwoTower, seed: u64) {
        let w = arch.random_weights(seed);
        let graph = crate::onnx::to_bytes(&arch.to_onnx(&w, "m"));
        let outputs: Vec<String> = arch.heads.iter().filter(|h| h.serving).map(|h| h.name.clone()).collect();
        for rows in [ContextRows::Once, ContextRows::PerCandidate] {
            let encoder = Encoder::for_features(&arch.features, rows);
            let io = GraphIo {
                inputs: encoder.inputs(),
                context_once: rows == ContextRows::Once,
                candidates_independent: true,
                outputs: &outputs,
            };
            let tract = TractEngine::load(&graph, Path::new("m.onnx"), &io).unwrap();
            let native = beside(&tract, &graph, &io).unwrap_or_else(|e| panic!("{rows:?}: {e}"));
            for n in [1, 5, 50, 500] {
                let body = request(n, seed + n as u64);
                let req = crate::request::decode(&body).unwrap();
                let encoded = encoder.encode(&req.context, &req.candidates).unwrap();
                let got = native.run(encoded.tensors.clone()).unwrap();
                let what = format!("{rows:?}, {n} candidates");
                assert_close(&got, &tract.run(encoded.tensors.clone()).unwrap(), &what);
                if rows == ContextRows::Once {
                    let reference = arch.reference_forward(&w, encoder.inputs(), &encoded);
                    let serving = arch.heads.iter().zip(reference).filter(|(h, _)| h.serving);
                    let want: Vec<Output> =
                        serving.map(|(_, data)| Output { shape: vec![n, 1], data }).collect();
                    assert_close(&got, &want, &format!("{what}, reference"));
                }
            }
        }
    }

    #[test]
    fn the_shared_bottom_student_runs_as_on_tract() {
        runs_as_tract_and_the_reference(&music_architecture(), 1);
    }

    #[test]
    fn a_mixture_of_experts_with_task_towers_and_logits_runs_as_on_tract() {
        let mut arch = music_architecture();
        arch.experts = 3;
        arch.task_hidden = vec![16];
        arch.logit_outputs = true;
        arch.heads[1].serving = false;
        runs_as_tract_and_the_reference(&arch, 2);
        let layers = Layers { interaction_hidden: vec![24], ..Layers::default() };
        let narrow = TwoTower::new(arch.features.clone(), layers, arch.heads.clone(), false);
        runs_as_tract_and_the_reference(&narrow, 3);
    }

    #[test]
    fn the_shipped_model_runs_natively_whole_and_apart() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/music-ranker/1");
        let model = crate::Model::load(&dir, EngineKind::Tract).unwrap();
        assert_eq!(model.engine.interpreter(), "native");
        assert_eq!(model.tower().unwrap().ranker.interpreter(), "native");
        assert_eq!(model.interpreter(), "native");
        let ort = crate::Model::load(&dir, EngineKind::Ort);
        if let Ok(ort) = ort {
            assert_eq!(ort.engine.interpreter(), "ort");
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: format!("{output}_node"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn graph_of(nodes: Vec<NodeProto>, inputs: &[&str], output: &str) -> ModelProto {
        let value = |name: &str| tract_onnx::pb::ValueInfoProto { name: name.into(), ..Default::default() };
        ModelProto {
            graph: Some(tract_onnx::pb::GraphProto {
                node: nodes,
                input: inputs.iter().map(|n| value(n)).collect(),
                output: vec![value(output)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn layouts(names: &[&str]) -> Vec<crate::encode::InputLayout> {
        names
            .iter()
            .map(|n| crate::encode::InputLayout {
                name: n.to_string(),
                side: Side::Item,
                dtype: DType::F32,
                width: 2,
            })
            .collect()
    }

    fn floats_in(shape: [usize; 2], data: &[f32]) -> Input {
        Input { shape, data: TensorData::F32(data.to_vec()) }
    }

    #[test]
    fn an_operator_it_lacks_is_named_and_the_graph_stays_on_tract() {
        let model = graph_of(vec![node("Tanh", &["x"], "y")], &["x"], "y");
        let (inputs, outputs) = (layouts(&["x"]), vec!["y".to_string()]);
        let io =
            GraphIo { inputs: &inputs, context_once: true, candidates_independent: true, outputs: &outputs };
        let e = NativeGraph::build(&model, &io).err().unwrap().to_string();
        assert_eq!(e, "node `y_node`: operator Tanh is not one the native interpreter runs");
    }

    #[test]
    fn a_value_read_twice_by_its_last_reader_and_broadcasts_either_way() {
        // y = (x + x) + row, then row + y: the in-place path must not free x before its second
        // read, and a broadcast first operand must not be updated in place.
        let nodes =
            vec![node("Add", &["x", "x"], "d"), node("Add", &["d", "r"], "e"), node("Add", &["r", "e"], "y")];
        let model = graph_of(nodes, &["x", "r"], "y");
        let (inputs, outputs) = (layouts(&["x", "r"]), vec!["y".to_string()]);
        let io =
            GraphIo { inputs: &inputs, context_once: true, candidates_independent: true, outputs: &outputs };
        let graph = NativeGraph::build(&model, &io).unwrap();
        let x = floats_in([2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let r = floats_in([1, 2], &[10.0, 20.0]);
        let out = graph.run(vec![x, r]).unwrap();
        assert_eq!(out, vec![Output { shape: vec![2, 2], data: vec![22.0, 44.0, 26.0, 48.0] }]);
    }

    #[test]
    fn an_id_outside_the_table_is_an_error_naming_it() {
        let table = TensorProto {
            name: "t".into(),
            dims: vec![3, 2],
            data_type: DataType::Float as i32,
            float_data: vec![0.0; 6],
            ..Default::default()
        };
        let mut model = graph_of(vec![node("Gather", &["t", "ids"], "y")], &["ids"], "y");
        model.graph.as_mut().unwrap().initializer.push(table);
        let inputs = vec![crate::encode::InputLayout {
            name: "ids".into(),
            side: Side::Item,
            dtype: DType::I64,
            width: 1,
        }];
        let outputs = vec!["y".to_string()];
        let io =
            GraphIo { inputs: &inputs, context_once: true, candidates_independent: true, outputs: &outputs };
        let graph = NativeGraph::build(&model, &io).unwrap();
        let ids = Input { shape: [2, 1], data: TensorData::I64(vec![-1, 3]) };
        let e = graph.run(vec![ids]).unwrap_err().to_string();
        assert!(
            e.contains("node `y_node`: index 3 (position 1) is out of range for a table of 3 rows"),
            "{e}"
        );
    }
}
