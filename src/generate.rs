//! Autoregressive generation with a KV cache, sampling (greedy, temperature, top-p, seeded), and
//! the SAE steering hook of `gemscope steer`.
//!
//! Steering adds to the residual stream after block L at every position the forward pass runs:
//! the whole prompt (BOS included) on the first step, then each new token. With the cache, the
//! hook sees only the new positions, which is exactly right: the cached keys and values were
//! computed from the already steered past.

use crate::model::{Gemma2, Hook, HookPoint, Site};
use crate::report::Continuation;
pub use crate::report::{Sampling, SteerMode};
use crate::sae::{FeatureEncoder, JumpReluSae};
use crate::tokenizer::PromptTokenizer;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use std::time::Instant;

/// A small seeded generator (SplitMix64): the same seed draws the same tokens on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// The highest logit's id; ties go to the lowest id, NaNs never win.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The nucleus of `probs`: ids by probability descending (ties by lower id), up to and including
/// the first at which the running mass reaches `top_p`.
pub fn nucleus(probs: &[f64], top_p: f64) -> Vec<(u32, f64)> {
    let mut order: Vec<u32> = (0..probs.len() as u32).collect();
    order.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for id in order {
        let p = probs[id as usize];
        if p <= 0.0 {
            break;
        }
        kept.push((id, p));
        mass += p;
        if mass >= top_p {
            break;
        }
    }
    kept
}

/// Picks the next token from the last position's logits.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut SplitMix64) -> u32 {
    if sampling.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / sampling.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let kept = nucleus(&probs, sampling.top_p);
    let mass: f64 = kept.iter().map(|(_, p)| p).sum();
    let mut u = rng.next_f64() * mass;
    for &(id, p) in &kept {
        if u < p {
            return id;
        }
        u -= p;
    }
    // Rounding left u at the very top: the last kept token.
    kept.last().map_or_else(|| argmax(logits), |&(id, _)| id)
}

/// The steering hook: rewrites the residual stream after block `layer` at every position.
pub struct Steering {
    point: HookPoint,
    mode: SteerMode,
    /// `[k]`, f32.
    strengths: Tensor,
    /// `W_dec[F]` rows, `[k, d_in]`, f32.
    directions: Tensor,
    /// Add mode: `sum_i S_i * W_dec[F_i]`, `[d_in]`.
    added: Tensor,
    /// Clamp mode: the encoder of the steered features.
    encoder: Option<FeatureEncoder>,
}

impl Steering {
    /// Steering of `(feature, strength)` pairs through the SAE read at `layer`'s residual stream.
    pub fn new(
        sae: &JumpReluSae,
        layer: usize,
        mode: SteerMode,
        features: &[(usize, f32)],
    ) -> Result<Self> {
        ensure!(!features.is_empty(), "no feature to steer");
        let ids: Vec<usize> = features.iter().map(|&(f, _)| f).collect();
        let rows = ids
            .iter()
            .map(|&f| {
                ensure!(
                    f < sae.d_sae(),
                    "feature {f} does not exist: the SAE has {} features (0..={})",
                    sae.d_sae(),
                    sae.d_sae() - 1
                );
                Ok(sae.decoder_direction(f)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let directions = Tensor::stack(&rows, 0)?;
        // Summed one feature at a time, in order, as a Python loop over the features would.
        let mut added = rows[0].zeros_like()?;
        for (row, &(_, s)) in rows.iter().zip(features) {
            added = (added + (row * s as f64)?)?;
        }
        let strengths: Vec<f32> = features.iter().map(|&(_, s)| s).collect();
        let device = directions.device().clone();
        Ok(Self {
            point: HookPoint {
                layer,
                site: Site::Res,
            },
            mode,
            strengths: Tensor::from_vec(strengths, features.len(), &device)?,
            directions,
            added,
            encoder: match mode {
                SteerMode::Add => None,
                SteerMode::Clamp => Some(sae.feature_encoder(&ids)?),
            },
        })
    }

    /// The steered residual `[b, t, d]` (f32) for the incoming one.
    pub fn steer(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        match (&self.mode, &self.encoder) {
            (SteerMode::Clamp, Some(encoder)) => {
                let f = encoder.encode(&x)?;
                let coef = f.neg()?.broadcast_add(&self.strengths)?;
                x + coef.broadcast_matmul(&self.directions)?
            }
            _ => x.broadcast_add(&self.added),
        }
    }
}

impl Hook for Steering {
    fn visit(
        &mut self,
        point: HookPoint,
        activation: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if point != self.point {
            return Ok(None);
        }
        self.steer(activation).map(Some)
    }
}

/// What a generation run does besides sampling.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end generation (kept as the last generated id): `<eos>`, `<end_of_turn>`.
    pub stop_ids: Vec<u32>,
    /// Keep every step's last-position logits (for tests; a real vocabulary makes them large).
    pub keep_logits: bool,
    /// Reuse keys and values (the normal path). Without, every step recomputes the whole
    /// sequence: the reference the cache is tested against.
    pub use_cache: bool,
}

impl GenerateOptions {
    pub fn new(max_new_tokens: usize, sampling: Sampling, stop_ids: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            sampling,
            stop_ids,
            keep_logits: false,
            use_cache: true,
        }
    }
}

/// One continuation of a prompt.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The new tokens, the stop token (if one came) last.
    pub ids: Vec<u32>,
    /// The stop token that ended generation, or `None` when `max_new_tokens` did.
    pub stop: Option<u32>,
    /// Each step's last-position logits, when asked for.
    pub logits: Vec<Vec<f32>>,
    /// The first step: the whole prompt through the model.
    pub prefill_seconds: f64,
    /// Every later step.
    pub decode_seconds: f64,
}

