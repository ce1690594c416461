//! The `Serialize` report structs: the JSON contract of every command. Formatters only format these.

use crate::metrics::{AggregateFeature, FeatureActivation};
use crate::model::Site;
use serde::Serialize;

/// Bumped whenever a field of the JSON output changes meaning or disappears (adding fields does not).
pub const SCHEMA_VERSION: u32 = 1;

/// Where the model came from and what was run.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The local directory (or, later, hub repo id) given by the user.
    pub source: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub device: String,
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaeInfo {
    pub source: String,
    pub d_in: usize,
    pub d_sae: usize,
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
    pub top_features: Vec<FeatureActivation>,
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
    pub top_features: Vec<AggregateFeature>,
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
