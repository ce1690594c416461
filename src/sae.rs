//! The JumpReLU SAE of Gemma Scope: loading `params.npz` (or `.safetensors`), encode and decode in f32.
//!
//! `pre = x @ W_enc + b_enc`; `f = relu(pre) * (pre > threshold)`; `x_hat = f @ W_dec + b_dec`.
//! No input normalisation. The decoder is loaded only when a reconstruction is needed.

use crate::model::weights::MappedWeights;
use crate::npy::{Array, NpzArchive};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// `f @ W_dec` on the CPU, reading only the rows of `W_dec` whose feature is active. JumpReLU
/// activations are mostly exact zeros (Gemma Scope's SAEs have an L0 of about 20-150 of 16k
/// features), so a token costs `L0 x d_in` multiply-adds instead of `d_sae x d_in`: the dense
/// product read all 151 MB of a 16k decoder for every prompt. Activations denser than 1 in 32
/// (a random SAE's, say) take the dense product, where the matrix kernel is faster per
/// multiply-add than gathering rows. Zeros contribute nothing either way (`W_dec` is checked
/// finite at load), so the two agree to rounding.
struct SparseDecode;

impl candle_core::CustomOp2 for SparseDecode {
    fn name(&self) -> &'static str {
        "sparse-decode"
    }

    fn cpu_fwd(
        &self,
        f: &candle_core::CpuStorage,
        f_layout: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        w_layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        use rayon::prelude::*;
        let (CpuStorage::F32(f), CpuStorage::F32(w)) = (f, w) else {
            candle_core::bail!("the sparse decode takes f32 activations and decoder");
        };
        let ((n, d_sae), (w_rows, d_in)) = (f_layout.shape().dims2()?, w_layout.shape().dims2()?);
        let (Some((f0, f1)), Some((w0, w1))) =
            (f_layout.contiguous_offsets(), w_layout.contiguous_offsets())
        else {
            candle_core::bail!("the sparse decode takes contiguous activations and decoder");
        };
        if w_rows != d_sae {
            candle_core::bail!("activations have {d_sae} features, W_dec {w_rows} rows");
        }
        let (f, w) = (&f[f0..f1], &w[w0..w1]);
        let active = f.iter().filter(|&&a| a != 0.0).count();
        let out = if active * 32 > f.len() {
            crate::model::in_place::product(f, n, d_sae, w, (d_in, 1), d_in)
        } else {
            let mut out = vec![0f32; n * d_in];
            if d_in > 0 && d_sae > 0 {
                out.par_chunks_mut(d_in)
                    .zip(f.par_chunks(d_sae))
                    .for_each(|(row, acts)| {
                        for (feature, &a) in acts.iter().enumerate().filter(|(_, &a)| a != 0.0) {
                            let direction = &w[feature * d_in..(feature + 1) * d_in];
                            for (o, &d) in row.iter_mut().zip(direction) {
                                *o += a * d;
                            }
                        }
                    });
            }
            out
        };
        Ok((CpuStorage::F32(out), candle_core::Shape::from((n, d_in))))
    }

    /// `d(f W)/df` applied to `dy` is `dy W^T`; `W_dec` is a constant of the SAE (no gradient).
    fn bwd(
        &self,
        _f: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w.t()?)?), None))
    }
}

/// Whether to load `W_dec` and `b_dec` (needed for reconstructions, variance explained, MSE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaeParts {
    EncoderOnly,
    EncoderDecoder,
}

#[derive(Debug, Clone)]
struct Decoder {
    w_dec: Tensor,
    b_dec: Tensor,
}

#[derive(Debug, Clone)]
pub struct JumpReluSae {
    /// `W_enc` transposed to `[d_sae, d_in]` at load: the encode matmul then reads both operands
    /// along their contiguous dimension.
    w_enc_t: Tensor,
    b_enc: Tensor,
    threshold: Tensor,
    decoder: Option<Decoder>,
    d_in: usize,
    d_sae: usize,
}

/// A source of named f32 arrays: an npz archive or a safetensors file.
enum ParamSource {
    Npz(NpzArchive),
    Safetensors(MappedWeights),
}

