//! Plain-op versions of the fused kernels the forward pass uses, for passes that need gradients.
//!
//! candle_nn's `rms_norm`, `softmax_last_dim` and `rotary_emb::rope` are custom ops applied with
//! `apply_op*_no_bwd`: no gradient flows through them (the backward pass silently stops there),
//! and candle's own `gelu` backward uses six-digit constants. The functions here compute the same
//! math from ops whose candle backward is exact (mul, div, exp, sum, sqrt, tanh, erf, narrow,
//! cat), in f32 (f64 for an f64 model), so candle's autograd gives the true gradient.

use candle_core::{DType, Result, Tensor, D};

/// The dtype the reductions run in: f32 as transformers computes them, or f64 when the whole
/// model runs in f64 (the finite-difference checks).
pub fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// `x / sqrt(mean(x^2) + eps) * scale` over the last dimension, the input cast to f32 (or kept
/// in f64) and the result cast back to the input dtype.
pub fn rms_norm(xs: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let inner = compute_dtype(dtype);
    let x = xs.to_dtype(inner)?;
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    x.broadcast_div(&rms)?
        .broadcast_mul(&scale.to_dtype(inner)?)?
        .to_dtype(dtype)
}

/// Softmax over the last dimension: `exp(x - max) / sum(exp(x - max))`. The max is a constant
/// for the gradient (softmax does not depend on it); `-inf` entries get probability and gradient 0.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// Rotary embedding on `[b, heads, t, head_dim]` with tables `[t, head_dim / 2]`, the
/// non-interleaved layout of Gemma (`x * cos + rotate_half(x) * sin`), as candle_nn's `rope`.
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.to_dtype(xs.dtype())?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.to_dtype(xs.dtype())?;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (`gelu_pytorch_tanh`).
pub fn gelu_tanh(xs: &Tensor) -> Result<Tensor> {
    let sqrt_two_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let cube = (xs.sqr()? * xs)?;
    let inner = ((xs + (cube * 0.044715)?)? * sqrt_two_over_pi)?;
    ((inner.tanh()? + 1.0)? * xs)? * 0.5
}

/// `0.5 x (1 + erf(x / sqrt(2)))` (exact `gelu`).
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    let erf = (xs * std::f64::consts::FRAC_1_SQRT_2)?.erf()?;
    ((erf + 1.0)? * xs)? * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        // A fixed pseudo-random fill: tests must not depend on candle's RNG.
        let n: usize = shape.iter().product();
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f64> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn forwards_match_the_fused_kernels() {
        let x = tensor(&[2, 3, 5, 8], 1).to_dtype(DType::F32).unwrap();
        let cos = tensor(&[5, 4], 2).to_dtype(DType::F32).unwrap();
        let sin = tensor(&[5, 4], 3).to_dtype(DType::F32).unwrap();
        let scale = tensor(&[8], 4).to_dtype(DType::F32).unwrap();
        let f64_of = |t: Tensor| t.to_dtype(DType::F64).unwrap();
        let pairs = [
            (
                rope(&x, &cos, &sin).unwrap(),
                candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap(),
            ),
            (
                softmax_last_dim(&x).unwrap(),
                candle_nn::ops::softmax_last_dim(&x).unwrap(),
            ),
            (
                rms_norm(&x, &scale, 1e-6).unwrap(),
                candle_nn::ops::rms_norm(&x, &scale, 1e-6).unwrap(),
            ),
            (gelu_tanh(&x).unwrap(), x.gelu().unwrap()),
            (gelu_erf(&x).unwrap(), x.gelu_erf().unwrap()),
        ];
        for (i, (ours, fused)) in pairs.into_iter().enumerate() {
            let err = max_rel(&f64_of(ours), &f64_of(fused));
            assert!(err < 1e-6, "op {i}: {err:e}");
        }
    }

    /// Every op's gradient against central differences in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let x = tensor(&[1, 2, 3, 6], 7);
        let cos = tensor(&[3, 3], 8);
        let sin = tensor(&[3, 3], 9);
        let scale = tensor(&[6], 10);
        let weights = tensor(&[1, 2, 3, 6], 11);
        type Op<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
        let ops: Vec<(&str, Op)> = vec![
            ("rope", Box::new(|t| rope(t, &cos, &sin))),
            ("softmax", Box::new(softmax_last_dim)),
            ("rms_norm", Box::new(|t| rms_norm(t, &scale, 1e-6))),
            ("gelu_tanh", Box::new(gelu_tanh)),
            ("gelu_erf", Box::new(gelu_erf)),
        ];
        for (name, op) in ops {
            let objective = |t: &Tensor| (op(t)? * &weights)?.sum_all();
            let var = Var::from_tensor(&x).unwrap();
            let grads = objective(var.as_tensor()).unwrap().backward().unwrap();
            let grad = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let flat = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let h = 1e-6;
            for i in 0..flat.len() {
                let at = |delta: f64| {
                    let mut v = flat.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap();
                    objective(&t).unwrap().to_scalar::<f64>().unwrap()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (numeric - grad[i]).abs() <= 1e-7 * numeric.abs().max(1.0),
                    "{name} [{i}]: autograd {} vs finite difference {numeric}",
                    grad[i]
                );
            }
        }
    }
}
