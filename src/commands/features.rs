//! `gemscope features`: per-token SAE features and reconstruction statistics for prompts.

use super::{stdout, Job, SaePlan};
use crate::cli::{BlockMode, FeaturesArgs};
use crate::labels::{Labels, PendingLabels};
use crate::model::Parts;
use crate::output::{self, Style};
use crate::pipeline::{self, PromptInput};
use crate::report::layers::{rank_across_layers, LayerReport, LayersReport};
use crate::report::PromptReport;
use crate::report::{FeaturesReport, PromptLine, SCHEMA_VERSION};
use crate::sae::{JumpReluSae, SaeParts};
use crate::tokenizer::PromptTokenizer;
use crate::ui::Ui;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use std::io::Write;
use std::process::ExitCode;

/// Prompts that pass through the blocks together: each streamed block is read once per group,
/// and a group's activations are all that is held at once.
const PROMPT_GROUP: usize = 32;

pub fn run(args: FeaturesArgs, ui: Ui) -> Result<ExitCode> {
    let prompts = args.prompts.collect()?;
    ensure!(args.top_k >= 1, "--top-k must be at least 1");
    let style = ui.style(args.output.color);
    let job = Job::open(&args.model, ui)?;
    if let Some(spec) = &args.layers {
        return run_layers(&args, spec, job, style, prompts);
    }
    let layer = args.layer.context("--layer or --layers is required")?;
    let point = job.point(layer, args.site)?;

    // Tokenize everything before any large download or load, so a bad prompt fails fast.
    let tokenizer = job.tokenizer()?;
    let encoded = job.encode_prompts(&tokenizer, &prompts, None)?;

    let sae_plan = job.sae(&args.sae, point)?;
    ensure!(
        args.top_k <= sae_plan.d_sae,
        "--top-k {} is larger than the SAE's {} features",
        args.top_k,
        sae_plan.d_sae
    );
    if let Some(f) = args.highlight {
        sae_plan.check_feature("--highlight", f)?;
    }
    let pending = job.pending_labels(&sae_plan, !args.no_labels);
    let sae_parts = if args.encode_only {
        SaeParts::EncoderOnly
    } else {
        SaeParts::EncoderDecoder
    };

    // How the blocks are read. One group of prompts: each block is streamed from the file once.
    // Several groups: layer-major, each streamed block applied to every group before the next
    // (the groups' residual streams held meanwhile), when those fit; else each group streams
    // the blocks again. `--blocks resident` keeps them all in memory instead. All compute the
    // same numbers.
    let cfg = job.config();
    let groups: Vec<&[Vec<u32>]> = encoded.chunks(PROMPT_GROUP).collect();
    let t = encoded.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let group = encoded.len().min(PROMPT_GROUP) as u64;
    let width = cfg.hidden_size.max(cfg.intermediate_size) as u64;
    let scores = 2 * cfg.num_attention_heads as u64 * t * t * 4;
    let activations = group * t * width * 4 * 4 + scores + 2 * t * sae_plan.d_sae as u64 * 4;
    let plan_for = |parts: Parts, held_groups: u64| {
        let mut plan = job.memory_plan(parts);
        sae_plan.add_to(&mut plan, sae_parts, true);
        plan.add("activations", activations);
        if held_groups > 1 {
            plan.add(
                "every group's residual stream",
                held_groups * group * t * cfg.hidden_size as u64 * 4 * 2,
            );
        }
        plan
    };
    let streamed = Parts::through_layer(point.layer);
    let resident = Parts {
        resident: true,
        ..streamed
    };
    let held = groups.len() as u64;
    let (parts, layer_major) = match args.blocks {
        _ if groups.len() == 1 => (streamed, false),
        BlockMode::Resident => (resident, false),
        BlockMode::LayerMajor => (streamed, true),
        BlockMode::Streamed => (streamed, false),
        // Layer-major reads each block once for the whole job and holds only the groups'
        // residual streams: measured faster than resident blocks (which are all read before
        // the first group runs, with nothing to overlap) and far smaller (BENCHMARKS.md).
        BlockMode::Auto if plan_for(streamed, held).fits() => (streamed, true),
        BlockMode::Auto => (streamed, false),
    };
    // Before any large download or allocation: will it fit?
    let plan = plan_for(parts, if layer_major { held } else { 1 });
    let model = job.load_model(parts, &plan)?;
    let ui = &job.ui;
    if groups.len() > 1 {
        ui.detail(format!(
            "{} prompts in {} groups, blocks {}",
            encoded.len(),
            groups.len(),
            match (parts.resident, layer_major) {
                (true, _) => "resident",
                (false, true) => "streamed layer-major",
                (false, false) => "streamed once per group",
            }
        ));
    }
    // The first forward pass (every group's, layer-major) runs while the SAE loads.
    let (sae, first) = sae_plan.load_beside(ui, sae_parts, &job.device, || {
        ui.phase("forward", || match layer_major {
            true => pipeline::capture_groups(&model, &groups, point),
            false => groups
                .first()
                .map_or(Ok(Vec::new()), |ids| {
                    pipeline::capture_many(&model, ids, point)
                })
                .map(|a| vec![a]),
        })
    });
    let sae = sae?;
    let mut captured = first?;
    let model_info = job.model_info();
    let sae_info = sae_plan.info();

    let mut out = stdout();
    let mut reports = Vec::with_capacity(prompts.len());
    // JSONL streams each prompt as it finishes, so it waits for the labels first; the table and
    // JSON attach them at the end, after the numbers.
    let mut pending = Some(pending);
    let mut labels = None;
    if args.output.jsonl {
        labels = pending.take().and_then(|p| job.finish_labels(p));
    }
    for (g, group_ids) in groups.iter().enumerate() {
        let activations = match captured.get_mut(g) {
            Some(ready) => std::mem::take(ready),
            None => ui.phase("forward", || {
                pipeline::capture_many(&model, group_ids, point)
            })?,
        };
        for (offset, (ids, x)) in group_ids.iter().zip(&activations).enumerate() {
            let index = g * PROMPT_GROUP + offset;
            let reading = Reading {
                sae: &sae,
                plan: &sae_plan,
                labels: labels.as_ref(),
                top_k: args.top_k,
            };
            let mut report =
                prompt_report(ui, &reading, &tokenizer, index, &prompts[index], ids, x)
                    .with_context(|| format!("prompt {}", index + 1))?;
            if let Some(feature) = args.highlight {
                report.highlight =
                    Some(ui.phase("encode", || pipeline::highlight(x, &sae, feature))?);
            }
            if args.output.jsonl {
                let line = PromptLine {
                    schema_version: SCHEMA_VERSION,
                    hook: point,
                    sae: &sae_info,
                    prompt: &report,
                };
                ui.phase("output", || output::json::write_jsonl_line(&mut out, &line))?;
            } else {
                reports.push(report);
            }
        }
        out.flush()?;
    }
    if !args.output.jsonl {
        if let Some(labels) = pending.take().and_then(|p| job.finish_labels(p)) {
            for report in &mut reports {
                report.attach_labels(|f| labels.label(f).map(str::to_string));
            }
        }
        let report = FeaturesReport {
            schema_version: SCHEMA_VERSION,
            gemscope_version: env!("CARGO_PKG_VERSION"),
            model: model_info,
            sae: sae_info,
            hook: point,
            top_k: args.top_k,
            prompts: reports,
        };
        if let Some(path) = &args.html {
            let labels = report.labels();
            crate::system::write_file_atomically(path, |w| {
                output::features_html::write_features_html(w, &report, &|f| labels.get(&f).cloned())
            })?;
        }
        ui.phase("output", || {
            write_report(&mut out, &report, args.output.json, style)
        })?;
    }
    out.flush()?;
    job.note_disk_reads(&model);
    ui.report_phases();
    Ok(ExitCode::SUCCESS)
}