impl Generation {
    /// Tokens per second after the prompt: the per-token speed of the cached decode.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let n = self.ids.len().saturating_sub(1);
        (n > 0 && self.decode_seconds > 0.0).then(|| n as f64 / self.decode_seconds)
    }
}

/// Generates up to `options.max_new_tokens` tokens after `prompt` (BOS included), calling
/// `on_token` with each as it is chosen. `hook` runs in every forward pass (steering).
pub fn generate(
    model: &Gemma2,
    prompt: &[u32],
    options: &GenerateOptions,
    hook: &mut dyn Hook,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    ensure!(!prompt.is_empty(), "no tokens to run");
    ensure!(
        options.max_new_tokens >= 1,
        "--max-new-tokens must be at least 1"
    );
    let context = model.config().max_position_embeddings;
    ensure!(
        prompt.len() + options.max_new_tokens <= context,
        "the prompt's {} tokens and --max-new-tokens {} exceed the model's context of {context}",
        prompt.len(),
        options.max_new_tokens
    );
    let device = model.device();
    let mut rng = SplitMix64::new(options.sampling.seed);
    let mut cache = model.new_cache();
    let mut sequence = prompt.to_vec();
    let mut generation = Generation {
        ids: Vec::new(),
        stop: None,
        logits: Vec::new(),
        prefill_seconds: 0.0,
        decode_seconds: 0.0,
    };
    let start = Instant::now();
    for step in 0..options.max_new_tokens {
        let logits = if options.use_cache {
            let new = if step == 0 {
                prompt
            } else {
                &sequence[sequence.len() - 1..]
            };
            let input = Tensor::new(new, device)?.unsqueeze(0)?;
            model.forward_cached(&input, &mut cache, hook)?
        } else {
            let input = Tensor::new(sequence.as_slice(), device)?.unsqueeze(0)?;
            let all = model.forward(&input, hook)?;
            all.get(0)?.get(sequence.len() - 1)?.unsqueeze(0)?
        };
        let logits = logits
            .to_dtype(DType::F32)?
            .squeeze(0)?
            .to_vec1::<f32>()
            .with_context(|| format!("generation step {}", step + 1))?;
        let token = sample(&logits, &options.sampling, &mut rng);
        if options.keep_logits {
            generation.logits.push(logits);
        }
        if step == 0 {
            generation.prefill_seconds = start.elapsed().as_secs_f64();
        }
        sequence.push(token);
        generation.ids.push(token);
        on_token(token)?;
        if options.stop_ids.contains(&token) {
            generation.stop = Some(token);
            break;
        }
    }
    generation.decode_seconds = start.elapsed().as_secs_f64() - generation.prefill_seconds;
    Ok(generation)
}

/// The Gemma chat template for one user turn, ending where the model's turn begins.
pub fn chat_prompt(prompt: &str) -> String {
    format!("<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n")
}

impl Generation {
    /// The report's view of this generation: ids, text (special tokens left out), why it stopped
    /// and how fast it ran.
    pub fn continuation(&self, tokenizer: &PromptTokenizer) -> Result<Continuation> {
        Ok(Continuation {
            generated_ids: self.ids.clone(),
            text: tokenizer.decode(&self.ids)?,
            stop_reason: if self.stop.is_some() {
                "stop_token"
            } else {
                "max_new_tokens"
            },
            stop_token: self.stop,
            prefill_seconds: self.prefill_seconds,
            decode_seconds: self.decode_seconds,
            tokens_per_second: self.tokens_per_second(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_ties_go_to_the_lowest_id() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.5]), 1);
        let mut rng = SplitMix64::new(9);
        assert_eq!(sample(&[0.0, 2.0, 2.0], &Sampling::greedy(), &mut rng), 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        let probs = [0.1, 0.4, 0.2, 0.3];
        let ids = |p| {
            nucleus(&probs, p)
                .iter()
                .map(|&(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(0.4), vec![1]);
        assert_eq!(ids(0.5), vec![1, 3]);
        assert_eq!(ids(0.7), vec![1, 3]);
        assert_eq!(ids(0.71), vec![1, 3, 2]);
        assert_eq!(ids(1.0), vec![1, 3, 2, 0]);
        // Ties in probability keep the lower id first.
        assert_eq!(nucleus(&[0.5, 0.5], 0.5)[0].0, 0);
    }

    #[test]
    fn sampling_follows_the_seed_and_stays_in_the_nucleus() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let s = |seed, top_p| {
            let sampling = Sampling {
                temperature: 1.0,
                top_p,
                seed,
            };
            let mut rng = SplitMix64::new(seed);
            (0..40)
                .map(|_| sample(&logits, &sampling, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(s(1, 1.0), s(1, 1.0));
        assert_ne!(s(1, 1.0), s(2, 1.0));
        // The seven ids with the top logit (i % 7 == 6) hold less than 0.3 of the mass.
        assert!(s(3, 0.2).iter().all(|&id| id % 7 == 6));
    }

    #[test]
    fn the_chat_template_is_gemmas() {
        assert_eq!(
            chat_prompt("Hi"),
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
