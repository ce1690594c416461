//! Each subcommand's own flags, built from the shared option groups of [`super`]: plain data
//! that the commands turn into a plan. Nothing here runs anything.

use super::{ColorArg, GenerationArgs, HookArgs, ModelArgs, OutputArgs, PromptArgs, SaeArgs};
use crate::hub::models::DEFAULT_MODEL;
use crate::model::Site;
use crate::report::attribution::Metric;
use crate::report::SteerMode;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// Zero-indexed decoder layer to hook.
    #[arg(long, value_name = "N", required_unless_present = "layers")]
    pub layer: Option<usize>,
    /// Several layers in one forward pass, each read with its own SAE (loaded one at a time):
    /// `all`, a range `0-25` or a list `3,7,20`. Output per layer under `layers[i]`, plus a
    /// ranking of the strongest features across them.
    #[arg(long, value_name = "all|A-B|A,B", conflicts_with_all = ["layer", "highlight", "jsonl"])]
    pub layers: Option<String>,
    /// Site within the layer: res (block output), mlp (MLP output), att (heads concatenated, the input of o_proj).
    #[arg(long, value_enum, default_value_t = Site::Res)]
    pub site: Site,
    /// Show no Neuronpedia labels and fetch none.
    #[arg(long)]
    pub no_labels: bool,
    /// Features listed per token and in each prompt's aggregate ranking.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top_k: usize,
    /// Load only the SAE encoder (W_enc, b_enc, threshold): half the SAE's memory, for very wide
    /// SAEs; variance explained and MSE are then not computed (null in JSON).
    #[arg(long)]
    pub encode_only: bool,
    /// How blocks 0..=L are held when prompts run in several groups of 32: auto (layer-major
    /// when the groups' residual streams fit in memory, else streamed per group), layer-major
    /// (each block read once and applied to every group), resident (all kept in memory), or
    /// streamed (read again per group).
    #[arg(long, value_enum, default_value_t = BlockMode::Auto)]
    pub blocks: BlockMode,
    /// Also print each prompt with its tokens shaded by feature F's activation relative to the
    /// prompt's max (with --color never, active tokens are marked `[token:1.23]`).
    #[arg(long, value_name = "F")]
    pub highlight: Option<usize>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Also write the report as one self-contained HTML page (shaded tokens, top features).
    #[arg(long, value_name = "FILE.html", conflicts_with = "jsonl")]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    #[command(flatten)]
    pub prompts: PromptArgs,
    /// Truncate each prompt to N tokens (BOS included).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Use only the first N prompts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Prompts run together, right-padded; the result does not depend on it.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub batch_size: usize,
    /// Fail when ce_loss_spliced - ce_loss_clean exceeds X.
    #[arg(long, value_name = "X")]
    pub max_delta_loss: Option<f64>,
    /// Fail when variance explained is below X.
    #[arg(long, value_name = "X")]
    pub min_variance_explained: Option<f64>,
    /// Fail when the mean L0 exceeds X.
    #[arg(long, value_name = "X")]
    pub max_mean_l0: Option<f64>,
    /// Fail when the mean L0 is below X.
    #[arg(long, value_name = "X")]
    pub min_mean_l0: Option<f64>,
    /// Fail when the CE loss score is below X.
    #[arg(long, value_name = "X")]
    pub min_ce_loss_score: Option<f64>,
    /// Fail when KL(clean || spliced) exceeds X.
    #[arg(long, value_name = "X")]
    pub max_kl_div: Option<f64>,
    /// Compare with a report saved by --save: fail when a metric is worse by more than --tolerance.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Relative worsening allowed against --baseline (0.05 = 5%).
    #[arg(long, value_name = "T", default_value_t = 0.05, requires = "baseline")]
    pub tolerance: f64,
    /// Also write the JSON report to FILE (for a later --baseline).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Colour in the table; NO_COLOR, when set, always turns it off.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

#[derive(Debug, Args)]
pub struct ActivationsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    /// Output file (.npy, float32, shape [tokens, width], the BOS row first).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The prompt (BOS is prepended).
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
}

