//! `gemscope eval`: reconstruction quality over a prompt set, with gates a CI job can fail on.
//!
//! Exit status: 0 when every gate holds, 1 when one fails (each named on stderr), 2 on errors.

use super::{stdout, Job};
use crate::cli::EvalArgs;
use crate::eval::{self, EvalSums};
use crate::model::Parts;
use crate::output;
use crate::report::{
    BaselineComparison, BaselineRow, EvalMetrics, EvalReport, GateResult, SCHEMA_VERSION,
};
use crate::sae::SaeParts;
use crate::ui::Ui;
use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Metrics a baseline comparison checks, and which way is better. `mean_l0` and the clean loss
/// describe the SAE and the model rather than a quality, so they are shown but not gated.
const BASELINE_METRICS: [(&str, bool); 8] = [
    ("variance_explained", true),
    ("cosine_similarity", true),
    ("ce_loss_score", true),
    ("mse", false),
    ("delta_loss", false),
    ("kl_div", false),
    ("ce_loss_spliced", false),
    ("dead_fraction", false),
];

fn metric(m: &EvalMetrics, name: &str) -> f64 {
    match name {
        "mean_l0" => m.mean_l0,
        "variance_explained" => m.variance_explained,
        "mse" => m.mse,
        "cosine_similarity" => m.cosine_similarity,
        "dead_fraction" => m.dead_fraction,
        "ce_loss_clean" => m.ce_loss_clean,
        "ce_loss_spliced" => m.ce_loss_spliced,
        "ce_loss_zero_ablation" => m.ce_loss_zero_ablation,
        "delta_loss" => m.delta_loss,
        "ce_loss_score" => m.ce_loss_score,
        "kl_div" => m.kl_div,
        other => unreachable!("no metric {other}"),
    }
}

fn gate(
    name: &str,
    metric_name: &'static str,
    at_most: bool,
    threshold: f64,
    value: f64,
) -> GateResult {
    // NaN never passes a gate.
    let passed = if at_most {
        value <= threshold
    } else {
        value >= threshold
    };
    GateResult {
        name: name.to_string(),
        metric: metric_name,
        op: if at_most { "<=" } else { ">=" },
        threshold,
        value,
        passed,
    }
}

