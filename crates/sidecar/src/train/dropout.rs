//! Dropout whose masks come from the run's seed, so a run stays reproducible: each row's mask in
//! each layer is drawn from its own stream (seed, step, layer, row in the batch), so splitting a
//! batch over threads draws the same masks, and a continued run the same as an uninterrupted one.

use candle_core::{Result, Tensor};

use retort_model::rng::SplitMix64;

/// One step's dropout over rows `first_row..` of its batch.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// Probability of zeroing each value.
    pub p: f64,
    pub seed: u64,
    pub step: u64,
    pub first_row: usize,
}

impl Dropout {
    /// `x` (`[rows, width]`) with each value zeroed with probability `p` and the rest scaled by
    /// `1 / (1 - p)`, so a layer's expected output is what it is without dropout (at export).
    pub fn apply(&self, x: &Tensor, layer: usize) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let (rows, width) = x.dims2()?;
        let kept = (1.0 / (1.0 - self.p)) as f32;
        let mut mask = Vec::with_capacity(rows * width);
        for r in 0..rows {
            let mut rng = SplitMix64::new(
                self.seed
                    ^ 0xd20f_0a7e
                    ^ self.step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ (layer as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
                    ^ ((self.first_row + r) as u64).wrapping_mul(0x1656_67b1_9e37_79f9),
            );
            mask.extend((0..width).map(|_| if rng.next_f64() < self.p { 0.0 } else { kept }));
        }
        x * Tensor::from_vec(mask, (rows, width), x.device())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn zeroes_about_p_scales_the_rest_and_draws_per_row_layer_and_step() {
        let x = Tensor::ones((64, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let d = Dropout { p: 0.25, seed: 7, step: 3, first_row: 0 };
        let y = values(&d.apply(&x, 0).unwrap());
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert!((zeros - 0.25).abs() < 0.05, "{zeros}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert_eq!(y, values(&d.apply(&x, 0).unwrap()), "the same step draws the same masks");
        assert_ne!(y, values(&d.apply(&x, 1).unwrap()), "another layer, other masks");
        assert_ne!(y, values(&Dropout { step: 4, ..d }.apply(&x, 0).unwrap()), "another step, other masks");
        // Rows 10.. of the batch, as a second thread's slice would draw them.
        let tail = x.narrow(0, 10, 54).unwrap();
        assert_eq!(values(&Dropout { first_row: 10, ..d }.apply(&tail, 0).unwrap()), y[10 * 32..].to_vec());
        assert_eq!(values(&Dropout { p: 0.0, ..d }.apply(&x, 0).unwrap()), values(&x));
    }
}