#[derive(Debug, Args)]
pub struct ListSaesArgs {
    /// Model whose Gemma Scope release to list: a hub id (google/gemma-2-9b) or a directory named
    /// after one.
    #[arg(long, value_name = "ID", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// List this release repo instead of the model's (e.g. google/gemma-scope-2b-pt-mlp).
    #[arg(long, value_name = "REPO", conflicts_with_all = ["model", "site"])]
    pub release: Option<String>,
    /// Only this zero-indexed layer.
    #[arg(long, value_name = "N")]
    pub layer: Option<usize>,
    /// Site whose release to list: res, mlp or att.
    #[arg(long, value_enum, default_value_t = Site::Res)]
    pub site: Site,
    /// Only this width (16k, 65k, 1m, ...).
    #[arg(long, value_name = "WIDTH")]
    pub width: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Use only the local cache, as HF_HUB_OFFLINE=1 does.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Print one JSON document at the end instead of streaming the text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SteerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// Zero-indexed layer whose output (the residual stream after block N) is steered; the SAE
    /// is the residual-stream SAE of that layer.
    #[arg(long, value_name = "N")]
    pub layer: usize,
    /// SAE feature to steer with; repeat for several, each with its own --strength.
    #[arg(long, value_name = "F")]
    pub feature: Vec<usize>,
    /// Strength of the matching --feature (negative values push away from it).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub strength: Vec<f32>,
    /// add: add S * W_dec[F] at every position; clamp: set the feature's activation to S at
    /// every position by adding (S - f_F(x)) * W_dec[F], leaving the SAE error untouched.
    #[arg(long, value_enum, default_value_t = SteerMode::Add)]
    pub mode: SteerMode,
    /// Show no Neuronpedia labels and fetch none.
    #[arg(long)]
    pub no_labels: bool,
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Print one JSON document instead of the side-by-side view.
    #[arg(long)]
    pub json: bool,
    /// Colour in the side-by-side view; NO_COLOR, when set, always turns it off.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

/// How a multi-group job holds blocks 0..=L (see `features --blocks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlockMode {
    Auto,
    Resident,
    LayerMajor,
    Streamed,
}

/// The shells `gemscope completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
    Elvish,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command (gemscope.1, gemscope-features.1, ...) into DIR instead of
    /// printing gemscope(1) to standard output.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LabelsArgs {
    #[command(subcommand)]
    pub action: LabelsAction,
}

#[derive(Debug, Subcommand)]
pub enum LabelsAction {
    /// Download Neuronpedia's explanations of the release's SAEs into gemscope's cache
    /// ($GEMSCOPE_CACHE, else $XDG_CACHE_HOME/gemscope, else ~/.cache/gemscope).
    Pull(PullArgs),
}

/// The SAEs of a release whose labels to use: model, site, width and layers.
#[derive(Debug, Clone, Args)]
pub struct LabelSetArgs {
    /// The model whose Gemma Scope release to use (a hub repo id; only its name counts).
    #[arg(long, value_name = "REPO", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Site: res, mlp or att.
    #[arg(long, value_enum, default_value_t = Site::Res)]
    pub site: Site,
    /// SAE width (Neuronpedia hosts the canonical SAE of each width).
    #[arg(long, value_name = "WIDTH", default_value = "16k")]
    pub width: String,
    /// One layer.
    #[arg(long, value_name = "N", conflicts_with = "layers")]
    pub layer: Option<usize>,
    /// Several layers: `all`, a range `0-25`, or a list `3,7,20`.
    #[arg(long, value_name = "all|A-B|A,B")]
    pub layers: Option<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub set: LabelSetArgs,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    /// Feature ids to explain.
    #[arg(value_name = "FEATURE", required = true)]
    pub features: Vec<usize>,
    /// Promoted and suppressed tokens listed per feature.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub tokens: usize,
    /// Decoder neighbours listed per feature.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub neighbours: usize,
    /// Show no Neuronpedia labels and fetch none.
    #[arg(long)]
    pub no_labels: bool,
    /// A `top-examples` store of the same layer, site and SAE: each card also shows the feature's
    /// top activating examples (tokens shaded by activation), its density, max and histogram.
    #[arg(long, value_name = "STORE")]
    pub examples: Option<PathBuf>,
    /// Print one JSON document (`features[i]`, see the README).
    #[arg(long)]
    pub json: bool,
    /// Colour in the card; NO_COLOR, when set, always turns it off.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for (`dogs`, `time travel`).
    #[arg(value_name = "QUERY")]
    pub query: String,
    #[command(flatten)]
    pub set: LabelSetArgs,
    /// Results listed.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Ask Neuronpedia's semantic search (POST /api/explanation/search) instead of the cache.
    #[arg(long)]
    pub online: bool,
    /// Use only the label cache, never the network (labels not cached are skipped with a note).
    #[arg(long, conflicts_with = "online")]
    pub offline: bool,
    /// Print one JSON document (`results[k]`, see the README).
    #[arg(long)]
    pub json: bool,
    /// Colour in the table; NO_COLOR, when set, always turns it off.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

#[derive(Debug, Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    /// The prompt (BOS is prepended).
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
    /// The output token to explain, as text that must be exactly one token (mind the leading
    /// space: " Paris"). Default: the model's most likely next token.
    #[arg(long, value_name = "TEXT", conflicts_with = "target_id")]
    pub target: Option<String>,
    /// The output token to explain, by id.
    #[arg(long, value_name = "N")]
    pub target_id: Option<u32>,
    /// The position whose next-token distribution is read (BOS is 0). Default: the last token.
    #[arg(long, value_name = "P")]
    pub position: Option<usize>,
    /// What is differentiated: the target's probability, log-probability, or soft-capped logit.
    #[arg(long, value_enum, default_value_t = Metric::Prob)]
    pub metric: Metric,
    /// Also remove each of the K largest attributions (activation set to 0 in the splice, later
    /// blocks rerun) and report the exact change of the metric next to its linear estimate.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub ablate: usize,
    /// Attributions and features listed.
    #[arg(long, default_value_t = 20, value_name = "K")]
    pub top_k: usize,
    /// List every active feature at every position.
    #[arg(long)]
    pub all: bool,
    /// Print one JSON document (the schema is in the README).
    #[arg(long)]
    pub json: bool,
    /// Colour in the human view; NO_COLOR, when set, always turns it off.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
    /// Show no Neuronpedia labels and fetch none.
    #[arg(long)]
    pub no_labels: bool,
}

