//! The JSON contract of `gemscope attribute`: the target, ranked feature attributions, the SAE
//! error's share and ablation checks.

use super::{ModelInfo, SaeInfo};
use crate::model::HookPoint;
use serde::Serialize;

/// The quantity whose gradient is taken, read at the target token of the chosen position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// The target's probability (softmax of the soft-capped logits).
    Prob,
    /// The target's log-probability.
    Logprob,
    /// The target's soft-capped logit, as the model outputs it.
    Logit,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Prob => "prob",
            Metric::Logprob => "logprob",
            Metric::Logit => "logit",
        }
    }
}

/// One token of the prompt, BOS first.
#[derive(Debug, Clone, Serialize)]
pub struct PromptToken {
    pub position: usize,
    pub id: u32,
    /// The vocabulary's piece (`▁` for a leading space).
    pub text: String,
}

/// The token whose metric is attributed, and where it is read.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    pub id: u32,
    pub text: String,
    /// The position whose next-token distribution is read (BOS is 0).
    pub position: usize,
    /// The target's probability there.
    pub probability: f64,
    /// True when `--target`/`--target-id` chose it; false for the model's most likely token.
    pub explicit: bool,
}

/// One active feature at one position.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionEntry {
    pub position: usize,
    /// The piece of the token at `position`.
    pub token: String,
    pub feature: u32,
    pub activation: f32,
    /// `activation * d metric / d activation`.
    pub attribution: f64,
    /// The feature's first Neuronpedia label when cached; `null` otherwise.
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

/// A feature's attributions summed over the positions where it is active.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureTotal {
    pub feature: u32,
    pub attribution_sum: f64,
    /// Positions where it is active (at or before the read position).
    pub positions: usize,
    /// The feature's first Neuronpedia label when cached; `null` otherwise.
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

/// The exact effect of zeroing one feature's activation at one position in the splice.
#[derive(Debug, Clone, Serialize)]
pub struct AblationEntry {
    pub position: usize,
    pub feature: u32,
    /// The metric with the feature removed minus the metric without: the exact change.
    pub effect: f64,
    /// The linear prediction of that change, `-attribution`.
    pub estimate: f64,
}

/// The whole output of `gemscope attribute`.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub model: ModelInfo,
    pub sae: SaeInfo,
    pub hook: HookPoint,
    pub prompt: String,
    pub tokens: Vec<PromptToken>,
    pub target: TargetInfo,
    pub metric: Metric,
    pub metric_value: f64,
    /// Active features at positions `1..=target.position`, all of which have an attribution.
    pub active_features: usize,
    /// How many `attributions` and `features` list (`null` with `--all`: every one).
    pub top_k: Option<usize>,
    /// By |attribution| descending, ties by position then feature id.
    pub attributions: Vec<AttributionEntry>,
    /// Per feature, summed over positions, by |attribution_sum| descending, ties by id.
    pub features: Vec<FeatureTotal>,
    /// The SAE error term's attribution per position, BOS first (0 for BOS and after the read position).
    pub error_attribution: Vec<f64>,
    /// Sum of every feature attribution (not only the listed ones).
    pub feature_attribution_total: f64,
    pub error_attribution_total: f64,
    /// `sum |error_attribution| / (sum |feature attributions| + sum |error_attribution|)`.
    pub error_share: f64,
    /// Per position: its features' attributions plus its error attribution.
    pub token_attribution: Vec<f64>,
    /// With `--ablate K`: the top K attributions, each ablated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ablation: Option<Vec<AblationEntry>>,
}
