//! `gemscope attribute`: which SAE features made the model predict a token (gradient x activation).

use super::{check_sae_width, hook_point, model_info, open_model, resolve_sae, sae_info};
use crate::attribution::{self, FeatureAttribution, LaterBlocks, Metric, Request};
use crate::cli::{select_device, ColorArg, HookArgs, ModelArgs, SaeArgs};
use crate::hub;
use crate::model::{self, Config, Parts, Site};
use crate::output::{self, Style};
use crate::report::attribution::{
    AblationEntry, AttributionEntry, AttributionReport, FeatureTotal, PromptToken, TargetInfo,
};
use crate::report::SCHEMA_VERSION;
use crate::sae::{self, JumpReluSae, SaeParts};
use crate::system::MemoryPlan;
use crate::tokenizer::PromptTokenizer;
use anyhow::{bail, ensure, Result};
use candle_core::DType;
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

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
}

/// The large allocations: the embedding (the tied LM head), the blocks kept for the backward
/// pass, one streamed block, the SAE, and the activations of the later blocks.
fn memory_plan(
    cfg: &Config,
    dtype: DType,
    site: Site,
    layer: usize,
    d_in: usize,
    d_sae: usize,
    tokens: usize,
) -> MemoryPlan {
    let f32_bytes = 4u64;
    let size = dtype.size_in_bytes() as u64;
    let mut plan = MemoryPlan::default();
    plan.add(
        "embedding (LM head)",
        (cfg.vocab_size * cfg.hidden_size) as u64 * size,
    );
    let kept = cfg.num_hidden_layers - layer - usize::from(site == Site::Res);
    let block = cfg.block_parameters() * size;
    plan.add(
        format!("{kept} blocks kept for the backward pass"),
        kept as u64 * block,
    );
    plan.add("one streamed block", block);
    if dtype == DType::F32 {
        plan.saving("--dtype bf16", (kept as u64 + 1) * block / 2);
    }
    plan.add("SAE", 2 * (d_in * d_sae) as u64 * f32_bytes);
    // Per kept block: a dozen [t, hidden or ffn] activations, attention scores, and at most one
    // block's weight-sized gradients (candle computes them; they are dropped block by block).
    let t = tokens as u64;
    let width = cfg.hidden_size.max(cfg.intermediate_size) as u64;
    let scores = 4 * cfg.num_attention_heads as u64 * t * t * f32_bytes;
    plan.add(
        "activations and gradients",
        kept as u64 * (12 * t * width * f32_bytes + scores)
            + block
            + 3 * t * d_sae as u64 * f32_bytes,
    );
    plan
}

/// The target id from `--target`/`--target-id`, checked; `None` for the most likely token.
fn target_id(
    args: &AttributeArgs,
    tokenizer: &PromptTokenizer,
    cfg: &Config,
) -> Result<Option<u32>> {
    if let Some(id) = args.target_id {
        ensure!(
            (id as usize) < cfg.vocab_size,
            "--target-id {id} is outside the vocabulary (0..={})",
            cfg.vocab_size - 1
        );
        return Ok(Some(id));
    }
    let Some(text) = &args.target else {
        return Ok(None);
    };
    ensure!(!text.is_empty(), "--target is empty");
    // The tokenizer puts BOS first; what follows is the text's own tokens.
    let ids = tokenizer.encode(text)?;
    let ids = &ids[1..];
    if ids.len() != 1 {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| format!("{:?} ({id})", tokenizer.piece(id)))
            .collect();
        bail!(
            "--target {text:?} is {} tokens, not one: it tokenizes as {}; pick one of them with --target-id",
            ids.len(),
            pieces.join(" + ")
        );
    }
    Ok(Some(ids[0]))
}

/// The read position: `--position`, or the last token; never BOS.
fn read_position(requested: Option<usize>, tokens: usize) -> Result<usize> {
    let last = tokens - 1;
    match requested {
        None => Ok(last),
        Some(0) => bail!(
            "--position 0 is BOS, which is not spliced: pick a position in 1..={last}"
        ),
        Some(p) if p > last => bail!(
            "--position {p} is outside the prompt: it has {tokens} tokens with BOS (positions 1..={last})"
        ),
        Some(p) => Ok(p),
    }
}

