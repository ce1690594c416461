//! Reconstruction quality over a corpus with the SAE spliced into the model: pooled SAE statistics
//! and the language model's loss with the site clean, reconstructed, or zero-ablated.
//!
//! Everything is pooled over every non-BOS token (and every predicted position) of every prompt
//! through running sums, so the result does not depend on how prompts are batched.

use crate::metrics::ReconstructionSums;
use crate::model::{Capture, Gemma2, HookPoint, NoHook, PaddedBatch};
use crate::report::EvalMetrics;
use crate::sae::JumpReluSae;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, D};

/// Running sums behind [`EvalMetrics`].
#[derive(Debug, Clone)]
pub struct EvalSums {
    reconstruction: ReconstructionSums,
    l0: u64,
    tokens: u64,
    cosine: f64,
    fired: Vec<bool>,
    ce_clean: f64,
    ce_spliced: f64,
    ce_zero: f64,
    kl: f64,
    predictions: u64,
}

impl EvalSums {
    pub fn new(d_sae: usize) -> Self {
        Self {
            reconstruction: ReconstructionSums::default(),
            l0: 0,
            tokens: 0,
            cosine: 0.0,
            fired: vec![false; d_sae],
            ce_clean: 0.0,
            ce_spliced: 0.0,
            ce_zero: 0.0,
            kl: 0.0,
            predictions: 0,
        }
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn finish(&self) -> Result<EvalMetrics> {
        ensure!(self.tokens > 0, "no token after BOS to evaluate");
        ensure!(self.predictions > 0, "no next-token prediction to score");
        let reconstruction = self
            .reconstruction
            .finish()
            .context("too few elements for a variance")?;
        let n = self.predictions as f64;
        let (clean, spliced, zero) = (self.ce_clean / n, self.ce_spliced / n, self.ce_zero / n);
        Ok(EvalMetrics {
            mean_l0: self.l0 as f64 / self.tokens as f64,
            variance_explained: reconstruction.variance_explained,
            mse: reconstruction.mse,
            cosine_similarity: self.cosine / self.tokens as f64,
            dead_fraction: self.fired.iter().filter(|&&f| !f).count() as f64
                / self.fired.len() as f64,
            tokens: self.tokens,
            predictions: self.predictions,
            ce_loss_clean: clean,
            ce_loss_spliced: spliced,
            ce_loss_zero_ablation: zero,
            delta_loss: spliced - clean,
            ce_loss_score: (zero - spliced) / (zero - clean),
            kl_div: self.kl / n,
        })
    }
}

/// One prompt's per-position losses (position `t` predicting token `t + 1`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceLosses {
    pub ce_clean: Vec<f64>,
    pub ce_spliced: Vec<f64>,
    pub ce_zero: Vec<f64>,
    pub kl: Vec<f64>,
}

/// `log softmax(row)` in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&v| v as f64 - lse).collect()
}

fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&p, &q)| p.exp() * (p - q))
        .sum()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Evaluates one batch of prompts (token ids, BOS first), right-padded to the longest, adding to
