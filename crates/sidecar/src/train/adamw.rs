//! AdamW with the update fused into one pass over each parameter, in place, and a lazy
//! (row-sparse) step for embedding tables.
//!
//! The dense update is candle-nn's `AdamW` (decoupled weight decay, bias-corrected moments),
//! but candle-nn spells it as nine tensor operations, each allocating and filling a tensor as
//! large as the parameter. Here each parameter is read and written once, and the moments live in
//! plain buffers that a checkpoint can save and restore.
//!
//! Embedding tables are most of a model's parameters, and a batch reads a few thousand of their
//! rows: a teacher's tables of 100k+ rows made a dense step (a zeroed gradient as large as the
//! table, then every row's moments read and written) most of its training time. Tables take
//! [`RowGrad`]s instead: only the rows a batch used are updated, as PyTorch's `SparseAdam` and
//! TensorFlow's `LazyAdam` do. Unlike those, each row keeps its own step count and its moments
//! are bias-corrected by it: a row's moments average the gradients of the steps that touched it,
//! so a row first seen at step 10,000 starts as a new parameter would (a step of about the
//! learning rate), not with the 3x-larger step a global count's vanished correction would give
//! it. A row touched by every step is updated exactly as dense AdamW would update it. Lazy
//! AdamW rather than row-wise Adagrad: the same optimiser, learning rate and weight decay as the
//! dense layers, so `[tune]`'s search and a warm start mean the same for both; its cost, two
//! moments per value, is memory the dense step already held.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Result, Tensor, Var};

/// AdamW hyperparameters (PyTorch's and candle-nn's defaults for the betas and epsilon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams { learning_rate: 1e-3, weight_decay: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// The first and second moments of one parameter, flattened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// For a table updated by rows: per row, how many steps have updated it. Empty while every
    /// step has updated every value (a dense parameter, or a table no row step has reached yet).
    pub row_steps: Vec<u32>,
}

/// The gradient of some rows of a table parameter (`[rows, width]`): `grad` is
/// `[rows.len(), width]`, its row `j` the gradient of table row `rows[j]`. Rows are distinct.
pub struct RowGrad<'a> {
    /// The parameter's place among the optimiser's variables.
    pub var: usize,
    pub rows: &'a [u32],
    pub grad: &'a Tensor,
}

/// The optimiser's whole state: what a warm start needs to continue exactly where a run ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    pub moments: Vec<Moments>,
}

pub struct AdamW {
    vars: Vec<Var>,
    moments: Vec<Mutex<Moments>>,
    params: AdamWParams,
    step: u64,
}

impl AdamW {
    /// An optimiser over `vars` with zeroed moments.
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> AdamW {
        let moments = vars
            .iter()
            .map(|v| {
                let n = v.elem_count();
                Mutex::new(Moments { m: vec![0.0; n], v: vec![0.0; n], row_steps: Vec::new() })
            })
            .collect();
        AdamW { vars, moments, params, step: 0 }
    }

    /// An optimiser resuming from `state`, which must come from the same variables' shapes.
    pub fn resume(vars: Vec<Var>, params: AdamWParams, state: OptimizerState) -> Result<AdamW> {
        if state.moments.len() != vars.len() {
            candle_core::bail!(
                "the optimiser state holds {} parameters, the model has {}",
                state.moments.len(),
                vars.len()
            );
        }
        for (k, (var, m)) in vars.iter().zip(&state.moments).enumerate() {
            if m.m.len() != var.elem_count() || m.v.len() != var.elem_count() {
                candle_core::bail!(
                    "optimiser state of parameter {k} has {} values, the parameter {}",
                    m.m.len(),
                    var.elem_count()
                );
            }
            let rows = var.dims().first().copied().unwrap_or(0);
            if !m.row_steps.is_empty() && m.row_steps.len() != rows {
                candle_core::bail!(
                    "optimiser state of parameter {k} counts steps of {} rows, the parameter has {rows}",
                    m.row_steps.len()
                );
            }
        }
        Ok(AdamW {
            vars,
            moments: state.moments.into_iter().map(Mutex::new).collect(),
            params,
            step: state.step,
        })
    }

