//! A dense layer, `relu(x Wᵀ + b)`, as one operation forward and one backward.
//!
//! Spelt in candle's tensor operations, a layer is a matrix product, a broadcast bias add and a
//! ReLU forward, and backward a dozen more (the ReLU's mask alone is a zeroed tensor, a
//! comparison, a cast and a product), each allocating and filling a tensor of the layer's
//! output size. For a teacher's 512-wide layers over 1024 rows those passes cost as much as the
//! products (perf). Here the product writes onto the bias, the ReLU is applied in place, and
//! backward masks the gradient once and runs the two products and a column sum.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// `relu(x Wᵀ + b)` (or without the ReLU, or the bias): `x` `[rows, inputs]`, `w`
/// `[outputs, inputs]`, `b` `[outputs]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let op = Linear { relu };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

#[derive(Clone, Copy)]
struct Linear {
    relu: bool,
}

/// The contiguous f32 values of a CPU tensor.
fn values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("linear: {what} must be f32") };
    let Some((from, to)) = l.contiguous_offsets() else {
        candle_core::bail!("linear: {what} must be contiguous")
    };
    Ok(&v[from..to])
}

/// `f` over the contiguous f32 values of `t`.
fn with_values<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else { candle_core::bail!("linear: {what} must be on the CPU") };
    f(values(s, layout, what)?)
}

/// `dst = dst_scale · dst + lhs · rhs` for row-major `dst` `[m, n]`; `lhs` `[m, k]` and `rhs`
/// `[k, n]` given by their row and column strides.
#[allow(clippy::too_many_arguments)]
fn product(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    read_dst: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() == m * n, "linear: the product's output has the wrong size. This is a bug.");
    assert!(m == 0 || k == 0 || (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len(), "linear: lhs out of bounds");
    assert!(k == 0 || n == 0 || (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(), "linear: rhs out of bounds");
    // SAFETY: the asserts above keep every index gemm reads and writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            // One thread: `train::step` splits a batch over threads by rows instead.
            gemm::Parallelism::None,
        )
    }
}

impl Linear {
    fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        x_shape: &Shape,
        w_shape: &Shape,
    ) -> Result<(Vec<f32>, Shape)> {
        let (rows, inputs) = x_shape.dims2()?;
        let (outputs, w_inputs) = w_shape.dims2()?;
        if inputs != w_inputs || b.is_some_and(|b| b.len() != outputs) {
            candle_core::bail!("linear: input {x_shape:?}, weight {w_shape:?} and bias do not fit");
        }
        let mut y = match b {
            Some(b) => b.repeat(rows),
            None => vec![0.0; rows * outputs],
        };
        product(&mut y, (rows, outputs, inputs), b.is_some(), x, (inputs, 1), w, (1, inputs));
        if self.relu {
            for v in &mut y {
                *v = v.max(0.0);
            }
        }
        Ok((y, Shape::from((rows, outputs))))
    }

    /// The gradients of `x`, `w` and the bias from the output's.
    fn backward(&self, x: &Tensor, w: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (rows, inputs) = x.dims2()?;
        let (outputs, _) = w.dims2()?;
        let g: Vec<f32> = with_values(dy, "the output's gradient", |dy| {
            if !self.relu {
                return Ok(dy.to_vec());
            }
            with_values(y, "the output", |y| {
                Ok(dy.iter().zip(y).map(|(&g, &y)| if y > 0.0 { g } else { 0.0 }).collect())
            })
        })?;
        let mut dx = vec![0.0; rows * inputs];
        with_values(w, "the weight", |w| {
            product(&mut dx, (rows, inputs, outputs), false, &g, (outputs, 1), w, (inputs, 1));
            Ok(())
        })?;
        let mut dw = vec![0.0; outputs * inputs];
        with_values(x, "the input", |x| {
            // gᵀ x: g read down its columns.
            product(&mut dw, (outputs, inputs, rows), false, &g, (1, outputs), x, (inputs, 1));
            Ok(())
        })?;
        let mut db = vec![0.0f32; outputs];
        for row in g.chunks_exact(outputs.max(1)) {
            for (acc, v) in db.iter_mut().zip(row) {
                *acc += v;
            }
        }
        let dev = x.device();
        Ok((
            Tensor::from_vec(dx, (rows, inputs), dev)?,
            Tensor::from_vec(dw, (outputs, inputs), dev)?,
            Tensor::from_vec(db, outputs, dev)?,
        ))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "retort-linear"
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) =
            (values(s1, l1, "the input")?, values(s2, l2, "the weight")?, values(s3, l3, "the bias")?);
        let (y, shape) = self.forward(x, w, Some(b), l1.shape(), l2.shape())?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, y, dy)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "retort-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (values(s1, l1, "the input")?, values(s2, l2, "the weight")?);
        let (y, shape) = self.forward(x, w, None, l1.shape(), l2.shape())?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, y, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::backprop::GradStore;
    use candle_core::{Device, Var};

    fn grads_of(grads: &GradStore, of: &[&Var]) -> Vec<Vec<f32>> {
        of.iter().map(|v| grads.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    fn var(n: usize, shape: (usize, usize), seed: usize) -> Var {
        let v: Vec<f32> = (0..n).map(|i| (((i * 31 + seed * 17) % 23) as f32 - 11.0) / 9.0).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The fused layer's output and gradients are those of candle's own operations.
    #[test]
    fn equals_candles_operations_forward_and_backward() {
        let dev = Device::Cpu;
        for (relu, bias) in [(true, true), (false, true), (true, false), (false, false)] {
            let x = var(7 * 5, (7, 5), 1);
            let w = var(3 * 5, (3, 5), 2);
            let b = Var::from_vec(vec![0.3f32, -0.2, 0.05], 3, &dev).unwrap();
            let target =
                Tensor::arange(0f32, 21., &dev).unwrap().reshape((7, 3)).unwrap().affine(0.1, -1.0).unwrap();
            let loss = |y: Tensor| (y - &target).unwrap().sqr().unwrap().sum_all().unwrap();

            let ours = linear(&x, &w, bias.then_some(b.as_tensor()), relu).unwrap();
            let mut theirs = x.matmul(&w.t().unwrap()).unwrap();
            if bias {
                theirs = theirs.broadcast_add(&b).unwrap();
            }
            if relu {
                theirs = theirs.relu().unwrap();
            }
            let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
            let e: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            let worst = a.iter().zip(&e).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "forward, relu {relu}, bias {bias}: {worst}");

            let vars: Vec<&Var> = if bias { vec![&x, &w, &b] } else { vec![&x, &w] };
            let g_ours = grads_of(&loss(ours).backward().unwrap(), &vars);
            let g_theirs = grads_of(&loss(theirs).backward().unwrap(), &vars);
            for (k, (p, q)) in g_ours.iter().zip(&g_theirs).enumerate() {
                let worst = p.iter().zip(q).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "gradient {k}, relu {relu}, bias {bias}: {worst}");
            }
        }
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let x = var(6, (2, 3), 1);
        let w = var(8, (2, 4), 2);
        let err = linear(&x, &w, None, true).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
