//! Matrix products whose weight is read in place from the mapped checkpoint ([`MappedMatrix`]):
//! the CPU f32 path of every linear layer, with a backward pass so that gradients flow through.
//!
//! Why: copying a block's 311 MB out of the page cache before computing with it cost about a
//! quarter of `features --layer 20` (2B shape, warm): a serial copy on one core while the other
//! waited. gemm packs its right-hand side anyway, so reading the weight from the map costs
//! nothing extra, and the copy is gone. The kernel and its arguments are those candle's own CPU
//! matmul passes for `x.matmul(&w.t())`, so results are bit-identical to the copied path.

use super::weights::MappedMatrix;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// `x @ W^T` (`x [rows, cols]`, the forward pass of a linear layer with `W [out, in]`), or, for
/// the backward pass, `dy @ W` (`dy [rows, out]`).
#[derive(Clone)]
pub struct MappedProduct {
    matrix: Arc<MappedMatrix>,
    transposed: bool,
}

impl MappedProduct {
    /// `xs [rows, in] @ W^T -> [rows, out]`, differentiable with respect to `xs`.
    pub fn linear(xs: &Tensor, matrix: &Arc<MappedMatrix>) -> Result<Tensor> {
        xs.apply_op1(Self {
            matrix: matrix.clone(),
            transposed: true,
        })
    }
}

impl CustomOp1 for MappedProduct {
    fn name(&self) -> &'static str {
        "mapped-product"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("a weight read in place from the checkpoint needs an f32 input");
        };
        let (rows, inner) = layout.shape().dims2()?;
        let Some((from, to)) = layout.contiguous_offsets() else {
            candle_core::bail!("the input of an in-place product must be contiguous");
        };
        let lhs = &values[from..to];
        let w = self.matrix.values();
        let (out_rows, in_cols) = (self.matrix.rows(), self.matrix.cols());
        // The right-hand side, `k x n`, as strides into W's row-major `[out, in]` values.
        let (k, n, rhs_row_stride, rhs_col_stride) = if self.transposed {
            (in_cols, out_rows, 1, in_cols) // W^T: element (i, o) is w[o * in + i]
        } else {
            (out_rows, in_cols, in_cols, 1) // W: element (o, i) is w[o * in + i]
        };
        if inner != k {
            candle_core::bail!("in-place product: input has {inner} columns, the weight {k} rows");
        }
        let dst = product(lhs, rows, k, w, (rhs_row_stride, rhs_col_stride), n);
        Ok((CpuStorage::F32(dst), Shape::from((rows, n))))
    }

    /// `d(x W^T)/dx` applied to `dy` is `dy W`, and the reverse for the transposed product.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?.apply_op1(Self {
            matrix: self.matrix.clone(),
            transposed: !self.transposed,
        })?;
        Ok(Some(grad))
    }
}

/// `lhs @ rhs` as a row-major `[rows, n]` vector, for a row-major `lhs [rows, k]` and a `rhs
/// [k, n]` given by `(row, column)` strides into `rhs_values`, on every thread.
///
/// Each thread computes its own slice of the output columns with gemm's serial kernel, reading
/// only its own part of `rhs`: 1.6x gemm's own threading for a single row (a generated token: 33
/// against 18-21 GB/s out of the page cache, two cores), about 1.15x at 64 rows, equal at 512
/// (the 2B shape's blocks 0..=20, warm).
pub fn product(
    lhs: &[f32],
    rows: usize,
    k: usize,
    rhs_values: &[f32],
    (rhs_row_stride, rhs_col_stride): (usize, usize),
    n: usize,
) -> Vec<f32> {
    assert!(lhs.len() >= rows * k, "lhs holds {rows} x {k} values");
    if k > 0 && n > 0 {
        let last = (k - 1) * rhs_row_stride + (n - 1) * rhs_col_stride;
        assert!(
            last < rhs_values.len(),
            "rhs strides stay inside its values"
        );
    }
    let mut dst = vec![0f32; rows * n];
    if rows > 0 && n > 0 {
        let product = Product {
            rows,
            k,
            lhs: lhs.as_ptr() as usize,
            rhs: rhs_values.as_ptr() as usize,
            rhs_row_stride,
            rhs_col_stride,
            dst: dst.as_mut_ptr() as usize,
            dst_row_stride: n,
        };
        let threads = candle_core::utils::get_num_threads().clamp(1, n.div_ceil(16));
        let chunk = n.div_ceil(threads).next_multiple_of(16).min(n);
        rayon::scope(|scope| {
            for first in (0..n).step_by(chunk) {
                scope.spawn(move |_| product.columns(first, chunk.min(n - first)));
            }
        });
    }
    dst
}

/// One `dst = lhs @ rhs` with row-major `lhs [rows, k]` and `dst [rows, n]` and a strided `rhs`,
/// addresses kept as integers so that threads can share them.
#[derive(Clone, Copy)]
struct Product {
    rows: usize,
    k: usize,
    lhs: usize,
    rhs: usize,
    rhs_row_stride: usize,
    rhs_col_stride: usize,
    dst: usize,
    dst_row_stride: usize,
}

impl Product {
    /// Output columns `first..first + count`, on this thread.
    fn columns(self, first: usize, count: usize) {
        // Safety: `lhs` holds `rows x k` values, `rhs` addresses `k` rows of at least
        // `first + count` columns through its strides (asserted in `product`),
        // `dst` holds `rows x dst_row_stride` values; each call writes only its own columns
        // `first..first + count` of `dst`, so calls on other threads never touch the same value.
        // gemm computes dst = 0 * dst + 1 * lhs @ rhs without reading dst (read_dst = false).
        unsafe {
            gemm::gemm(
                self.rows,
                count,
                self.k,
                (self.dst as *mut f32).add(first),
                1,
                self.dst_row_stride as isize,
                false,
                self.lhs as *const f32,
                1,
                self.k as isize,
                (self.rhs as *const f32).add(first * self.rhs_col_stride),
                self.rhs_col_stride as isize,
                self.rhs_row_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }
}

/// The largest absolute difference between two tensors of one shape (for tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar())
        .expect("tensors of one shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::MappedWeights;
    use candle_core::{Device, Var};

    /// The in-place product and its gradient against candle's own matmul on a copied weight, for
    /// shapes whose output columns do not split evenly over the threads.
    #[test]
    fn in_place_product_and_gradient_match_candle() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let (out_dim, in_dim) = (37, 23);
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
        candle_core::safetensors::save(&[("w", w.clone())].into_iter().collect(), &path).unwrap();
        let weights = Arc::new(MappedWeights::open(&[path]).unwrap());
        let matrix = Arc::new(weights.matrix("w", out_dim, in_dim).unwrap().unwrap());
        for rows in [1, 5, 70] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, in_dim), &dev).unwrap()).unwrap();
            let r = Tensor::randn(0f32, 1.0, (rows, out_dim), &dev).unwrap();
            let expected = x.matmul(&w.t().unwrap()).unwrap();
            let got = MappedProduct::linear(&x, &matrix).unwrap();
            assert!(max_abs_diff(&expected, &got) < 1e-5, "forward, {rows} rows");
            let grad_of = |y: &Tensor| {
                let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                grads.get(x.as_tensor()).unwrap().clone()
            };
            let (want, have) = (grad_of(&expected), grad_of(&got));
            assert!(max_abs_diff(&want, &have) < 1e-5, "gradient, {rows} rows");
        }
    }
}
