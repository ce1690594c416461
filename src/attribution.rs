//! Attribution of an output token to SAE features: gradient x activation through the later blocks.
//!
//! The SAE's reconstruction is spliced in at the hook point with its error held constant,
//! `x' = x_hat(f) + (x - x_hat)`, so the logits are the clean ones, and candle's autograd takes
//! the metric's gradient back to the feature activations `f` through blocks `L+1..` (and the rest
//! of block `L` for the `mlp` and `att` sites), computed with the plain ops of
//! [`crate::model::differentiable`]. The head (final norm, tied unembedding, soft-cap, metric) is
//! differentiated by hand in f64, from the f32 logits: the models are often very confident, and
//! `1 - p` for `p` near 1 has no digits left in f32. `attribution[t, i] = f[t, i] * dm/df[t, i]`;
//! the error term's attribution at `t` is `(x - x_hat)[t] . dm/dx'[t]`.
//!
//! Each block after the splice runs on a fresh variable holding its input, and the backward pass
//! goes block by block: candle's matmul backward also computes the (unused) weight gradients,
//! and one block's worth of them at a time is what this keeps in memory.

use crate::model::{Gemma2, Hook, HookPoint, NoHook, SequenceContext, Site};
pub use crate::report::attribution::Metric;
use crate::sae::JumpReluSae;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var};

/// What to attribute: the metric of `target` (default: the most likely token) in the
/// next-token distribution at `position` (0-based, BOS is 0, at least 1).
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub point: HookPoint,
    pub position: usize,
    pub target: Option<u32>,
    pub metric: Metric,
}

/// One active feature at one position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureAttribution {
    pub position: usize,
    pub feature: u32,
    pub activation: f32,
    /// `activation * d metric / d activation`.
    pub attribution: f64,
}

/// The outcome for one prompt.
#[derive(Debug, Clone)]
pub struct Attribution {
    pub target: u32,
    pub position: usize,
    pub metric: Metric,
    pub metric_value: f64,
    /// The target's probability at `position`, whatever the metric.
    pub probability: f64,
    /// Every active feature at positions `1..=position`, by |attribution| descending (ties: by
    /// position, then feature id). Inactive features have attribution 0 and are not listed.
    pub features: Vec<FeatureAttribution>,
    /// The SAE error term's attribution per position of the prompt (`ids.len()` entries): 0 for
    /// BOS, which is not spliced, and for positions after `position`, which cannot affect it.
    pub error: Vec<f64>,
    pub timings: Timings,
}

/// Where the time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Blocks `0..L`, streamed, without gradients.
    pub forward_before: f64,
    /// Block `L` with the splice, blocks `L+1..` and the head, keeping the graph.
    pub forward_after: f64,
    /// The backward pass: head, later blocks, splice.
    pub backward: f64,
}

/// The exact effect of removing one feature: the metric with its activation set to 0 in the
/// splice, minus the metric without; `estimate` is the first-order prediction, `-attribution`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ablation {
    pub position: usize,
    pub feature: u32,
    pub effect: f64,
    pub estimate: f64,
}

/// The next-token distribution's soft-capped logits at one position, in f64, with what the
/// backward pass of the head needs.
struct Head {
    logits: Vec<f64>,
    /// `d logits / d z`: the soft-cap's derivative at each pre-cap logit `z`.
    cap_slope: Vec<f64>,
}

impl Head {
    /// The final norm, the tied unembedding (f32 matmuls, one slice of the vocabulary at a
    /// time) and the soft-cap (f64) on `h` `[1, hidden]`.
    fn run(model: &Gemma2, later: &LaterBlocks, h: &Tensor) -> Result<Self> {
        let normed = later.norm.forward_differentiable(h)?;
        let mut z = Vec::with_capacity(model.config().vocab_size);
        for (start, len) in vocab_slices(model.config().vocab_size) {
            let rows = model.embedding_rows(start, len)?;
            let slice = normed.matmul(&rows.t()?)?.to_dtype(DType::F64)?;
            z.extend(slice.flatten_all()?.to_vec1::<f64>()?);
        }
        let cap = model.config().final_logit_softcapping;
        let (logits, cap_slope) = z
            .iter()
            .map(|&z| match cap {
                Some(cap) => {
                    let t = (z / cap).tanh();
                    (cap * t, 1.0 - t * t)
                }
                None => (z, 1.0),
            })
            .unzip();
        Ok(Self { logits, cap_slope })
    }

