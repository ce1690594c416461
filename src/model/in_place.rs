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
        let mut dst = vec![0f32; rows * n];
        if rows > 0 && n > 0 {
            let threads = candle_core::utils::get_num_threads();
            let parallelism = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            // Safety: dst is `rows x n` row-major, lhs `rows x k` row-major (contiguous, checked
            // above), and the strides address only `w`'s `out * in` values; gemm computes
            // dst = 0 * dst + 1 * lhs @ rhs without reading dst (read_dst = false).
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    rhs_col_stride as isize,
                    rhs_row_stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                )
            }
        }
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
