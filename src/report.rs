//! The `Serialize` report structs: the JSON contract of every command. Formatters only format these.

use crate::hub::Neuronpedia;
use crate::metrics::{AggregateFeature, FeatureActivation};
use crate::model::Site;
use serde::Serialize;

/// Bumped whenever a field of the JSON output changes meaning or disappears (adding fields does not).
pub const SCHEMA_VERSION: u32 = 1;

/// Where the model came from and what was run.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The hub repo id or local directory the model came from.
    pub source: String,
    /// The hub commit of the model files; `null` for a local directory.
    pub revision: Option<String>,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub device: String,
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaeInfo {
    /// Where the SAE came from: `repo/path` on the hub, or the local file.
    pub source: String,
    /// The local file read (in the Hugging Face cache for hub SAEs).
    pub file: String,
    /// Hub repo, path within it and commit; `null` for a local file.
    pub repo: Option<String>,
    pub path: Option<String>,
    pub revision: Option<String>,
    /// Gemma Scope width (`16k`) and `average_l0` folder, when the SAE came from a release.
    pub width: Option<String>,
    pub l0: Option<u32>,
    pub d_in: usize,
    pub d_sae: usize,
    /// Neuronpedia's ids for this SAE (canonical Gemma Scope SAEs only).
    pub neuronpedia: Option<NeuronpediaInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NeuronpediaInfo {
    pub model: String,
    pub sae_id: String,
    /// A feature's page: replace `{feature}` with its id.
    pub url_template: String,
}

impl From<&Neuronpedia> for NeuronpediaInfo {
    fn from(n: &Neuronpedia) -> Self {
        Self {
            model: n.model.clone(),
            sae_id: n.sae_id.clone(),
            url_template: n.url(0).replace("/0", "/{feature}"),
        }
    }
}

/// A feature active at a token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopFeature {
    pub feature: u32,
    pub activation: f32,
    /// The feature's Neuronpedia page, for canonical Gemma Scope SAEs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

impl From<FeatureActivation> for TopFeature {
    fn from(f: FeatureActivation) -> Self {
        Self {
            feature: f.feature,
            activation: f.activation,
            neuronpedia_url: None,
        }
    }
}

/// A feature ranked over a whole prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateTopFeature {
    #[serde(flatten)]
    pub stats: AggregateFeature,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

impl From<AggregateFeature> for AggregateTopFeature {
    fn from(stats: AggregateFeature) -> Self {
        Self {
            stats,
            neuronpedia_url: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct HookInfo {
    pub layer: usize,
    pub site: Site,
}

/// One token of a prompt and the features it lights up.
#[derive(Debug, Clone, Serialize)]
pub struct TokenReport {
    pub position: usize,
    pub id: u32,
    /// The token's piece as the vocabulary spells it (`▁` for a leading space, `<0x0A>` for a raw byte).
    pub text: String,
    /// True for the BOS token, which every statistic excludes.
    pub bos: bool,
    /// Number of active features (activation > 0).
    pub l0: usize,
    /// The strongest active features, by activation descending, ties by lower id.
    pub top_features: Vec<TopFeature>,
}

/// One prompt's tokens and statistics; `mean_l0`, `variance_explained` and `mse` exclude BOS.
#[derive(Debug, Clone, Serialize)]
pub struct PromptReport {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<TokenReport>,
    pub mean_l0: f64,
    /// `null` when the SAE decoder was not loaded.
    pub variance_explained: Option<f64>,
    pub mse: Option<f64>,
    /// Features ranked by summed activation over the non-BOS tokens.
    pub top_features: Vec<AggregateTopFeature>,
}

impl PromptReport {
    /// Adds each listed feature's Neuronpedia page.
    pub fn link_neuronpedia(&mut self, neuronpedia: &Neuronpedia) {
        for token in &mut self.tokens {
            for f in &mut token.top_features {
                f.neuronpedia_url = Some(neuronpedia.url(f.feature));
            }
        }
        for f in &mut self.top_features {
            f.neuronpedia_url = Some(neuronpedia.url(f.stats.feature));
        }
    }
}

/// The whole output of `gemscope features`.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub model: ModelInfo,
    pub sae: SaeInfo,
    pub hook: HookInfo,
    pub top_k: usize,
    pub prompts: Vec<PromptReport>,
}

/// One line of `--jsonl`: a prompt with the context a line read alone needs.
#[derive(Debug, Clone, Serialize)]
pub struct PromptLine<'a> {
    pub schema_version: u32,
    pub hook: HookInfo,
    pub sae: &'a SaeInfo,
    #[serde(flatten)]
    pub prompt: &'a PromptReport,
}

/// One pass/fail check of `gemscope eval`: a threshold gate or a baseline comparison.
#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    /// The flag's name (`max_delta_loss`) or `baseline_{metric}`.
    pub name: String,
    /// The metric it checks.
    pub metric: &'static str,
    /// `<=` or `>=`: how `value` must compare with `threshold`.
    pub op: &'static str,
    pub threshold: f64,
    pub value: f64,
    pub passed: bool,
}

/// A metric side by side with a saved report's.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineRow {
    pub metric: &'static str,
    pub baseline: f64,
    pub current: f64,
    /// `(current - baseline) / |baseline|`.
    pub relative_change: f64,
    /// `higher` or `lower`: which way is better.
    pub better: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaselineComparison {
    pub file: String,
    /// The relative worsening each metric may show before its gate fails.
    pub tolerance: f64,
    pub metrics: Vec<BaselineRow>,
}

/// The whole output of `gemscope eval`, and what `--save` writes and `--baseline` reads.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub model: ModelInfo,
    pub sae: SaeInfo,
    pub hook: HookInfo,
    pub prompts: usize,
    pub batch_size: usize,
    pub max_tokens: Option<usize>,
    pub metrics: crate::eval::EvalMetrics,
    pub gates: Vec<GateResult>,
    pub baseline: Option<BaselineComparison>,
    /// True when every gate passed: the exit status is 0 exactly then.
    pub passed: bool,
}