    /// `log p(target)`, by the log-sum-exp with the max subtracted.
    fn log_prob(&self, target: usize) -> f64 {
        let max = self
            .logits
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = self.logits.iter().map(|&c| (c - max).exp()).sum();
        self.logits[target] - max - sum.ln()
    }

    fn metric(&self, metric: Metric, target: usize) -> f64 {
        match metric {
            Metric::Logit => self.logits[target],
            Metric::Logprob => self.log_prob(target),
            Metric::Prob => self.log_prob(target).exp(),
        }
    }

    /// `d metric / d z` over the vocabulary, z the pre-cap logits.
    fn metric_gradient(&self, metric: Metric, target: usize) -> Vec<f64> {
        let log_p = self.log_prob(target);
        let lse = self.logits[target] - log_p;
        let d_logits: Vec<f64> = match metric {
            Metric::Logit => (0..self.logits.len())
                .map(|v| if v == target { 1.0 } else { 0.0 })
                .collect(),
            // d log p_t / d c_v = [v = t] - p_v; for v = t, 1 - p_t = -expm1(log p_t) keeps
            // its digits when p_t is near 1.
            Metric::Logprob | Metric::Prob => {
                let scale = if metric == Metric::Prob {
                    log_p.exp()
                } else {
                    1.0
                };
                self.logits
                    .iter()
                    .enumerate()
                    .map(|(v, &c)| {
                        let d = if v == target {
                            -log_p.exp_m1()
                        } else {
                            -(c - lse).exp()
                        };
                        scale * d
                    })
                    .collect()
            }
        };
        d_logits
            .iter()
            .zip(&self.cap_slope)
            .map(|(d, s)| d * s)
            .collect()
    }

    /// The most likely token, ties to the lowest id.
    fn argmax(&self) -> usize {
        let mut best = 0;
        for (v, &c) in self.logits.iter().enumerate() {
            if c > self.logits[best] {
                best = v;
            }
        }
        best
    }
}

/// `d metric / d h` for the last-block output row `h` `[1, hidden]` at the read position, from
/// the head's gradient over the pre-cap logits: back through the unembedding (a matmul with the
/// embedding matrix) and the final norm (autograd on the norm alone).
fn head_backward(model: &Gemma2, later: &LaterBlocks, h: &Tensor, d_z: &[f64]) -> Result<Tensor> {
    let mut d_normed: Option<Tensor> = None;
    for (start, len) in vocab_slices(d_z.len()) {
        let rows = model.embedding_rows(start, len)?;
        let d_slice = Tensor::from_slice(&d_z[start..start + len], (1, len), h.device())?
            .to_dtype(rows.dtype())?;
        let part = d_slice.matmul(&rows)?;
        d_normed = Some(match d_normed {
            Some(sum) => (sum + part)?,
            None => part,
        });
    }
    let d_normed = d_normed.context("the vocabulary is empty")?;
    let h = Var::from_tensor(&h.detach())?;
    let normed = later.norm.forward_differentiable(h.as_tensor())?;
    let d_normed = d_normed.to_dtype(normed.dtype())?;
    let grads = (normed * d_normed)?.sum_all()?.backward()?;
    grads
        .get(h.as_tensor())
        .cloned()
        .context("the final norm's gradient is missing")
}

/// Rows of the embedding matrix the LM head reads at a time: 8192 x 2304 f32 is 75 MB for
/// Gemma 2 2B, whose whole matrix (2.4 GB) is then never in memory at once.
const VOCAB_SLICE: usize = 8192;

fn vocab_slices(vocab: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..vocab)
        .step_by(VOCAB_SLICE)
        .map(move |start| (start, VOCAB_SLICE.min(vocab - start)))
}

/// The splice at the hook point: BOS kept, every later row replaced by `x_hat(f) + err`.
struct Splice {
    /// The site's activation `[n, d]` in f32, as the forward pass reached it.
    x: Option<Tensor>,
    /// What the hook returns: when set, this replacement instead of building the splice.
    replacement: Option<Tensor>,
    /// The leaves of the gradient: `f` `[n - 1, d_sae]` and the error `[n - 1, d]`.
    leaves: Option<(Var, Var)>,
    point: HookPoint,
}

impl Splice {
    fn build(x: &Tensor, sae: &JumpReluSae) -> candle_core::Result<(Tensor, Var, Var)> {
        let n = x.dim(0)?;
        let rest = x.narrow(0, 1, n - 1)?;
        let f = Var::from_tensor(&sae.encode(&rest)?)?;
        let x_hat = sae.decode(f.as_tensor())?;
        let err = Var::from_tensor(&(&rest - x_hat.detach())?)?;
        let spliced = Tensor::cat(&[&x.narrow(0, 0, 1)?, &(x_hat + err.as_tensor())?], 0)?;
        Ok((spliced, f, err))
    }
}