impl ParamSource {
    fn open(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "npz" => Ok(Self::Npz(NpzArchive::open(path)?)),
            "safetensors" => Ok(Self::Safetensors(MappedWeights::open(&[
                path.to_path_buf()
            ])?)),
            _ => bail!(
                "{}: an SAE must be a .npz (Gemma Scope params.npz) or .safetensors file",
                path.display()
            ),
        }
    }

    fn read(&self, name: &str) -> Result<Array<f32>> {
        let t = match self {
            Self::Npz(npz) => return npz.read_f32(name),
            Self::Safetensors(st) => st
                .load(name, DType::F32, &Device::Cpu)
                .with_context(|| format!("SAE has no tensor {name:?}"))?,
        };
        Ok(Array {
            shape: t.dims().to_vec(),
            data: t.flatten_all()?.to_vec1::<f32>()?,
        })
    }

    /// A 2-D array's transpose `[cols, rows]`, built with as few copies as the format allows.
    fn read_transposed(&self, name: &str) -> Result<Array<f32>> {
        let t = match self {
            Self::Npz(npz) => return npz.read_f32_transposed(name),
            Self::Safetensors(st) => st
                .load(name, DType::F32, &Device::Cpu)
                .with_context(|| format!("SAE has no tensor {name:?}"))?,
        };
        ensure!(
            t.rank() == 2,
            "SAE array {name} has shape {:?}, expected a matrix",
            t.dims()
        );
        let t = t.t()?.contiguous()?;
        Ok(Array {
            shape: t.dims().to_vec(),
            data: t.flatten_all()?.to_vec1::<f32>()?,
        })
    }

    fn dims(&self, name: &str) -> Result<Vec<usize>> {
        match self {
            Self::Npz(npz) => Ok(npz.header(name)?.shape),
            Self::Safetensors(st) => st
                .shape(name)
                .with_context(|| format!("SAE has no tensor {name:?}")),
        }
    }
}

fn check_shape(name: &str, array: &Array<f32>, expected: &[usize], meaning: &str) -> Result<()> {
    ensure!(
        array.shape == expected,
        "SAE array {name} has shape {:?}, expected {expected:?} ({meaning})",
        array.shape
    );
    Ok(())
}

fn check_finite(name: &str, array: &Array<f32>) -> Result<()> {
    if let Some(i) = array.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "SAE array {name} holds a non-finite value ({}) at flat index {i}",
            array.data[i]
        );
    }
    Ok(())
}

/// `(d_in, d_sae)` from the shape of `W_enc`, reading headers only.
pub fn read_dims(path: &Path) -> Result<(usize, usize)> {
    let shape = ParamSource::open(path)?.dims("W_enc")?;
    match shape[..] {
        [d_in, d_sae] => Ok((d_in, d_sae)),
        _ => bail!(
            "{}: W_enc has shape {shape:?}, expected [d_in, d_sae]",
            path.display()
        ),
    }
}

impl JumpReluSae {
    /// Bytes of the f32 parameters an SAE of this shape holds once loaded: the one formula every
    /// memory plan uses.
    pub fn param_bytes(d_in: usize, d_sae: usize, parts: SaeParts) -> u64 {
        let (d_in, d_sae) = (d_in as u64, d_sae as u64);
        let encoder = d_in * d_sae + 2 * d_sae;
        let decoder = match parts {
            SaeParts::EncoderOnly => 0,
            SaeParts::EncoderDecoder => d_sae * d_in + d_in,
        };
        (encoder + decoder) * 4
    }

    /// Fails unless `feature` is one of an SAE's `d_sae` features; `name` is what the user wrote
    /// (`--feature 7`, `--highlight 7`), so the message points at the flag.
    pub fn check_feature(d_sae: usize, feature: usize, name: &str) -> Result<()> {
        ensure!(
            feature < d_sae,
            "{name} {feature} does not exist: the SAE has {d_sae} features (0..={})",
            d_sae.saturating_sub(1)
        );
        Ok(())
    }

    /// Loads an SAE whose input width must be `d_in` (the hooked site's width).
    pub fn load(path: &Path, d_in: usize, parts: SaeParts, device: &Device) -> Result<Self> {
        let source = ParamSource::open(path)?;
        Self::from_source(&source, d_in, parts, device)
            .with_context(|| format!("cannot load SAE {}", path.display()))
    }

