//! The JSON contract of `gemscope explain`: one feature card per feature (fields marked † in the
//! issue are a contract: `feature`, `threshold`, `decoder_norm`, `logits.{positive,negative}[k]
//! .{id,value}`, `neighbours[k].{feature,cosine}`).

use super::{ModelInfo, SaeInfo};
use crate::model::HookPoint;
use serde::Serialize;

/// One vocabulary token and how much a feature's decoder direction moves its logit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenEffect {
    /// The token id.
    pub id: u32,
    /// The token's piece as the vocabulary spells it (`▁` for a leading space).
    pub token: String,
    /// `W_dec[f] · diag(1 + w_final_norm) · W_E[id]`: the direct effect on the logit per unit of
    /// activation.
    pub value: f32,
}

/// The tokens a feature promotes (largest values first) and suppresses (most negative first),
/// ties by lower id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogitEffects {
    pub positive: Vec<TokenEffect>,
    pub negative: Vec<TokenEffect>,
}

/// A feature whose decoder row points the same way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbour {
    pub feature: u32,
    /// Cosine similarity of the two decoder rows.
    pub cosine: f32,
    /// The neighbour's first cached label; `null` when none is cached.
    pub label: Option<String>,
}

/// Everything `explain` knows about one feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureCard {
    pub feature: u32,
    /// The first cached Neuronpedia explanation, in the export's order; `null` when none.
    pub label: Option<String>,
    /// Every cached explanation, in the export's order.
    pub labels: Vec<String>,
    /// The JumpReLU threshold of the feature.
    pub threshold: f32,
    /// L2 norm of `W_enc[:, f]`.
    pub encoder_norm: f32,
    /// L2 norm of `W_dec[f]`.
    pub decoder_norm: f32,
    /// `b_enc[f]`.
    pub encoder_bias: f32,
    pub logits: LogitEffects,
    /// The most similar decoder rows, cosine descending, ties by lower id; the feature itself
    /// excluded.
    pub neighbours: Vec<Neighbour>,
    /// The feature's Neuronpedia page, for canonical Gemma Scope SAEs.
    pub neuronpedia_url: Option<String>,
    /// † The fraction of tokens the feature fires on: over the store's corpus with
    /// `--examples STORE`, else Neuronpedia's `frac_nonzero` when cached.
    pub density: Option<f64>,
    /// † The largest activation: over the store's corpus with `--examples STORE`, else
    /// Neuronpedia's approximate `maxActApprox` when cached.
    pub max_activation: Option<f64>,
    /// † Non-BOS tokens of the store's corpus, and how many had the feature active (`--examples`).
    pub tokens: Option<u64>,
    pub active: Option<u64>,
    /// The store's log10 activation histogram (`--examples`).
    pub histogram: Option<crate::report::examples::Histogram>,
    /// † Top activating examples from a corpus store (`--examples STORE`); `null` without one.
    pub examples: Option<Vec<crate::report::examples::Example>>,
}

/// The whole output of `gemscope explain --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub model: ModelInfo,
    pub sae: SaeInfo,
    pub hook: HookPoint,
    /// Where the labels came from: the label cache's index file, or `null` when none is cached.
    pub labels_source: Option<String>,
    pub features: Vec<FeatureCard>,
}