struct SpliceHook<'a> {
    splice: &'a mut Splice,
    sae: &'a JumpReluSae,
}

impl Hook for SpliceHook<'_> {
    fn visit(
        &mut self,
        point: HookPoint,
        activation: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if point != self.splice.point {
            return Ok(None);
        }
        let dtype = activation.dtype();
        if let Some(replacement) = &self.splice.replacement {
            return Ok(Some(replacement.unsqueeze(0)?.to_dtype(dtype)?));
        }
        let x = activation.squeeze(0)?.to_dtype(DType::F32)?;
        let (spliced, f, err) = Splice::build(&x, self.sae)?;
        self.splice.x = Some(x);
        self.splice.leaves = Some((f, err));
        Ok(Some(spliced.unsqueeze(0)?.to_dtype(dtype)?))
    }
}

/// The blocks from the hook point's layer on, built once: the attribution pass and every
/// ablation rerun go through them.
pub struct LaterBlocks {
    /// Block `L` itself, needed again for the `mlp` and `att` sites (the splice is inside it).
    own: Option<crate::model::gemma2::DecoderBlock>,
    after: Vec<crate::model::gemma2::DecoderBlock>,
    /// The final norm; the embedding matrix is read a slice at a time when the head runs.
    norm: crate::model::gemma2::RmsNorm,
}

impl LaterBlocks {
    pub fn build(model: &Gemma2, point: HookPoint) -> Result<Self> {
        let n = model.config().num_hidden_layers;
        let own = match point.site {
            Site::Res => None,
            Site::Mlp | Site::Att => Some(model.block(point.layer)?),
        };
        let after = (point.layer + 1..n)
            .map(|l| model.block(l))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            own,
            after,
            norm: model.final_norm()?,
        })
    }
}