    fn from_source(
        source: &ParamSource,
        d_in: usize,
        parts: SaeParts,
        device: &Device,
    ) -> Result<Self> {
        let dims = source.dims("W_enc")?;
        let [w_rows, d_sae] = dims[..] else {
            bail!("SAE array W_enc has shape {dims:?}, expected [d_in, d_sae]");
        };
        ensure!(
            w_rows == d_in,
            "SAE array W_enc has shape {dims:?}: its input width {w_rows} does not match the hooked activation's width {d_in}"
        );
        ensure!(d_sae > 0, "SAE has zero features");
        // Decoded straight into [d_sae, d_in]: one allocation for the largest array.
        let w_enc_t = source.read_transposed("W_enc")?;
        check_finite("W_enc", &w_enc_t)?;
        let b_enc = source.read("b_enc")?;
        check_shape("b_enc", &b_enc, &[d_sae], "one bias per feature")?;
        check_finite("b_enc", &b_enc)?;
        let threshold = source.read("threshold")?;
        check_shape(
            "threshold",
            &threshold,
            &[d_sae],
            "one threshold per feature",
        )?;
        check_finite("threshold", &threshold)?;

        let decoder = match parts {
            SaeParts::EncoderOnly => None,
            SaeParts::EncoderDecoder => {
                let w_dec = source.read("W_dec")?;
                check_shape("W_dec", &w_dec, &[d_sae, d_in], "[d_sae, d_in]")?;
                check_finite("W_dec", &w_dec)?;
                let b_dec = source.read("b_dec")?;
                check_shape("b_dec", &b_dec, &[d_in], "one bias per input dimension")?;
                check_finite("b_dec", &b_dec)?;
                Some(Decoder {
                    w_dec: Tensor::from_vec(w_dec.data, (d_sae, d_in), device)?,
                    b_dec: Tensor::from_vec(b_dec.data, d_in, device)?,
                })
            }
        };
        Ok(Self {
            w_enc_t: Tensor::from_vec(w_enc_t.data, (d_sae, d_in), device)?,
            b_enc: Tensor::from_vec(b_enc.data, d_sae, device)?,
            threshold: Tensor::from_vec(threshold.data, d_sae, device)?,
            decoder,
            d_in,
            d_sae,
        })
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_sae(&self) -> usize {
        self.d_sae
    }

    pub fn has_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// Feature activations `[n, d_sae]` for activations `x` `[n, d_in]` (any dtype; computed in f32).
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let pre = x.matmul(&self.w_enc_t.t()?)?.broadcast_add(&self.b_enc)?;
        let gate = pre.broadcast_gt(&self.threshold)?;
        gate.where_cond(&pre.relu()?, &pre.zeros_like()?)
    }

    /// The pre-activations `x @ W_enc + b_enc` `[n, d_sae]` in f32: `encode` is [`jumprelu`] of
    /// them with [`Self::thresholds`]. A caller that reads the activations on the host anyway
    /// gates them there in one pass instead of three tensor passes.
    pub fn pre_activations(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        x.matmul(&self.w_enc_t.t()?)?.broadcast_add(&self.b_enc)
    }

    /// Every feature's threshold.
    pub fn thresholds(&self) -> candle_core::Result<Vec<f32>> {
        self.threshold.to_vec1()
    }

    /// Reconstruction `[n, d_in]` from feature activations `f` `[n, d_sae]`.
    pub fn decode(&self, f: &Tensor) -> candle_core::Result<Tensor> {
        let Some(decoder) = &self.decoder else {
            candle_core::bail!("the SAE decoder was not loaded");
        };
        let reconstruction = match (f.device(), f.dtype(), decoder.w_dec.dtype()) {
            (Device::Cpu, DType::F32, DType::F32) => {
                f.contiguous()?.apply_op2(&decoder.w_dec, SparseDecode)?
            }
            _ => f.matmul(&decoder.w_dec)?,
        };
        reconstruction.broadcast_add(&decoder.b_dec)
    }

    /// The encoder of only `features` (ids checked against `d_sae`): steering's clamp mode and
    /// `features --highlight` need one or two features, not all of them.
    pub fn feature_encoder(&self, features: &[usize]) -> candle_core::Result<FeatureEncoder> {
        let idx = self.feature_index(features)?;
        Ok(FeatureEncoder {
            w: self.w_enc_t.index_select(&idx, 0)?.t()?.contiguous()?,
            b_enc: self.b_enc.index_select(&idx, 0)?,
            threshold: self.threshold.index_select(&idx, 0)?,
        })
    }

    fn feature_index(&self, features: &[usize]) -> candle_core::Result<Tensor> {
        for &f in features {
            Self::check_feature(self.d_sae, f, "feature")
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        let ids: Vec<u32> = features.iter().map(|&f| f as u32).collect();
        Tensor::from_vec(ids, features.len(), self.w_enc_t.device())
    }

    /// `W_enc` transposed (`[d_sae, d_in]`: row `f` is feature f's encoder column), `b_enc` and
    /// `threshold`, for feature cards.
    pub fn encoder_weights(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.w_enc_t, &self.b_enc, &self.threshold)
    }

    /// `W_dec` `[d_sae, d_in]`, when the decoder was loaded.
    pub fn decoder_weights(&self) -> Option<&Tensor> {
        self.decoder.as_ref().map(|d| &d.w_dec)
    }

    /// Row `feature` of `W_dec` `[d_in]`: the direction the feature writes (used for steering).
    pub fn decoder_direction(&self, feature: usize) -> candle_core::Result<Tensor> {
        let Some(decoder) = &self.decoder else {
            candle_core::bail!("the SAE decoder was not loaded");
        };
        decoder.w_dec.get(feature)
    }
}

