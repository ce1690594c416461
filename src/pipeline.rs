//! The data path from token ids to a prompt report: hooked forward pass, SAE encode/decode, metrics.

use crate::metrics::{self, ReconstructionSums};
use crate::model::{Capture, Gemma2, HookPoint, SequenceContext};
use crate::report::{PromptReport, TokenReport};
use crate::sae::JumpReluSae;
use anyhow::{bail, ensure, Context, Result};
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
    let max = model.config().max_position_embeddings;
    for ids in prompts {
        ensure!(!ids.is_empty(), "no tokens to run");
        ensure!(
            ids.len() <= max,
            "the prompt has {} tokens, more than the model's context of {max}",
            ids.len()
        );
    }
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    // Padding with token 0 is harmless: no real token attends to a padding position.
    let padded: Vec<u32> = prompts
        .iter()
        .flat_map(|ids| {
            ids.iter()
                .copied()
                .chain(std::iter::repeat_n(0, longest - ids.len()))
        })
        .collect();
    let input = Tensor::from_vec(padded, (prompts.len(), longest), model.device())?;
    let ctx = SequenceContext::padded(model.config(), &lengths, model.dtype(), model.device())?;
    let mut hook = Capture::new(point);
    model
        .run_blocks(model.embed(&input)?, 0..point.layer + 1, &ctx, &mut hook)
        .with_context(|| format!("forward pass to layer {} failed", point.layer))?;
    let batch = hook
        .value
        .context("the hook point was never reached")?
        .to_dtype(DType::F32)?;
    lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| Ok(batch.get(i)?.narrow(0, 0, n)?.contiguous()?))
        .collect()
}

/// Fails on the first NaN or infinity, naming the hook point and token: a model run in a
/// narrow dtype can overflow, and its features would be garbage.
pub fn ensure_finite(rows: &[Vec<f32>], point: HookPoint) -> Result<()> {
    for (position, row) in rows.iter().enumerate() {
        if let Some(v) = row.iter().find(|v| !v.is_finite()) {
            bail!(
                "the activation at layer {} {} is not finite ({v}) at token {position}; \
                 the model overflowed (try --dtype f32)",
                point.layer,
                point.site
            );
        }
    }
    Ok(())
}

/// Everything gemscope reports about one prompt, computed from its hooked activation `x`
/// (`[tokens, d_in]`, BOS row first).
pub struct PromptInput<'a> {
    pub index: usize,
    pub text: &'a str,
    pub ids: &'a [u32],
    pub pieces: Vec<String>,
}

/// Encodes the prompt's activations through the SAE and computes its statistics. BOS (position 0)
/// gets its features listed but is excluded from `mean_l0`, `mse`, `variance_explained` and the
/// aggregate ranking.
pub fn analyze(
    input: PromptInput<'_>,
    x: &Tensor,
    sae: &JumpReluSae,
    point: HookPoint,
    top_k: usize,
) -> Result<PromptReport> {
    let x_rows = x.to_vec2::<f32>()?;
    ensure_finite(&x_rows, point)?;
    ensure!(
        x_rows.len() >= 2,
        "prompt {} has no token after BOS",
        input.index + 1
    );
    let f = sae.encode(x)?;
    let f_rows = f.to_vec2::<f32>()?;

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

    let reconstruction = if sae.has_decoder() {
        let x_hat = sae.decode(&f)?.to_vec2::<f32>()?;
        let mut sums = ReconstructionSums::default();
        for (row, row_hat) in x_rows.iter().zip(&x_hat).skip(1) {
            sums.add(row, row_hat);
        }
        sums.finish()
    } else {
        None
    };
    let top_features =
        metrics::aggregate_top(f_rows.iter().skip(1).map(Vec::as_slice), sae.d_sae(), top_k)
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