/// Runs the attribution for the prompt `ids` (BOS first). The model must have every block
/// (`Parts { blocks: all, .. }`); blocks before the hook point may stream, and the LM head need
/// not be loaded (the embedding matrix is read a slice at a time).
pub fn attribute(
    model: &Gemma2,
    later: &LaterBlocks,
    sae: &JumpReluSae,
    ids: &[u32],
    request: &Request,
) -> Result<(Attribution, Prepared)> {
    let cfg = model.config();
    let n_prompt = ids.len();
    let p = request.position;
    ensure!(n_prompt >= 2, "the prompt has no token after BOS");
    ensure!(
        (1..n_prompt).contains(&p),
        "position {p} is outside the prompt's tokens 1..={}",
        n_prompt - 1
    );
    if let Some(t) = request.target {
        ensure!(
            (t as usize) < cfg.vocab_size,
            "target id {t} is outside the vocabulary (0..={})",
            cfg.vocab_size - 1
        );
    }
    // Tokens after the read position cannot affect it (causal attention): run up to it only.
    let n = p + 1;
    let input = Tensor::from_slice(&ids[..n], (1, n), model.device())?;
    let fast = model.context(n)?;
    let ctx = model.context(n)?.with_gradients();
    let point = request.point;
    let mut timings = Timings::default();
    let clock = std::time::Instant::now();

    // Blocks before the hook point's layer need no gradient: the usual kernels, streamed.
    let block_input = model
        .run_blocks(model.embed(&input)?, 0..point.layer, &fast, &mut NoHook)
        .with_context(|| format!("forward pass to layer {} failed", point.layer))?;
    timings.forward_before = clock.elapsed().as_secs_f64();
    let clock = std::time::Instant::now();

    let mut splice = Splice {
        x: None,
        replacement: None,
        leaves: None,
        point,
    };
    let spliced_out = {
        let mut hook = SpliceHook {
            splice: &mut splice,
            sae,
        };
        match &later.own {
            // The splice is inside block L: the rest of it is differentiated.
            Some(block) => block.forward(&block_input, &ctx, &mut hook, None)?,
            // The splice is block L's output: block L itself needs no gradient.
            None => model.run_blocks(
                block_input.clone(),
                point.layer..point.layer + 1,
                &fast,
                &mut hook,
            )?,
        }
    };
    let (Some(x), Some((f, err))) = (splice.x.take(), splice.leaves.take()) else {
        bail!(
            "the hook point {} {} was never reached",
            point.layer,
            point.site
        );
    };
    let x_rows = x.to_vec2::<f32>()?;
    crate::metrics::ensure_finite(&x_rows, point)?;

    // Forward through the later blocks, each on a variable holding its input.
    let mut segments: Vec<(Var, Tensor)> = Vec::with_capacity(later.after.len());
    let mut h = spliced_out.clone();
    for block in &later.after {
        let input = Var::from_tensor(&h.detach())?;
        h = block.forward(input.as_tensor(), &ctx, &mut NoHook, None)?;
        segments.push((input, h.clone()));
    }
    let last_row = h.narrow(1, n - 1, 1)?.squeeze(0)?;
    let head = Head::run(model, later, &last_row)?;
    let target = match request.target {
        Some(t) => t as usize,
        None => head.argmax(),
    };
    let metric_value = head.metric(request.metric, target);
    let probability = head.log_prob(target).exp();
    ensure!(
        metric_value.is_finite(),
        "the metric is not finite ({metric_value}); the model overflowed (try --dtype f32)"
    );

    timings.forward_after = clock.elapsed().as_secs_f64();
    let clock = std::time::Instant::now();

    // Backward: head, then block by block, then the splice.
    let d_h = head_backward(
        model,
        later,
        &last_row,
        &head.metric_gradient(request.metric, target),
    )?;
    let hidden = cfg.hidden_size;
    let mut grad = Tensor::cat(
        &[
            &Tensor::zeros((1, n - 1, hidden), d_h.dtype(), d_h.device())?,
            &d_h.unsqueeze(0)?,
        ],
        1,
    )?;
    for (input, output) in segments.iter().rev() {
        let grads = (output * grad.to_dtype(output.dtype())?)?
            .sum_all()?
            .backward()?;
        grad = grads
            .get(input.as_tensor())
            .cloned()
            .context("a block's input gradient is missing")?;
    }
    let grads = (&spliced_out * grad.to_dtype(spliced_out.dtype())?)?
        .sum_all()?
        .backward()?;
    let zero_grad = |leaf: &Var| leaf.as_tensor().zeros_like();
    let d_f = match grads.get(f.as_tensor()) {
        Some(g) => g.clone(),
        None => zero_grad(&f)?,
    };
    let d_x = match grads.get(err.as_tensor()) {
        Some(g) => g.clone(),
        None => zero_grad(&err)?,
    };

    timings.backward = clock.elapsed().as_secs_f64();

    let f_rows = f.as_tensor().to_vec2::<f32>()?;
    let d_f_rows = d_f.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut features = Vec::new();
    for (row, (acts, grads)) in f_rows.iter().zip(&d_f_rows).enumerate() {
        for (feature, (&a, &g)) in acts.iter().zip(grads).enumerate() {
            if a > 0.0 {
                features.push(FeatureAttribution {
                    position: row + 1,
                    feature: feature as u32,
                    activation: a,
                    attribution: a as f64 * g as f64,
                });
            }
        }
    }
    rank(&mut features);

    let err_rows = err.as_tensor().to_vec2::<f32>()?;
    let d_x_rows = d_x.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut error = vec![0.0; n_prompt];
    for (row, (e, g)) in err_rows.iter().zip(&d_x_rows).enumerate() {
        error[row + 1] = e.iter().zip(g).map(|(&e, &g)| e as f64 * g as f64).sum();
    }

    let attribution = Attribution {
        target: target as u32,
        position: p,
        metric: request.metric,
        metric_value,
        probability,
        features,
        error,
        timings,
    };
    let prepared = Prepared {
        block_input,
        x,
        f: f.as_tensor().detach(),
        err: err.as_tensor().detach(),
        ctx,
        point,
        target,
        metric: request.metric,
        metric_value,
    };
    Ok((attribution, prepared))
}

/// Sorts by |attribution| descending; ties by position, then feature id.
fn rank(features: &mut [FeatureAttribution]) {
    features.sort_by(|a, b| {
        b.attribution
            .abs()
            .total_cmp(&a.attribution.abs())
            .then(a.position.cmp(&b.position))
            .then(a.feature.cmp(&b.feature))
    });
}

impl Prepared {
    /// The clean splice `[n, d]`: the BOS row of `x`, then `x_hat(f) + err`.
    pub fn spliced(&self, sae: &JumpReluSae) -> Result<Tensor> {
        let rest = (sae.decode(&self.f)? + &self.err)?;
        Ok(Tensor::cat(&[&self.x.narrow(0, 0, 1)?, &rest], 0)?)
    }
}