#[derive(Debug, Args)]
pub struct TopExamplesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    /// The corpus: one document per line (text), JSON Lines, or Parquet; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub corpus: PathBuf,
    /// The corpus layout (auto: from the extension, `.parquet`, `.jsonl`, else text).
    #[arg(long, value_enum, default_value_t = crate::corpus::CorpusFormat::Auto)]
    pub format: crate::corpus::CorpusFormat,
    /// The JSONL field holding each document's text.
    #[arg(long, value_name = "NAME", conflicts_with = "text_column")]
    pub text_field: Option<String>,
    /// The Parquet column holding each document's text.
    #[arg(long, value_name = "NAME")]
    pub text_column: Option<String>,
    /// Read only the first N records (lines or rows) of the corpus.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Truncate each document to N tokens, BOS included (Neuronpedia's dashboards use 128).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_tokens: usize,
    /// Documents kept per feature.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Tokens of context kept either side of an example's strongest token (default: the whole
    /// truncated document).
    #[arg(long, value_name = "C")]
    pub context: Option<usize>,
    /// Only these features (comma-separated ids); default: every feature of the SAE.
    #[arg(long, value_name = "F,F,...", value_delimiter = ',')]
    pub features: Option<Vec<u32>>,
    /// Documents run together as one padded batch; shards are made of whole batches.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub batch_size: usize,
    /// Where to write the store (JSON Lines; see the README for its layout).
    #[arg(long, value_name = "STORE")]
    pub out: PathBuf,
    /// Run only shard K of N (K from 0 to N-1): `K/N`, `slurm` (a job array's
    /// SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) or `k8s/N`
    /// (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX of N). Combine with `gemscope merge`.
    #[arg(long, value_name = "K/N|slurm|k8s/N")]
    pub shard: Option<String>,
    /// Write a checkpoint (STORE.checkpoint) every N batches of this shard; 0 never. Default:
    /// every 5 minutes. Rerunning the same command resumes from it.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Discard an existing checkpoint and start afresh.
    #[arg(long)]
    pub restart: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Where to write the merged store.
    #[arg(long, value_name = "STORE")]
    pub out: PathBuf,
    /// The partial stores written by `top-examples --shard`.
    #[arg(value_name = "PART", required = true)]
    pub parts: Vec<PathBuf>,
    /// Merge even when some shards are missing (the result stays a partial store).
    #[arg(long)]
    pub allow_partial: bool,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    /// The `top-examples` store to show (same layer, site and SAE).
    #[arg(long, value_name = "STORE")]
    pub examples: PathBuf,
    /// `FILE.html` for one self-contained file, or a directory (index.html, and pages when the
    /// cards pass 16 MB).
    #[arg(long, value_name = "DIR|FILE.html")]
    pub out: PathBuf,
    /// Only these features, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "F,F,...",
        conflicts_with = "top_features"
    )]
    pub features: Option<Vec<u32>>,
    /// Only the N most often active features (default: every feature of the store that fired).
    #[arg(long, value_name = "N")]
    pub top_features: Option<usize>,
    /// Show no Neuronpedia labels and fetch none.
    #[arg(long)]
    pub no_labels: bool,
}
