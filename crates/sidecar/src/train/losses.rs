//! Training losses, on candle tensors. All return the mean over the batch.

use candle_core::{Result, Tensor};

/// Binary cross-entropy on logits `z` against targets `t` in [0, 1], in the stable form
/// `max(z, 0) - z·t + log(1 + e^{-|z|})`: candle's own computes `log(sigmoid(z))`, which reaches
/// `log(0)` for confident logits.
pub fn bce_with_logits(z: &Tensor, t: &Tensor) -> Result<Tensor> {
    let softplus_neg_abs = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (z.relu()? - (z * t)?)?.add(&softplus_neg_abs)?.mean_all()
}

/// Mean squared error.
pub fn mse(y: &Tensor, t: &Tensor) -> Result<Tensor> {
    (y - t)?.sqr()?.mean_all()
}

/// Distillation on tempered probabilities: BCE of the student's `z/T` against
/// `sigmoid(teacher/T)`, scaled by `T²` so its gradients keep their size as `T` grows (Hinton).
pub fn tempered_bce(z: &Tensor, teacher_logit: &Tensor, temperature: f64) -> Result<Tensor> {
    let soft = candle_nn::ops::sigmoid(&(teacher_logit / temperature)?)?;
    bce_with_logits(&(z / temperature)?, &soft)? * (temperature * temperature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn scalar(x: Tensor) -> f32 {
        x.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn bce_matches_hand_computed_values_and_survives_huge_logits() {
        // -[t ln σ(z) + (1-t) ln(1-σ(z))] for (z, t) = (0, 1), (2, 0), (-3, 1):
        // ln 2 = 0.693147, ln(1+e²) = 2.126928, ln(1+e³) = 3.048587; mean 1.956221.
        let got = scalar(bce_with_logits(&t(&[0.0, 2.0, -3.0]), &t(&[1.0, 0.0, 1.0])).unwrap());
        assert!((got - 1.956221).abs() < 1e-5, "{got}");
        // Soft targets: z = 1, t = 0.25 → ln(1+e) - 0.25 = 1.063262.
        let got = scalar(bce_with_logits(&t(&[1.0]), &t(&[0.25])).unwrap());
        assert!((got - 1.063262).abs() < 1e-5, "{got}");
        // Confident and right costs ~0; confident and wrong costs |z|; never inf or NaN.
        let got = scalar(bce_with_logits(&t(&[100.0, -100.0]), &t(&[1.0, 1.0])).unwrap());
        assert!((got - 50.0).abs() < 1e-3, "{got}");
    }

    #[test]
    fn mse_and_tempered_bce_match_hand_computed_values() {
        assert!((scalar(mse(&t(&[1.0, 3.0]), &t(&[0.0, 1.0])).unwrap()) - 2.5).abs() < 1e-6);
        // T = 2, z = 2, teacher 0: target σ(0) = 0.5, BCE(1, 0.5) = ln(1+e) - 0.5 = 0.813262, x4.
        let got = scalar(tempered_bce(&t(&[2.0]), &t(&[0.0]), 2.0).unwrap());
        assert!((got - 3.253049).abs() < 1e-5, "{got}");
        // At T = 1 it is plain BCE against the teacher's probability.
        let plain = scalar(bce_with_logits(&t(&[0.5]), &t(&[1.0 / (1.0 + (-1.5f32).exp())])).unwrap());
        assert!((scalar(tempered_bce(&t(&[0.5]), &t(&[1.5]), 1.0).unwrap()) - plain).abs() < 1e-6);
    }
}