/// An SAE, how it was resolved and its labels: what reads a prompt's activation.
struct Reading<'a> {
    sae: &'a JumpReluSae,
    plan: &'a SaePlan,
    labels: Option<&'a Labels>,
    top_k: usize,
}

/// One prompt's report from its activation `x` at the SAE's hook point: the SAE's features and
/// statistics, each listed feature's Neuronpedia page and label.
fn prompt_report(
    ui: &Ui,
    reading: &Reading,
    tokenizer: &PromptTokenizer,
    index: usize,
    text: &str,
    ids: &[u32],
    x: &Tensor,
) -> Result<PromptReport> {
    let input = PromptInput {
        index,
        text,
        ids,
        pieces: ids.iter().map(|&id| tokenizer.piece(id)).collect(),
    };
    let sae = reading.sae;
    let encoded = ui.phase("encode", || pipeline::encode(x, sae))?;
    let mut report = ui.phase("metrics", || {
        pipeline::analyze(
            input,
            x,
            &encoded,
            sae.d_sae(),
            reading.plan.point,
            reading.top_k,
        )
    })?;
    if let Some(neuronpedia) = reading.plan.neuronpedia() {
        report.link_neuronpedia(neuronpedia);
    }
    if let Some(labels) = reading.labels {
        report.attach_labels(|f| labels.label(f).map(str::to_string));
    }
    Ok(report)
}

fn write_report(
    out: &mut dyn Write,
    report: &FeaturesReport,
    json: bool,
    style: Style,
) -> std::io::Result<()> {
    if json {
        output::json::write_json(out, report)
    } else {
        output::features::write_features_table(out, report, style)
    }
}