/// The threshold gates given on the command line.
fn threshold_gates(args: &EvalArgs, m: &EvalMetrics) -> Vec<GateResult> {
    let flags: [(&str, &'static str, bool, Option<f64>); 6] = [
        ("max_delta_loss", "delta_loss", true, args.max_delta_loss),
        (
            "min_variance_explained",
            "variance_explained",
            false,
            args.min_variance_explained,
        ),
        ("max_mean_l0", "mean_l0", true, args.max_mean_l0),
        ("min_mean_l0", "mean_l0", false, args.min_mean_l0),
        (
            "min_ce_loss_score",
            "ce_loss_score",
            false,
            args.min_ce_loss_score,
        ),
        ("max_kl_div", "kl_div", true, args.max_kl_div),
    ];
    flags
        .into_iter()
        .filter_map(|(name, metric_name, at_most, threshold)| {
            threshold.map(|t| gate(name, metric_name, at_most, t, metric(m, metric_name)))
        })
        .collect()
}

/// Reads a saved report and gates every quality metric on not being worse by more than `tolerance`.
fn compare_with_baseline(
    path: &PathBuf,
    tolerance: f64,
    m: &EvalMetrics,
) -> Result<(BaselineComparison, Vec<GateResult>)> {
    ensure!(tolerance >= 0.0, "--tolerance must be >= 0");
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read baseline {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("baseline {} is not JSON", path.display()))?;
    let saved: EvalMetrics = serde_json::from_value(
        value.get("metrics").cloned().unwrap_or_default(),
    )
    .with_context(|| {
        format!(
            "baseline {} is not a report saved by `gemscope eval --save`",
            path.display()
        )
    })?;
    let mut rows = Vec::new();
    let mut gates = Vec::new();
    for (name, higher_is_better) in [("mean_l0", true), ("ce_loss_clean", false)]
        .into_iter()
        .chain(BASELINE_METRICS)
    {
        let (baseline, current) = (metric(&saved, name), metric(m, name));
        let scale = baseline.abs().max(1e-12);
        rows.push(BaselineRow {
            metric: name,
            baseline,
            current,
            relative_change: (current - baseline) / scale,
            better: if higher_is_better { "higher" } else { "lower" },
        });
        if BASELINE_METRICS.iter().any(|(n, _)| *n == name) {
            // Worse by more than `tolerance` relative to the baseline's magnitude.
            let limit = if higher_is_better {
                baseline - tolerance * scale
            } else {
                baseline + tolerance * scale
            };
            gates.push(gate(
                &format!("baseline_{name}"),
                name,
                !higher_is_better,
                limit,
                current,
            ));
        }
    }
    let comparison = BaselineComparison {
        file: path.display().to_string(),
        tolerance,
        metrics: rows,
    };
    Ok((comparison, gates))
}

pub fn run(args: EvalArgs, ui: Ui) -> Result<ExitCode> {
    let mut prompts = args.prompts.collect()?;
    if let Some(limit) = args.limit {
        ensure!(limit >= 1, "--limit must be at least 1");
        prompts.truncate(limit);
    }
    ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    if let Some(max) = args.max_tokens {
        ensure!(
            max >= 2,
            "--max-tokens must be at least 2 (BOS and one token)"
        );
    }
    let style = ui.style(args.color);
    let job = Job::open(&args.model, ui)?;
    let point = job.hook_point(&args.hook)?;
    let tokenizer = job.tokenizer()?;
    let encoded = job.encode_prompts(&tokenizer, &prompts, args.max_tokens)?;
    let sae_plan = job.sae(&args.sae, point)?;

    // The whole model and the SAE, and three sets of logits (clean, spliced, zero-ablated) for a batch.
    let parts = Parts::full(job.config());
    let mut plan = job.memory_plan(parts);
    sae_plan.add_to(&mut plan, SaeParts::EncoderDecoder, false);
    let longest = encoded.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let batch = args.batch_size.min(encoded.len()) as u64;
    let vocab = job.config().vocab_size as u64;
    plan.add("logits", 3 * batch * longest * vocab * 4);
    plan.saving(
        "a smaller --batch-size",
        3 * (batch - 1) * longest * vocab * 4,
    );
    let model = job.load_model(parts, &plan)?;
    let sae = sae_plan.load(&job.ui, SaeParts::EncoderDecoder, &job.device)?;
    let ui = &job.ui;

    // Longest first, so each batch pads little; the pooled result does not depend on the order.
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
    let total_tokens: u64 = encoded.iter().map(|ids| ids.len() as u64).sum();
    let progress = ui.progress(
        total_tokens,
        "{spinner} eval [{bar:30}] {pos}/{len} tokens, {per_sec}, ETA {eta}",
    );
    let mut sums = EvalSums::new(sae_plan.d_sae);
    for chunk in order.chunks(args.batch_size) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| encoded[i].clone()).collect();
        ui.phase("forward", || {
            eval::evaluate_batch(&model, &sae, point, &batch, &mut sums)
        })?;
        progress.inc(batch.iter().map(|ids| ids.len() as u64).sum());
    }
    progress.finish_and_clear();
    let metrics = ui.phase("metrics", || sums.finish())?;

    let mut gates = threshold_gates(&args, &metrics);
    let baseline = match &args.baseline {
        Some(path) => {
            let (comparison, baseline_gates) =
                compare_with_baseline(path, args.tolerance, &metrics)?;
            gates.extend(baseline_gates);
            Some(comparison)
        }
        None => None,
    };
    let passed = gates.iter().all(|g| g.passed);
    let report = EvalReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        model: job.model_info(),
        sae: sae_plan.info(),
        hook: point,
        prompts: encoded.len(),
        batch_size: args.batch_size,
        max_tokens: args.max_tokens,
        metrics,
        gates,
        baseline,
        passed,
    };

    ui.phase("output", || -> Result<()> {
        if let Some(path) = &args.save {
            crate::system::write_file_atomically(path, |w| output::json::write_json(w, &report))?;
        }
        let mut out = stdout();
        if args.json {
            output::json::write_json(&mut out, &report)?;
        } else {
            output::eval::write_eval_table(&mut out, &report, style)?;
        }
        out.flush()?;
        Ok(())
    })?;
    job.note_disk_reads(&model);
    ui.report_phases();
    for g in report.gates.iter().filter(|g| !g.passed) {
        eprintln!(
            "gemscope: gate failed: {}: {} is {:.6}, needs {} {}",
            g.name, g.metric, g.value, g.op, g.threshold
        );
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
