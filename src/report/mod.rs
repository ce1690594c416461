//! The `Serialize` report structs: the JSON contract of every command. Formatters only format these.

pub mod card;
pub mod dashboard;
pub mod layers;
pub mod search;

use crate::metrics::{AggregateFeature, FeatureActivation};
use crate::model::{HookPoint, Site};
use serde::{Deserialize, Serialize};

pub mod attribution;
pub mod examples;

/// Bumped whenever a field of the JSON output changes meaning or disappears (adding fields does not).
pub const SCHEMA_VERSION: u32 = 1;

/// A Neuronpedia page set: `https://www.neuronpedia.org/{model}/{sae_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neuronpedia {
    /// `gemma-2-2b`, `gemma-2-9b`, `gemma-2-9b-it` or `gemma-2-27b`: the model the SAEs were
    /// trained on.
    pub model: String,
    /// `{layer}-gemmascope-{site}-{width}`, e.g. `20-gemmascope-res-16k`.
    pub sae_id: String,
}

impl Neuronpedia {
    /// The page of one feature.
    pub fn url(&self, feature: u32) -> String {
        format!(
            "https://www.neuronpedia.org/{}/{}/{feature}",
            self.model, self.sae_id
        )
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sampling {
    /// 0: greedy (argmax, ties to the lowest id); otherwise softmax(logits / temperature).
    pub temperature: f64,
    /// Nucleus sampling: draw from the smallest set of most likely tokens whose mass is >= top_p.
    pub top_p: f64,
    pub seed: u64,
}

/// How steering writes a feature into the residual stream.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SteerMode {
    /// Add `S * W_dec[F]` at every position.
    Add,
    /// Set the feature's activation to S: add `(S - f_F(x)) * W_dec[F]`, where `f_F(x)` is the
    /// feature's JumpReLU activation on the incoming residual; the SAE's error term is untouched.
    Clamp,
}

impl SteerMode {
    pub fn name(self) -> &'static str {
        match self {
            SteerMode::Add => "add",
            SteerMode::Clamp => "clamp",
        }
    }
}

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
    /// The feature's first Neuronpedia label when cached; `null` otherwise.
    pub label: Option<String>,
    /// The feature's Neuronpedia page, for canonical Gemma Scope SAEs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

impl From<FeatureActivation> for TopFeature {
    fn from(f: FeatureActivation) -> Self {
        Self {
            feature: f.feature,
            activation: f.activation,
            label: None,
            neuronpedia_url: None,
        }
    }
}

/// A feature ranked over a whole prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateTopFeature {
    #[serde(flatten)]
    pub stats: AggregateFeature,
    /// The feature's first Neuronpedia label when cached; `null` otherwise.
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

impl From<AggregateFeature> for AggregateTopFeature {
    fn from(stats: AggregateFeature) -> Self {
        Self {
            stats,
            label: None,
            neuronpedia_url: None,
        }
    }
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
    /// `features --highlight F`: feature F's activation at every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight: Option<Highlight>,
}

/// One feature's activation at every token of a prompt (BOS first).
#[derive(Debug, Clone, Serialize)]
pub struct Highlight {
    pub feature: u32,
    pub activations: Vec<f32>,
    /// The largest activation over the non-BOS tokens (what the shading is relative to).
    pub max: f32,
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

    /// Puts each listed feature's label (`label_of(feature)`) next to it.
    pub fn attach_labels(&mut self, label_of: impl Fn(u32) -> Option<String>) {
        for token in &mut self.tokens {
            for f in &mut token.top_features {
                f.label = label_of(f.feature);
            }
        }
        for f in &mut self.top_features {
            f.label = label_of(f.stats.feature);
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
    pub hook: HookPoint,
    pub top_k: usize,
    pub prompts: Vec<PromptReport>,
}

impl FeaturesReport {
    /// Every label the report carries, by feature (per-token and aggregate entries alike).
    pub fn labels(&self) -> std::collections::HashMap<u32, String> {
        let mut labels = std::collections::HashMap::new();
        for prompt in &self.prompts {
            let per_token = prompt
                .tokens
                .iter()
                .flat_map(|t| &t.top_features)
                .map(|f| (f.feature, &f.label));
            let aggregate = prompt
                .top_features
                .iter()
                .map(|f| (f.stats.feature, &f.label));
            for (feature, label) in per_token.chain(aggregate) {
                if let Some(label) = label {
                    labels.entry(feature).or_insert_with(|| label.clone());
                }
            }
        }
        labels
    }
}

/// One line of `--jsonl`: a prompt with the context a line read alone needs.
#[derive(Debug, Clone, Serialize)]
pub struct PromptLine<'a> {
    pub schema_version: u32,
    pub hook: HookPoint,
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
    pub hook: HookPoint,
    pub prompts: usize,
    pub batch_size: usize,
    pub max_tokens: Option<usize>,
    pub metrics: EvalMetrics,
    pub gates: Vec<GateResult>,
    pub baseline: Option<BaselineComparison>,
    /// True when every gate passed: the exit status is 0 exactly then.
    pub passed: bool,
}

/// The sampling settings of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct SamplingInfo {
    #[serde(flatten)]
    pub sampling: Sampling,
    pub max_new_tokens: usize,
}