/// What an ablation rerun starts from: kept from the attribution pass.
pub struct Prepared {
    /// The residual stream entering block `L`.
    block_input: Tensor,
    /// The site's activation `[n, d]`, the feature activations `[n - 1, d_sae]` and the error
    /// term `[n - 1, d]` (rows from position 1).
    x: Tensor,
    f: Tensor,
    err: Tensor,
    ctx: SequenceContext,
    point: HookPoint,
    target: usize,
    metric: Metric,
    metric_value: f64,
}

/// The exact effect of zeroing each of `chosen`'s activations in the splice (one rerun of the
/// later blocks each), next to its linear estimate `-attribution`.
pub fn ablate(
    model: &Gemma2,
    later: &LaterBlocks,
    sae: &JumpReluSae,
    prepared: &Prepared,
    chosen: &[FeatureAttribution],
) -> Result<Vec<Ablation>> {
    let d_sae = prepared.f.dim(1)?;
    chosen
        .iter()
        .map(|c| {
            let row = c.position - 1;
            let mut mask = vec![1f32; d_sae];
            mask[c.feature as usize] = 0.0;
            let mask = Tensor::from_vec(mask, d_sae, prepared.f.device())?;
            let f_row = prepared.f.narrow(0, row, 1)?.broadcast_mul(&mask)?;
            let f = prepared.f.slice_assign(&[row..row + 1, 0..d_sae], &f_row)?;
            let rest = (sae.decode(&f)? + &prepared.err)?;
            let spliced = Tensor::cat(&[&prepared.x.narrow(0, 0, 1)?, &rest], 0)?;
            let value = metric_with_splice(model, later, sae, prepared, spliced)?;
            Ok(Ablation {
                position: c.position,
                feature: c.feature,
                effect: value - prepared.metric_value,
                estimate: -c.attribution,
            })
        })
        .collect()
}

/// The metric with `spliced` `[n, d]` (f32, rows from BOS to the read position) at the hook
/// point instead of the clean splice, through the same ops as the attribution pass.
pub fn metric_with_splice(
    model: &Gemma2,
    later: &LaterBlocks,
    sae: &JumpReluSae,
    prepared: &Prepared,
    spliced: Tensor,
) -> Result<f64> {
    let ctx = &prepared.ctx;
    let mut h = match &later.own {
        Some(block) => {
            let mut splice = Splice {
                x: None,
                replacement: Some(spliced),
                leaves: None,
                point: prepared.point,
            };
            let mut hook = SpliceHook {
                splice: &mut splice,
                sae,
            };
            block.forward(&prepared.block_input, ctx, &mut hook, None)?
        }
        None => spliced.unsqueeze(0)?.to_dtype(model.dtype())?,
    };
    for block in &later.after {
        h = block.forward(&h, ctx, &mut NoHook, None)?;
    }
    let n = h.dim(1)?;
    let head = Head::run(model, later, &h.narrow(1, n - 1, 1)?.squeeze(0)?)?;
    Ok(head.metric(prepared.metric, prepared.target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(logits: Vec<f64>) -> Head {
        let cap_slope = vec![1.0; logits.len()];
        Head { logits, cap_slope }
    }

    #[test]
    fn head_gradients_match_finite_differences() {
        let logits = vec![0.3, 9.0, -1.0, 2.5];
        for metric in [Metric::Prob, Metric::Logprob, Metric::Logit] {
            let g = head(logits.clone()).metric_gradient(metric, 1);
            for v in 0..logits.len() {
                let at = |d: f64| {
                    let mut l = logits.clone();
                    l[v] += d;
                    head(l).metric(metric, 1)
                };
                let numeric = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!(
                    (numeric - g[v]).abs() < 1e-8,
                    "{metric:?} [{v}]: {} vs {numeric}",
                    g[v]
                );
            }
        }
    }

    #[test]
    fn ranking_is_by_magnitude_then_position_then_id() {
        let entry = |position, feature, attribution| FeatureAttribution {
            position,
            feature,
            activation: 1.0,
            attribution,
        };
        let mut list = vec![
            entry(1, 5, 0.5),
            entry(2, 1, -2.0),
            entry(1, 9, 0.5),
            entry(1, 2, 0.5),
        ];
        rank(&mut list);
        let order: Vec<(usize, u32)> = list.iter().map(|e| (e.position, e.feature)).collect();
        assert_eq!(order, vec![(2, 1), (1, 2), (1, 5), (1, 9)]);
        assert_eq!(head(vec![1.0, 3.0, 3.0]).argmax(), 1);
    }
}
