//! The data path from token ids to a prompt report: hooked forward pass, SAE encode/decode, metrics.

use crate::metrics::{self, ReconstructionSums};
use crate::model::{Capture, Gemma2, HookPoint, MultiCapture, PaddedBatch};
use crate::report::{PromptReport, TokenReport};
use crate::sae::JumpReluSae;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

/// The activation `[tokens, width]` at `point` for one prompt's ids (BOS included), in f32.
/// Runs blocks `0..=point.layer` and no further.
pub fn capture(model: &Gemma2, ids: &[u32], point: HookPoint) -> Result<Tensor> {
    let mut one = capture_many(model, std::slice::from_ref(&ids.to_vec()), point)?;
    Ok(one.remove(0))
}

/// The activations at `point` for several prompts, run together as one right-padded batch: each
/// streamed block is read once for all of them, and every matmul sees all their tokens at once.
/// Each prompt's activation is `[its tokens, width]`, as it would be run alone.
pub fn capture_many(model: &Gemma2, prompts: &[Vec<u32>], point: HookPoint) -> Result<Vec<Tensor>> {
    let mut groups = capture_groups(model, &[prompts], point)?;
    Ok(groups.remove(0))
}

/// [`capture_many`] at several hook points in one forward pass, through the deepest point's
/// layer and no further: `[point][prompt]`, each `[its tokens, width]` in f32.
pub fn capture_points(
    model: &Gemma2,
    prompts: &[Vec<u32>],
    points: &[HookPoint],
) -> Result<Vec<Vec<Tensor>>> {
    let last = points
        .iter()
        .map(|p| p.layer)
        .max()
        .context("no hook point to capture")?;
    let batch = PaddedBatch::new(model, prompts)?;
    let mut hook = MultiCapture::new(points.to_vec());
    model
        .run_blocks(
            model.embed(&batch.input)?,
            0..last + 1,
            &batch.ctx,
            &mut hook,
        )
        .with_context(|| format!("forward pass to layer {last} failed"))?;
    hook.values
        .into_iter()
        .map(|value| unpad(&batch, value))
        .collect()
}

/// The activations at `point` for several groups of prompts, layer-major: each block runs over
/// every group before the next block, so streamed weights are read once for all of them (the
/// groups' residual streams are held meanwhile). Group `g`'s activations are what
/// [`capture_many`] gives for it alone.
pub fn capture_groups(
    model: &Gemma2,
    groups: &[&[Vec<u32>]],
    point: HookPoint,
) -> Result<Vec<Vec<Tensor>>> {
    let batches = groups
        .iter()
        .map(|prompts| PaddedBatch::new(model, prompts))
        .collect::<Result<Vec<_>>>()?;
    let embedded = batches
        .iter()
        .map(|b| model.embed(&b.input))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let ctxs: Vec<&crate::model::SequenceContext> = batches.iter().map(|b| &b.ctx).collect();
    let mut hooks: Vec<Capture> = batches.iter().map(|_| Capture::new(point)).collect();
    model
        .run_blocks_each(embedded, &ctxs, 0..point.layer + 1, &mut hooks)
        .with_context(|| format!("forward pass to layer {} failed", point.layer))?;
    batches
        .iter()
        .zip(hooks)
        .map(|(batch, hook)| unpad(batch, hook.value))
        .collect()
}

/// A captured `[prompts, longest, width]` activation cut back to each prompt's own tokens, f32.
fn unpad(batch: &PaddedBatch, captured: Option<Tensor>) -> Result<Vec<Tensor>> {
    let captured = captured
        .context("the hook point was never reached")?
        .to_dtype(DType::F32)?;
    batch
        .lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| Ok(captured.get(i)?.narrow(0, 0, n)?.contiguous()?))
        .collect()
}

/// Everything gemscope reports about one prompt, computed from its hooked activation `x`
/// (`[tokens, d_in]`, BOS row first).
pub struct PromptInput<'a> {
    pub index: usize,
    pub text: &'a str,
    pub ids: &'a [u32],
    pub pieces: Vec<String>,
}

/// What an SAE reads from one prompt's activation: the feature activations `[tokens, d_sae]` and,
/// when the decoder is loaded, the reconstruction `[tokens, d_in]`.
pub struct Encoded {
    pub f: Tensor,
    pub x_hat: Option<Tensor>,
}

/// Runs the SAE over a prompt's activation `x` `[tokens, d_in]` (encode, and decode when it can).
pub fn encode(x: &Tensor, sae: &JumpReluSae) -> Result<Encoded> {
    let f = sae.encode(x)?;
    let x_hat = if sae.has_decoder() {
        Some(sae.decode(&f)?)
    } else {
        None
    };
    Ok(Encoded { f, x_hat })
}

/// The prompt's statistics from its activation `x` and the SAE's reading of it. BOS (position 0)
/// gets its features listed but is excluded from `mean_l0`, `mse`, `variance_explained` and the
/// aggregate ranking.
pub fn analyze(
    input: PromptInput<'_>,
    x: &Tensor,
    encoded: &Encoded,
    d_sae: usize,
    point: HookPoint,
    top_k: usize,
) -> Result<PromptReport> {
    let x_rows = x.to_vec2::<f32>()?;
    metrics::ensure_finite(&x_rows, point)?;
    ensure!(
        x_rows.len() >= 2,
        "prompt {} has no token after BOS",
        input.index + 1
    );
    let f_rows = encoded.f.to_vec2::<f32>()?;

    let tokens: Vec<TokenReport> = f_rows
        .iter()
        .enumerate()
        .map(|(position, row)| TokenReport {
            position,
            id: input.ids[position],
            text: input.pieces[position].clone(),
            bos: position == 0,
            l0: metrics::l0(row),
            top_features: metrics::top_k(row, top_k)
                .into_iter()
                .map(Into::into)
                .collect(),
        })
        .collect();
    let counted = &tokens[1..];
    let mean_l0 = counted.iter().map(|t| t.l0 as f64).sum::<f64>() / counted.len() as f64;

    let reconstruction = if let Some(x_hat) = &encoded.x_hat {
        let x_hat = x_hat.to_vec2::<f32>()?;
        let mut sums = ReconstructionSums::default();
        for (row, row_hat) in x_rows.iter().zip(&x_hat).skip(1) {
            sums.add(row, row_hat);
        }
        sums.finish()
    } else {
        None
    };
    let top_features =
        metrics::aggregate_top(f_rows.iter().skip(1).map(Vec::as_slice), d_sae, top_k)
            .into_iter()
            .map(Into::into)
            .collect();

    Ok(PromptReport {
        index: input.index,
        text: input.text.to_string(),
        tokens,
        mean_l0,
        variance_explained: reconstruction.map(|r| r.variance_explained),
        mse: reconstruction.map(|r| r.mse),
        top_features,
        highlight: None,
    })
}

/// Feature `feature`'s activation at every row of `x` `[tokens, d_in]` (BOS first), with the
/// largest over the non-BOS rows: what `features --highlight` shades.
pub fn highlight(
    x: &Tensor,
    sae: &JumpReluSae,
    feature: usize,
) -> Result<crate::report::Highlight> {
    let f = sae.feature_encoder(&[feature])?.encode(x)?;
    let activations = f.squeeze(1)?.to_vec1::<f32>()?;
    let max = activations.iter().skip(1).copied().fold(0f32, f32::max);
    Ok(crate::report::Highlight {
        feature: feature as u32,
        activations,
        max,
    })
}