/// `sums`. Blocks before the hooked layer run once; the rest run three times: clean, spliced
/// (the site replaced by the SAE reconstruction after BOS) and zero-ablated (set to 0 after BOS).
/// Needs a model loaded with its LM head and all blocks, and an SAE with its decoder.
pub fn evaluate_batch(
    model: &Gemma2,
    sae: &JumpReluSae,
    point: HookPoint,
    batch: &[Vec<u32>],
    sums: &mut EvalSums,
) -> Result<Vec<SequenceLosses>> {
    let device = model.device();
    let lengths: Vec<usize> = batch.iter().map(Vec::len).collect();
    ensure!(
        lengths.iter().all(|&n| n >= 2),
        "a prompt has no token after BOS"
    );
    let padded = PaddedBatch::new(model, batch)?;
    let (b, t, ctx) = (batch.len(), padded.longest(), &padded.ctx);
    let depth = model.loaded_blocks();

    let below = model.run_blocks(
        model.embed(&padded.input)?,
        0..point.layer,
        ctx,
        &mut NoHook,
    )?;
    let mut capture = Capture::new(point);
    let clean_top = model.run_blocks(below.clone(), point.layer..depth, ctx, &mut capture)?;
    let clean_logits = model.logits(&clean_top)?.to_dtype(DType::F32)?;
    let activation = capture.value.context("the hook point was never reached")?;
    let d = activation.dim(D::Minus1)?;

    let x = activation.to_dtype(DType::F32)?.reshape((b * t, d))?;
    let f = sae.encode(&x)?;
    let x_hat = sae.decode(&f)?;

    // SAE statistics over real non-BOS tokens.
    let valid: Vec<bool> = (0..b * t)
        .map(|row| (1..lengths[row / t]).contains(&(row % t)))
        .collect();
    let active = f.gt(0f32)?.to_dtype(DType::F32)?;
    let l0: Vec<f32> = active.sum(1)?.to_vec1()?;
    let valid_col = Tensor::from_vec(
        valid.iter().map(|&v| v as u8 as f32).collect::<Vec<f32>>(),
        (b * t, 1),
        device,
    )?;
    let fired: Vec<f32> = active.broadcast_mul(&valid_col)?.max(0)?.to_vec1()?;
    for (slot, &f) in sums.fired.iter_mut().zip(&fired) {
        *slot |= f > 0.0;
    }
    let x_rows = x.to_vec2::<f32>()?;
    // Before anything is pooled: an overflowed run must not reach the statistics.
    for sequence in x_rows.chunks(t) {
        crate::metrics::ensure_finite(sequence, point)?;
    }
    let x_hat_rows = x_hat.to_vec2::<f32>()?;
    for row in (0..b * t).filter(|&r| valid[r]) {
        sums.reconstruction.add(&x_rows[row], &x_hat_rows[row]);
        sums.cosine += cosine(&x_rows[row], &x_hat_rows[row]);
        sums.l0 += l0[row] as u64;
        sums.tokens += 1;
    }

    // The spliced and zero-ablated runs replace the site after BOS; BOS stays clean.
    let dtype = activation.dtype();
    let shape = activation.shape().clone();
    let is_bos: Vec<u8> = (0..b * t).map(|row| (row % t == 0) as u8).collect();
    let keep = Tensor::from_vec(is_bos, (b, t, 1), device)?.broadcast_as(shape.clone())?;
    let spliced = keep.where_cond(&activation, &x_hat.reshape(shape.clone())?.to_dtype(dtype)?)?;
    let zeroed = keep.where_cond(&activation, &activation.zeros_like()?)?;
    let run_with = |replacement: &Tensor| -> Result<Tensor> {
        let mut hook = |p: HookPoint, _: &Tensor| {
            Ok(if p == point {
                Some(replacement.clone())
            } else {
                None
            })
        };
        let top = model.run_blocks(below.clone(), point.layer..depth, ctx, &mut hook)?;
        Ok(model.logits(&top)?.to_dtype(DType::F32)?)
    };
    let spliced_logits = run_with(&spliced)?;
    let zero_logits = run_with(&zeroed)?;

    let vocab = clean_logits.dim(D::Minus1)?;
    let clean = clean_logits.flatten_all()?.to_vec1::<f32>()?;
    let spliced = spliced_logits.flatten_all()?.to_vec1::<f32>()?;
    let zero = zero_logits.flatten_all()?.to_vec1::<f32>()?;
    let mut losses = Vec::with_capacity(b);
    for (s, ids) in batch.iter().enumerate() {
        let mut seq = SequenceLosses::default();
        for pos in 0..ids.len() - 1 {
            let at = (s * t + pos) * vocab;
            let target = ids[pos + 1] as usize;
            let log_clean = log_softmax(&clean[at..at + vocab]);
            let log_spliced = log_softmax(&spliced[at..at + vocab]);
            let log_zero = log_softmax(&zero[at..at + vocab]);
            seq.ce_clean.push(-log_clean[target]);
            seq.ce_spliced.push(-log_spliced[target]);
            seq.ce_zero.push(-log_zero[target]);
            seq.kl.push(kl_divergence(&log_clean, &log_spliced));
        }
        sums.ce_clean += seq.ce_clean.iter().sum::<f64>();
        sums.ce_spliced += seq.ce_spliced.iter().sum::<f64>();
        sums.ce_zero += seq.ce_zero.iter().sum::<f64>();
        sums.kl += seq.kl.iter().sum::<f64>();
        sums.predictions += seq.kl.len() as u64;
        losses.push(seq);
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_kl_by_hand() {
        let l = log_softmax(&[0.0, (2f32).ln()]);
        assert!((l[0] - (1.0f64 / 3.0).ln()).abs() < 1e-7);
        assert!((l[1] - (2.0f64 / 3.0).ln()).abs() < 1e-7);
        assert_eq!(kl_divergence(&l, &l), 0.0);
        let q = log_softmax(&[0.0, 0.0]);
        let expected =
            (1.0 / 3.0) * ((1.0f64 / 3.0) / 0.5).ln() + (2.0 / 3.0) * ((2.0f64 / 3.0) / 0.5).ln();
        // The logit ln 2 went through f32: 1e-7 is what its rounding allows.
        assert!((kl_divergence(&l, &q) - expected).abs() < 1e-7);
        // Large logits (soft-capped at 30 in Gemma 2, but any) stay finite.
        assert!(log_softmax(&[1000.0, 0.0])[1].is_finite());
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
    }

    #[test]
    fn ce_loss_score_is_one_for_a_perfect_splice_and_zero_for_ablation_level() {
        let mut sums = EvalSums::new(2);
        sums.reconstruction.add(&[1.0, 2.0], &[1.0, 2.0]);
        sums.tokens = 1;
        sums.predictions = 2;
        sums.ce_clean = 2.0;
        sums.ce_spliced = 2.0;
        sums.ce_zero = 6.0;
        let m = sums.finish().unwrap();
        assert_eq!(m.ce_loss_score, 1.0);
        assert_eq!(m.delta_loss, 0.0);
        assert_eq!(m.dead_fraction, 1.0);
        sums.ce_spliced = 6.0;
        assert_eq!(sums.finish().unwrap().ce_loss_score, 0.0);
    }
}
