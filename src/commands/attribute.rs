//! `gemscope attribute`: which SAE features made the model predict a token (gradient x activation).

use super::{stdout, Job};
use crate::attribution::{self, FeatureAttribution, LaterBlocks, Request};
use crate::cli::AttributeArgs;
use crate::hub::{needed_shards, Weights};
use crate::model::{Config, HookPoint, Parts, Site};
use crate::output;
use crate::report::attribution::{
    AblationEntry, AttributionEntry, AttributionReport, FeatureTotal, PromptToken, TargetInfo,
};
use crate::report::SCHEMA_VERSION;
use crate::sae::SaeParts;
use crate::system::MemoryPlan;
use crate::tokenizer::PromptTokenizer;
use crate::ui::Ui;
use anyhow::{bail, ensure, Result};
use candle_core::DType;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

/// Adds what attribution holds beyond one streamed block and the SAE: the blocks kept for the
/// backward pass, their activations and gradients, and a slice of the embedding matrix (the
/// tied LM head is read a slice at a time).
fn add_to_plan(
    plan: &mut MemoryPlan,
    cfg: &Config,
    dtype: DType,
    point: HookPoint,
    parts: Parts,
    d_sae: usize,
    tokens: usize,
) {
    let f32_bytes = 4u64;
    let size = dtype.size_in_bytes() as u64;
    let rows = if parts.head {
        cfg.vocab_size
    } else {
        cfg.vocab_size.min(8192)
    };
    plan.add(
        "the embedding (LM head) or a slice of it",
        (rows * cfg.hidden_size) as u64 * size,
    );
    let kept = (cfg.num_hidden_layers - point.layer - usize::from(point.site == Site::Res)) as u64;
    let block = cfg.block_parameters() * size;
    plan.add(
        format!("{kept} blocks kept for the backward pass"),
        kept * block,
    );
    if dtype == DType::F32 {
        plan.saving("--dtype bf16", kept * block / 2);
    }
    // Per kept block: a dozen [t, hidden or ffn] activations and the attention scores; at most
    // one block's weight-sized gradients (candle computes them; they go block by block).
    let t = tokens as u64;
    let width = cfg.hidden_size.max(cfg.intermediate_size) as u64;
    let scores = 4 * cfg.num_attention_heads as u64 * t * t * f32_bytes;
    plan.add(
        "activations and gradients",
        kept * (12 * t * width * f32_bytes + scores) + block + 3 * t * d_sae as u64 * f32_bytes,
    );
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

pub fn run(args: AttributeArgs, ui: Ui) -> Result<ExitCode> {
    ensure!(args.top_k >= 1, "--top-k must be at least 1");
    ensure!(!args.prompt.is_empty(), "the prompt is empty");
    let style = ui.style(args.color);
    let job = Job::open(&args.model, ui)?;
    let point = job.hook_point(&args.hook)?;
    let cfg = job.config();

    // Tokens, target and position are checked before anything large is fetched or loaded.
    let tokenizer = job.tokenizer()?;
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

    let sae_plan = job.sae(&args.sae, point)?;
    let pending = job.pending_labels(&sae_plan, !args.no_labels);
    // Every block (those before the hook point streamed); the LM head is read in slices. The
    // final norm sits with the last block in every published checkpoint; should it have a shard
    // of its own, the head is loaded whole instead (same numbers, more memory).
    let mut parts = Parts {
        blocks: cfg.num_hidden_layers,
        head: false,
        resident: false,
    };
    if let Weights::Sharded { weight_map, .. } = &job.files.weights {
        let norm_shard = weight_map.get("model.norm.weight").map(String::as_str);
        if !norm_shard
            .is_some_and(|s| needed_shards(weight_map, parts).is_ok_and(|n| n.contains(s)))
        {
            parts.head = true;
        }
    }
    let mut plan = job.memory_plan(parts);
    sae_plan.add_to(&mut plan, SaeParts::EncoderDecoder, false);
    add_to_plan(
        &mut plan,
        cfg,
        job.dtype,
        point,
        parts,
        sae_plan.d_sae,
        position + 1,
    );
    let model = job.load_model(parts, &plan)?;
    let sae = sae_plan.load(&job.ui, SaeParts::EncoderDecoder, &job.device)?;
    let ui = &job.ui;
    let later = ui.phase("load", || LaterBlocks::build(&model, point))?;
    let request = Request {
        point,
        position,
        target: explicit_target,
        metric: args.metric,
    };
    let (result, prepared) = ui.phase("forward", || {
        attribution::attribute(&model, &later, &sae, &ids, &request)
    })?;
    let t = result.timings;
    ui.note(format!(
        "blocks before layer {} {:.2} s; the splice and later blocks: forward {:.2} s, backward {:.2} s",
        point.layer, t.forward_before, t.forward_after, t.backward
    ));
    let ablations = if args.ablate > 0 {
        let clock = std::time::Instant::now();
        let chosen = &result.features[..args.ablate.min(result.features.len())];
        let list = ui.phase("forward", || {
            attribution::ablate(&model, &later, &sae, &prepared, chosen)
        })?;
        ui.note(format!(
            "{} ablation reruns {:.2} s",
            list.len(),
            clock.elapsed().as_secs_f64()
        ));
        Some(list)
    } else {
        None
    };

    let pieces: Vec<String> = ids.iter().map(|&id| tokenizer.piece(id)).collect();
    let url = |feature: u32| sae_plan.neuronpedia().map(|n| n.url(feature));
    let labels = job.finish_labels(pending);
    let label = |feature: u32| {
        labels
            .as_ref()
            .and_then(|l| l.label(feature).map(str::to_string))
    };
    let limit = if args.all { usize::MAX } else { args.top_k };
    let report = AttributionReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        model: job.model_info(),
        sae: sae_plan.info(),
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
                label: label(f.feature),
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
                label: label(feature),
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

    let mut out = stdout();
    ui.phase("output", || {
        if args.json {
            output::json::write_json(&mut out, &report)
        } else {
            output::attribute::write_attribution(&mut out, &report, style)
        }
    })?;
    out.flush()?;
    ui.report_phases();
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