/// `features --layers`: one forward pass to the deepest requested layer with every layer's
/// activation captured, then each layer read with its own SAE, one SAE in memory at a time.
fn run_layers(
    args: &FeaturesArgs,
    spec: &str,
    job: Job,
    style: Style,
    prompts: Vec<String>,
) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let cfg = job.config();
    let layers = super::labels::parse_layers(spec, cfg.num_hidden_layers)?;
    if args.sae.sae.as_deref().is_some_and(|s| {
        let path = std::path::Path::new(s);
        path.is_file() || path.extension().is_some()
    }) && layers.len() > 1
    {
        bail!(
            "--layers reads each layer with its own SAE: pass a release (--sae REPO, or none for \
             the default Gemma Scope release), not one SAE file"
        );
    }
    let tokenizer = job.tokenizer()?;
    let encoded = job.encode_prompts(&tokenizer, &prompts, None)?;
    let points: Vec<_> = layers
        .iter()
        .map(|&layer| job.point(layer, args.site))
        .collect::<Result<_>>()?;
    let plans: Vec<_> = points
        .iter()
        .map(|&point| job.sae(&args.sae, point))
        .collect::<Result<_>>()?;
    for plan in &plans {
        ensure!(
            args.top_k <= plan.d_sae,
            "--top-k {} is larger than the {} features of the layer-{} SAE",
            args.top_k,
            plan.d_sae,
            plan.point.layer
        );
    }
    let pending: Vec<PendingLabels> = plans
        .iter()
        .map(|plan| job.pending_labels(plan, !args.no_labels))
        .collect();
    let sae_parts = if args.encode_only {
        SaeParts::EncoderOnly
    } else {
        SaeParts::EncoderDecoder
    };

    // Memory: one streamed block, the largest SAE (they are loaded one at a time), and every
    // layer's activations of every prompt (held from the forward pass until their SAE reads them).
    let deepest = *layers.last().expect("at least one layer");
    let parts = Parts::through_layer(deepest);
    let mut plan = job.memory_plan(parts);
    let largest = plans
        .iter()
        .max_by_key(|p| p.d_sae)
        .expect("at least one SAE");
    largest.add_to(&mut plan, sae_parts, true);
    let tokens: u64 = encoded.iter().map(|ids| ids.len() as u64).sum();
    let width = super::site_width(cfg, args.site) as u64;
    let t = encoded.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let group = encoded.len().min(PROMPT_GROUP) as u64;
    let inner = cfg.hidden_size.max(cfg.intermediate_size) as u64;
    let scores = 2 * cfg.num_attention_heads as u64 * t * t * 4;
    plan.add(
        format!("activations of {} layers", layers.len()),
        layers.len() as u64 * tokens * width * 4
            + group * t * inner * 4 * 4
            + scores
            + 2 * t * largest.d_sae as u64 * 4,
    );
    let model = job.load_model(parts, &plan)?;
    let ui = &job.ui;

    // [layer][prompt] activations, from one pass per prompt group.
    let forward_started = std::time::Instant::now();
    let mut captured: Vec<Vec<candle_core::Tensor>> = vec![Vec::new(); layers.len()];
    for group_ids in encoded.chunks(PROMPT_GROUP) {
        let per_point = ui.phase("forward", || {
            pipeline::capture_points(&model, group_ids, &points)
        })?;
        for (layer_acts, acts) in captured.iter_mut().zip(per_point) {
            layer_acts.extend(acts);
        }
    }
    let forward_seconds = forward_started.elapsed().as_secs_f64();
    job.note_disk_reads(&model);
    drop(model);

    let encode_started = std::time::Instant::now();
    let mut layer_reports = Vec::with_capacity(layers.len());
    for ((plan, acts), pending) in plans.iter().zip(captured).zip(pending) {
        let sae = plan.load(ui, sae_parts, &job.device)?;
        let labels = job.finish_labels(pending);
        let mut reports = Vec::with_capacity(prompts.len());
        let reading = Reading {
            sae: &sae,
            plan,
            labels: labels.as_ref(),
            top_k: args.top_k,
        };
        for (index, (ids, x)) in encoded.iter().zip(&acts).enumerate() {
            let report = prompt_report(ui, &reading, &tokenizer, index, &prompts[index], ids, x)
                .with_context(|| format!("layer {} prompt {}", plan.point.layer, index + 1))?;
            reports.push(report);
        }
        layer_reports.push(LayerReport {
            layer: plan.point.layer,
            sae: plan.info(),
            prompts: reports,
        });
    }
    let encode_seconds = encode_started.elapsed().as_secs_f64();
    let ranking = (0..prompts.len())
        .map(|i| rank_across_layers(&layer_reports, i, args.top_k))
        .collect();
    let report = LayersReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        model: job.model_info(),
        site: args.site,
        top_k: args.top_k,
        layers: layer_reports,
        ranking,
    };
    let mut out = stdout();
    ui.phase("output", || -> std::io::Result<()> {
        if args.output.json {
            output::json::write_json(&mut out, &report)
        } else {
            output::features::write_layers_table(&mut out, &report, style)
        }
    })?;
    out.flush()?;
    let peak = crate::system::peak_memory().map_or("unknown".to_string(), |bytes| {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    });
    ui.note(format!(
        "{} layer{} from one forward pass through {} blocks: forward {forward_seconds:.2} s, \
         SAEs {encode_seconds:.2} s, total {:.2} s; peak memory {peak}",
        layers.len(),
        if layers.len() == 1 { "" } else { "s" },
        deepest + 1,
        started.elapsed().as_secs_f64(),
    ));
    ui.report_phases();
    Ok(ExitCode::SUCCESS)
}
