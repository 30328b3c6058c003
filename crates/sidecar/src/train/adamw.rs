//! AdamW with the update fused into one pass over each parameter, in place.
//!
//! The update is candle-nn's `AdamW` (decoupled weight decay, bias-corrected moments), but
//! candle-nn spells it as nine tensor operations, each allocating and filling a tensor as large as
//! the parameter. The student's embedding tables are most of its parameters and every step
//! updates all of their rows (embedding gradients are dense, as in PyTorch), so those passes
//! were the largest share of a training step. Here each parameter is read and written once,
//! and the moments live in plain buffers that a checkpoint can save and restore.

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
                Mutex::new(Moments { m: vec![0.0; n], v: vec![0.0; n] })
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

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step.min(i32::MAX as u64) as i32;
        let update = Update {
            lr: p.learning_rate as f32,
            decay: (1.0 - p.learning_rate * p.weight_decay) as f32,
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(t))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(t))) as f32,
            eps: p.eps as f32,
        };
        for (var, moments) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var) else { continue };
            let g = g.contiguous()?;
            var.as_tensor().inplace_op2(&g, &Step { update, moments })?;
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

struct Step<'a> {
    update: Update,
    moments: &'a Mutex<Moments>,
}

impl candle_core::InplaceOp2 for Step<'_> {
    fn name(&self) -> &'static str {
        "retort-adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("AdamW: parameters and gradients must be f32");
        };
        let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("AdamW: parameters and gradients must be contiguous");
        };
        let mut moments = self.moments.lock().expect("not poisoned");
        let Moments { m, v } = &mut *moments;
        if t1 - t0 != g1 - g0 || m.len() != t1 - t0 {
            candle_core::bail!("AdamW: parameter, gradient and moments differ in size");
        }
        self.update.apply(&mut theta[t0..t1], &g[g0..g1], m, v);
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

    #[test]
    fn resume_refuses_a_state_of_another_shape() {
        let dev = Device::Cpu;
        let w = Var::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let state = OptimizerState { step: 3, moments: vec![Moments { m: vec![0.0; 5], v: vec![0.0; 5] }] };
        let err = AdamW::resume(vec![w], AdamWParams::default(), state).err().unwrap();
        assert!(err.to_string().contains("parameter 0 has 5 values"), "{err}");
    }
}