pub fn run(args: AttributeArgs) -> Result<ExitCode> {
    ensure!(args.top_k >= 1, "--top-k must be at least 1");
    ensure!(!args.prompt.is_empty(), "the prompt is empty");
    let device = select_device(args.model.device)?;
    let dtype = args.model.dtype.dtype();
    let (client, files) = open_model(&args.model)?;
    let cfg = &files.config;
    let point = hook_point(&args.hook, cfg)?;

    // Tokens, target and position are checked before anything large is fetched or loaded.
    let tokenizer = PromptTokenizer::from_file(&files.tokenizer, cfg.bos_token_id)?;
    let ids = tokenizer.encode(&args.prompt)?;
    ensure!(
        ids.len() >= 2,
        "the prompt has no token after BOS: attribution needs at least one"
    );
    ensure!(
        ids.len() <= cfg.max_position_embeddings,
        "the prompt has {} tokens, more than the model's context of {}",
        ids.len(),
        cfg.max_position_embeddings
    );
    let position = read_position(args.position, ids.len())?;
    let explicit_target = target_id(&args, &tokenizer, cfg)?;

    let resolved = resolve_sae(&client, &args.sae, &files, point)?;
    let (d_in, d_sae) = sae::read_dims(&resolved.path)?;
    check_sae_width(d_in, point.site, cfg)?;
    memory_plan(
        cfg,
        dtype,
        point.site,
        point.layer,
        d_in,
        d_sae,
        position + 1,
    )
    .check_available()?;

    let parts = Parts {
        blocks: cfg.num_hidden_layers,
        head: true,
        resident: false,
    };
    hub::fetch_weights(&client, &files, parts)?;
    let sae = JumpReluSae::load(&resolved.path, d_in, SaeParts::EncoderDecoder, &device)?;
    let model = model::load(&files, parts, dtype, &device)?;
    let later = LaterBlocks::build(&model, point)?;
    let request = Request {
        point,
        position,
        target: explicit_target,
        metric: args.metric,
    };
    let (result, prepared) = attribution::attribute(&model, &later, &sae, &ids, &request)?;
    let t = result.timings;
    eprintln!(
        "gemscope: note: blocks 0..{} {:.2} s; splice and blocks {}.. forward {:.2} s, backward {:.2} s",
        point.layer, t.forward_before, point.layer, t.forward_after, t.backward
    );
    let ablations = if args.ablate > 0 {
        let clock = std::time::Instant::now();
        let chosen = &result.features[..args.ablate.min(result.features.len())];
        let list = attribution::ablate(&model, &later, &sae, &prepared, chosen)?;
        eprintln!(
            "gemscope: note: {} ablation reruns {:.2} s",
            list.len(),
            clock.elapsed().as_secs_f64()
        );
        Some(list)
    } else {
        None
    };

    let pieces: Vec<String> = ids.iter().map(|&id| tokenizer.piece(id)).collect();
    let url = |feature: u32| resolved.neuronpedia.as_ref().map(|n| n.url(feature));
    let limit = if args.all { usize::MAX } else { args.top_k };
    let report = AttributionReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        model: model_info(&files, &device, dtype),
        sae: sae_info(&resolved, d_in, d_sae),
        hook: point,
        prompt: args.prompt.clone(),
        tokens: ids
            .iter()
            .zip(&pieces)
            .enumerate()
            .map(|(position, (&id, piece))| PromptToken {
                position,
                id,
                text: piece.clone(),
            })
            .collect(),
        target: TargetInfo {
            id: result.target,
            text: tokenizer.piece(result.target),
            position,
            probability: result.probability,
            explicit: explicit_target.is_some(),
        },
        metric: result.metric,
        metric_value: result.metric_value,
        active_features: result.features.len(),
        top_k: (!args.all).then_some(args.top_k),
        attributions: result
            .features
            .iter()
            .take(limit)
            .map(|f| AttributionEntry {
                position: f.position,
                token: pieces[f.position].clone(),
                feature: f.feature,
                activation: f.activation,
                attribution: f.attribution,
                neuronpedia_url: url(f.feature),
            })
            .collect(),
        features: feature_totals(&result.features)
            .into_iter()
            .take(limit)
            .map(|(feature, attribution_sum, positions)| FeatureTotal {
                feature,
                attribution_sum,
                positions,
                neuronpedia_url: url(feature),
            })
            .collect(),
        feature_attribution_total: result.features.iter().map(|f| f.attribution).sum(),
        error_attribution_total: result.error.iter().sum(),
        error_share: error_share(&result.features, &result.error),
        token_attribution: token_totals(&result.features, &result.error),
        error_attribution: result.error,
        ablation: ablations.map(|list| {
            list.into_iter()
                .map(|a| AblationEntry {
                    position: a.position,
                    feature: a.feature,
                    effect: a.effect,
                    estimate: a.estimate,
                })
                .collect()
        }),
    };

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.json {
        output::write_json(&mut out, &report)?;
    } else {
        output::attribute::write_attribution(
            &mut out,
            &report,
            Style {
                color: args.color.enabled(),
            },
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Per feature: the sum of its attributions over positions and how many positions, by |sum|
/// descending, ties by id.
pub fn feature_totals(features: &[FeatureAttribution]) -> Vec<(u32, f64, usize)> {
    let mut sums: BTreeMap<u32, (f64, usize)> = BTreeMap::new();
    for f in features {
        let entry = sums.entry(f.feature).or_default();
        entry.0 += f.attribution;
        entry.1 += 1;
    }
    let mut totals: Vec<(u32, f64, usize)> = sums
        .into_iter()
        .map(|(feature, (sum, n))| (feature, sum, n))
        .collect();
    totals.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    totals
}

/// The error term's share of the total absolute attribution.
pub fn error_share(features: &[FeatureAttribution], error: &[f64]) -> f64 {
    let error_abs: f64 = error.iter().map(|e| e.abs()).sum();
    let feature_abs: f64 = features.iter().map(|f| f.attribution.abs()).sum();
    let total = error_abs + feature_abs;
    if total > 0.0 {
        error_abs / total
    } else {
        0.0
    }
}

/// Per position: the features' attributions there plus the error's.
pub fn token_totals(features: &[FeatureAttribution], error: &[f64]) -> Vec<f64> {
    let mut totals = error.to_vec();
    for f in features {
        totals[f.position] += f.attribution;
    }
    totals
}