/// One continuation: what was generated and how fast.
#[derive(Debug, Clone, Serialize)]
pub struct Continuation {
    /// The new tokens; a stop token, when one ended generation, is the last.
    pub generated_ids: Vec<u32>,
    /// Their text, special tokens left out.
    pub text: String,
    /// `stop_token` or `max_new_tokens`.
    pub stop_reason: &'static str,
    pub stop_token: Option<u32>,
    /// Seconds for the first token (the prompt's forward pass), then for the rest.
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Tokens per second after the first; `null` with fewer than two tokens.
    pub tokens_per_second: Option<f64>,
}

/// The prompt as the model saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PromptInfo {
    /// The prompt as given.
    pub prompt: String,
    /// Whether the chat template was applied.
    pub chat: bool,
    /// The text tokenized: the prompt, or the chat template around it.
    pub prompt_text: String,
    /// Its token ids, BOS first.
    pub prompt_ids: Vec<u32>,
    /// Token ids that end generation.
    pub stop_ids: Vec<u32>,
}

/// The whole output of `gemscope generate --json`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub model: ModelInfo,
    #[serde(flatten)]
    pub prompt: PromptInfo,
    pub sampling: SamplingInfo,
    #[serde(flatten)]
    pub continuation: Continuation,
}

/// One steered feature.
#[derive(Debug, Clone, Serialize)]
pub struct SteeringEntry {
    pub feature: u32,
    pub strength: f32,
    /// The feature's first Neuronpedia label when cached; `null` otherwise.
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

/// The whole output of `gemscope steer --json`.
#[derive(Debug, Clone, Serialize)]
pub struct SteerReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub model: ModelInfo,
    pub sae: SaeInfo,
    /// Where steering writes: the residual stream after block `layer`.
    pub hook: HookPoint,
    pub layer: usize,
    pub mode: SteerMode,
    pub steering: Vec<SteeringEntry>,
    #[serde(flatten)]
    pub prompt: PromptInfo,
    pub sampling: SamplingInfo,
    /// Without steering, same sampling settings and seed.
    pub baseline: Continuation,
    pub steered: Continuation,
}
#[derive(Debug, Clone, Serialize)]
/// The output of `gemscope list-saes --json`.
pub struct SaeListing {
    pub schema_version: u32,
    pub release: String,
    /// The commit the listing describes.
    pub revision: String,
    /// The model named with --model; absent with --release.
    pub model: Option<String>,
    pub site: Option<Site>,
    /// The Neuronpedia model id, for a Gemma Scope release.
    pub neuronpedia_model: Option<String>,
    pub saes: Vec<SaeListingRow>,
}

#[derive(Debug, Clone, Serialize)]
/// One SAE of a release.
pub struct SaeListingRow {
    pub layer: usize,
    pub width: String,
    pub l0: u32,
    pub canonical: bool,
    pub path: String,
    /// Neuronpedia's SAE id, for the canonical SAE of a Gemma Scope release.
    pub neuronpedia_id: Option<String>,
}

/// The metrics of `gemscope eval` (the `metrics` object of its JSON: a contract).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean number of active features per non-BOS token.
    pub mean_l0: f64,
    /// `1 - mse / var(x)`, pooled over all non-BOS tokens and dimensions (unbiased variance).
    pub variance_explained: f64,
    pub mse: f64,
    /// Mean over non-BOS tokens of `cos(x, x_hat)`.
    pub cosine_similarity: f64,
    /// Fraction of features that never fired on any non-BOS token.
    pub dead_fraction: f64,
    /// Non-BOS tokens seen.
    pub tokens: u64,
    /// Next-token predictions scored (every position but each prompt's last, BOS included).
    pub predictions: u64,
    /// Mean next-token cross-entropy of the unmodified model.
    pub ce_loss_clean: f64,
    /// ... with the site replaced by the SAE reconstruction at every non-BOS position.
    pub ce_loss_spliced: f64,
    /// ... with the site set to zero at every non-BOS position.
    pub ce_loss_zero_ablation: f64,
    /// `ce_loss_spliced - ce_loss_clean`.
    pub delta_loss: f64,
    /// `(zero_ablation - spliced) / (zero_ablation - clean)`: 1 is a perfect splice (SAELens' definition).
    pub ce_loss_score: f64,
    /// Mean KL(clean || spliced) of the next-token distributions.
    pub kl_div: f64,
}