    pub fn state(&self) -> OptimizerState {
        OptimizerState {
            step: self.step,
            moments: self.moments.iter().map(|m| m.lock().expect("not poisoned").clone()).collect(),
        }
    }

    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// One step of every variable `grads` holds a gradient for.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_rows(grads, &[])
    }

    /// One step: every variable `grads` holds a gradient for, and the rows of tables in `rows`
    /// (whose values were read through a copy, so `grads` holds none for the tables themselves).
    pub fn step_rows(&mut self, grads: &GradStore, rows: &[RowGrad<'_>]) -> Result<()> {
        self.step += 1;
        let update = Update::at(self.params, self.step);
        for (var, moments) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var) else { continue };
            let g = g.contiguous()?;
            var.as_tensor().inplace_op2(&g, &Step { update, moments })?;
        }
        for r in rows {
            let (Some(var), Some(moments)) = (self.vars.get(r.var), self.moments.get(r.var)) else {
                candle_core::bail!("AdamW: no parameter {} for a row gradient", r.var);
            };
            let (table_rows, width) = var.dims2()?;
            if r.grad.dims2()? != (r.rows.len(), width) {
                candle_core::bail!(
                    "AdamW: a gradient of shape {:?} for {} rows of a table {width} wide",
                    r.grad.dims(),
                    r.rows.len()
                );
            }
            if let Some(&bad) = r.rows.iter().find(|&&row| row as usize >= table_rows) {
                candle_core::bail!("AdamW: row {bad} of a table of {table_rows} rows");
            }
            {
                let mut m = moments.lock().expect("not poisoned");
                if m.row_steps.is_empty() {
                    // Until now every step updated every row.
                    m.row_steps = vec![(self.step - 1).min(u32::MAX as u64) as u32; table_rows];
                }
            }
            let g = r.grad.contiguous()?;
            var.as_tensor()
                .inplace_op2(&g, &RowStep { params: self.params, rows: r.rows, width, moments })?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Update {
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    scale_m: f32,
    scale_v: f32,
    eps: f32,
}

impl Update {
    /// The update of a value's `t`-th step.
    fn at(p: AdamWParams, t: u64) -> Update {
        let t = t.min(i32::MAX as u64) as i32;
        Update {
            lr: p.learning_rate as f32,
            decay: (1.0 - p.learning_rate * p.weight_decay) as f32,
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(t))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(t))) as f32,
            eps: p.eps as f32,
        }
    }

    #[inline]
    fn apply(&self, theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2) = (self.beta1, self.beta2);
        for (((w, &g), m), v) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            let step = (*m * self.scale_m) / ((*v * self.scale_v).sqrt() + self.eps);
            *w = *w * self.decay - step * self.lr;
        }
    }
}

/// The f32 values of a parameter and of its gradient, both contiguous.
fn parameter_and_gradient<'a>(
    s1: &'a mut CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<(&'a mut [f32], &'a [f32])> {
    let (CpuStorage::F32(theta), CpuStorage::F32(g)) = (s1, s2) else {
        candle_core::bail!("AdamW: parameters and gradients must be f32");
    };
    let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
        candle_core::bail!("AdamW: parameters and gradients must be contiguous");
    };
    Ok((&mut theta[t0..t1], &g[g0..g1]))
}

struct Step<'a> {
    update: Update,
    moments: &'a Mutex<Moments>,
}

impl candle_core::InplaceOp2 for Step<'_> {
    fn name(&self) -> &'static str {
        "retort-adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (theta, g) = parameter_and_gradient(s1, l1, s2, l2)?;
        let mut moments = self.moments.lock().expect("not poisoned");
        let Moments { m, v, .. } = &mut *moments;
        if theta.len() != g.len() || m.len() != theta.len() {
            candle_core::bail!("AdamW: parameter, gradient and moments differ in size");
        }
        self.update.apply(theta, g, m, v);
        Ok(())
    }
}

/// The lazy step of some rows of a table, each bias-corrected by its own step count.
struct RowStep<'a> {
    params: AdamWParams,
    rows: &'a [u32],
    width: usize,
    moments: &'a Mutex<Moments>,
}