/// The JumpReLU encoder restricted to a few features: `[.., d_in]` -> `[.., k]`.
#[derive(Debug, Clone)]
pub struct FeatureEncoder {
    /// The features' columns of `W_enc`, `[d_in, k]`.
    w: Tensor,
    b_enc: Tensor,
    threshold: Tensor,
}

/// JumpReLU of one pre-activation: `relu(pre) * (pre > threshold)`, the same f32 as `encode`.
pub fn jumprelu(pre: f32, threshold: f32) -> f32 {
    if pre > threshold && pre > 0.0 {
        pre
    } else {
        0.0
    }
}

impl FeatureEncoder {
    /// The pre-activations `x @ W_enc[:, F] + b_enc[F]` `[n, k]` in f32 (see
    /// [`JumpReluSae::pre_activations`]).
    pub fn pre_activations(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        x.broadcast_matmul(&self.w)?.broadcast_add(&self.b_enc)
    }

    /// The features' thresholds, in order.
    pub fn thresholds(&self) -> candle_core::Result<Vec<f32>> {
        self.threshold.to_vec1()
    }

    /// `relu(pre) * (pre > threshold)` with `pre = x @ W_enc[:, F] + b_enc[F]`, in f32.
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let pre = x.broadcast_matmul(&self.w)?.broadcast_add(&self.b_enc)?;
        let gate = pre.broadcast_gt(&self.threshold)?;
        gate.where_cond(&pre.relu()?, &pre.zeros_like()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumprelu_gates_at_threshold_and_zero() {
        let dev = Device::Cpu;
        // d_in 2, d_sae 3: W_enc = [[1, 0, 1], [0, 1, 1]], stored transposed as [d_sae, d_in].
        let w_enc_t: Vec<f32> = vec![1., 0., 0., 1., 1., 1.];
        let sae = JumpReluSae {
            w_enc_t: Tensor::from_vec(w_enc_t, (3, 2), &dev).unwrap(),
            b_enc: Tensor::new(&[0f32, 0., -10.], &dev).unwrap(),
            threshold: Tensor::new(&[0.5f32, 0.5, 0.0], &dev).unwrap(),
            decoder: None,
            d_in: 2,
            d_sae: 3,
        };
        let x = Tensor::new(&[[0.4f32, 2.0], [-1.0, 0.6], [0.5, 0.75]], &dev).unwrap();
        let f = sae.encode(&x).unwrap().to_vec2::<f32>().unwrap();
        // pre row 0 = [0.4, 2.0, -7.6]: 0.4 is under its threshold, -7.6 under zero.
        assert_eq!(f[0], vec![0.0, 2.0, 0.0]);
        assert_eq!(f[1], vec![0.0, 0.6, 0.0]);
        // pre exactly at the threshold stays off: the gate is `pre > threshold`, strictly.
        assert_eq!(f[2], vec![0.0, 0.75, 0.0]);
        // The host-side gate over the pre-activations gives the same values.
        let pre = sae.pre_activations(&x).unwrap().to_vec2::<f32>().unwrap();
        let thresholds = sae.thresholds().unwrap();
        for (row, want) in pre.iter().zip(&f) {
            let gated: Vec<f32> = row
                .iter()
                .zip(&thresholds)
                .map(|(&p, &t)| jumprelu(p, t))
                .collect();
            assert_eq!(&gated, want);
        }
        assert!(sae
            .decode(&Tensor::zeros((1, 3), DType::F32, &dev).unwrap())
            .is_err());
    }

    /// The sparse decode against the dense product, for sparse (real SAE-like) and dense
    /// activations, and its gradient against the dense product's.
    #[test]
    fn sparse_decode_matches_the_dense_product() {
        let dev = Device::Cpu;
        let (d_sae, d_in) = (300, 29);
        let w = Tensor::randn(0f32, 1.0, (d_sae, d_in), &dev).unwrap();
        for (rows, keep) in [(1, 0.01), (7, 0.01), (7, 0.5)] {
            let values = Tensor::randn(0f32, 1.0, (rows, d_sae), &dev).unwrap();
            let mask = Tensor::rand(0f32, 1.0, (rows, d_sae), &dev)
                .unwrap()
                .lt(keep)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let f = candle_core::Var::from_tensor(&(values * mask).unwrap()).unwrap();
            let dense = f.matmul(&w).unwrap();
            let sparse = f.apply_op2(&w, SparseDecode).unwrap();
            let max_diff = crate::model::in_place::max_abs_diff;
            assert!(
                max_diff(&dense, &sparse) < 1e-5,
                "{rows} rows, density {keep}"
            );
            let r = Tensor::randn(0f32, 1.0, (rows, d_in), &dev).unwrap();
            let grad_of = |y: &Tensor| {
                let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                grads.get(f.as_tensor()).unwrap().clone()
            };
            assert!(max_diff(&grad_of(&dense), &grad_of(&sparse)) < 1e-5);
        }
    }
}