impl candle_core::InplaceOp2 for RowStep<'_> {
    fn name(&self) -> &'static str {
        "retort-lazy-adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (theta, g) = parameter_and_gradient(s1, l1, s2, l2)?;
        let w = self.width;
        let mut moments = self.moments.lock().expect("not poisoned");
        let Moments { m, v, row_steps } = &mut *moments;
        if m.len() != theta.len() || g.len() != self.rows.len() * w || row_steps.len() * w != theta.len() {
            candle_core::bail!("AdamW: table, gradient rows and moments differ in size");
        }
        for (j, &row) in self.rows.iter().enumerate() {
            let r = row as usize;
            row_steps[r] = row_steps[r].saturating_add(1);
            let values = r * w..(r + 1) * w;
            Update::at(self.params, u64::from(row_steps[r])).apply(
                &mut theta[values.clone()],
                &g[j * w..(j + 1) * w],
                &mut m[values.clone()],
                &mut v[values],
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    /// The fused update is candle-nn's AdamW, to f32 rounding, step after step.
    #[test]
    fn matches_candle_nn_adamw() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..64).map(|i| ((i * 37 % 17) as f32 - 8.0) / 10.0).collect();
        let ours = Var::from_vec(init.clone(), (8, 8), &dev).unwrap();
        let theirs = Var::from_vec(init, (8, 8), &dev).unwrap();
        let params = AdamWParams { learning_rate: 0.01, weight_decay: 0.1, ..AdamWParams::default() };
        let mut a = AdamW::new(vec![ours.clone()], params);
        let mut b = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW { lr: 0.01, weight_decay: 0.1, ..Default::default() },
        )
        .unwrap();
        let target =
            Tensor::arange(0f32, 64., &dev).unwrap().reshape((8, 8)).unwrap().affine(0.01, 0.).unwrap();
        for _ in 0..20 {
            let loss = |w: &Var| (w.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
            a.backward_step(&loss(&ours)).unwrap();
            b.backward_step(&loss(&theirs)).unwrap();
        }
        let x: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
        assert_eq!(a.state().step, 20);
    }

    /// One lazy step over `rows` of `table` for the loss `sum((rows - target)^2)`, the rows read
    /// through a copy as the student reads them.
    fn row_step(opt: &mut AdamW, table: &Var, rows: &[u32], target: &Tensor) {
        let index = Tensor::from_slice(rows, rows.len(), &Device::Cpu).unwrap();
        let copy = Var::from_tensor(&table.as_tensor().detach().index_select(&index, 0).unwrap()).unwrap();
        let loss = (copy.as_tensor() - target).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads.get(&copy).unwrap();
        opt.step_rows(&grads, &[RowGrad { var: 0, rows, grad }]).unwrap();
    }

    fn values(v: &Var) -> Vec<f32> {
        v.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max)
    }

    /// A table whose every row takes every step is updated exactly as dense AdamW updates it.
    #[test]
    fn rows_of_every_step_are_dense_adamw() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) / 4.0).collect();
        let dense = Var::from_vec(init.clone(), (4, 3), &dev).unwrap();
        let table = Var::from_vec(init, (4, 3), &dev).unwrap();
        let params = AdamWParams { learning_rate: 0.02, weight_decay: 0.1, ..AdamWParams::default() };
        let (mut a, mut b) =
            (AdamW::new(vec![dense.clone()], params), AdamW::new(vec![table.clone()], params));
        let target =
            Tensor::arange(0f32, 12., &dev).unwrap().reshape((4, 3)).unwrap().affine(0.1, -0.5).unwrap();
        for _ in 0..15 {
            a.backward_step(&(dense.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap())
                .unwrap();
            row_step(&mut b, &table, &[0, 1, 2, 3], &target);
        }
        let worst = largest_difference(&values(&dense), &values(&table));
        assert!(worst < 1e-6, "largest difference {worst}");
        assert_eq!(b.state().moments[0].row_steps, vec![15; 4]);
    }

    /// A row no batch used keeps its value and moments; first used at step 6, it takes the step
    /// a new parameter would take, not one scaled by the global count's vanished bias correction.
    #[test]
    fn an_unused_row_stays_and_starts_fresh_when_first_used() {
        let dev = Device::Cpu;
        let table = Var::from_vec(vec![0.5f32, -0.5, 1.0, 2.0, 0.25, -0.75], (3, 2), &dev).unwrap();
        let params = AdamWParams { learning_rate: 0.05, weight_decay: 0.2, ..AdamWParams::default() };
        let mut opt = AdamW::new(vec![table.clone()], params);
        let target = Tensor::zeros((2, 2), candle_core::DType::F32, &dev).unwrap();
        for _ in 0..5 {
            row_step(&mut opt, &table, &[0, 1], &target);
        }
        assert_eq!(&values(&table)[4..], &[0.25, -0.75]);
        let state = opt.state();
        assert_eq!(state.moments[0].row_steps, vec![5, 5, 0]);
        assert_eq!(
            (&state.moments[0].m[4..], &state.moments[0].v[4..]),
            (&[0.0f32, 0.0][..], &[0.0f32, 0.0][..])
        );

        let row = Var::from_vec(vec![0.25f32, -0.75], (1, 2), &dev).unwrap();
        let mut fresh = AdamW::new(vec![row.clone()], params);
        let one = Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap();
        fresh.backward_step(&(row.as_tensor() - &one).unwrap().sqr().unwrap().sum_all().unwrap()).unwrap();
        row_step(&mut opt, &table, &[2], &one);
        let worst = largest_difference(&values(&table)[4..], &values(&row));
        assert!(worst < 1e-7, "largest difference {worst}");
        // Adam's first step moves each value by about the learning rate (here 0.05, plus decay).
        let moved = 0.25 - values(&table)[4];
        assert!((moved - (0.05 + 0.25 * 0.05 * 0.2)).abs() < 1e-4, "moved {moved}");
        assert_eq!(opt.state().moments[0].row_steps, vec![5, 5, 1]);
    }

    /// Resuming a state of dense steps, every row counts those steps as its own.
    #[test]
    fn a_dense_history_counts_for_every_row() {
        let dev = Device::Cpu;
        let table = Var::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        let moments = vec![Moments { m: vec![0.0; 6], v: vec![0.0; 6], row_steps: Vec::new() }];
        let mut opt =
            AdamW::resume(vec![table.clone()], AdamWParams::default(), OptimizerState { step: 7, moments })
                .unwrap();
        let target = Tensor::ones((1, 2), candle_core::DType::F32, &dev).unwrap();
        row_step(&mut opt, &table, &[1], &target);
        assert_eq!(opt.state().step, 8);
        assert_eq!(opt.state().moments[0].row_steps, vec![7, 8, 7]);
    }

    #[test]
    fn a_row_gradient_must_fit_its_table() {
        let dev = Device::Cpu;
        let table = Var::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        let mut opt = AdamW::new(vec![table], AdamWParams::default());
        let grads = Tensor::zeros(1, candle_core::DType::F32, &dev).unwrap().backward().unwrap();
        let grad = Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap();
        let err = opt.step_rows(&grads, &[RowGrad { var: 0, rows: &[3], grad: &grad }]).unwrap_err();
        assert!(err.to_string().contains("row 3 of a table of 3 rows"), "{err}");
        let wide = Tensor::zeros((1, 3), candle_core::DType::F32, &dev).unwrap();
        let err = opt.step_rows(&grads, &[RowGrad { var: 0, rows: &[0], grad: &wide }]).unwrap_err();
        assert!(err.to_string().contains("table 2 wide"), "{err}");
    }

    #[test]
    fn resume_refuses_a_state_of_another_shape() {
        let dev = Device::Cpu;
        let w = Var::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let state = OptimizerState {
            step: 3,
            moments: vec![Moments { m: vec![0.0; 5], v: vec![0.0; 5], row_steps: Vec::new() }],
        };
        let err = AdamW::resume(vec![w], AdamWParams::default(), state).err().unwrap();
        assert!(err.to_string().contains("parameter 0 has 5 values"), "{err}");
    }
}
