//! `gemscope features`: per-token SAE features and reconstruction statistics for prompts.

use super::{stdout, Job};
use crate::cli::FeaturesArgs;
use crate::model::Parts;
use crate::output::{self, Style};
use crate::pipeline::{self, PromptInput};
use crate::report::{FeaturesReport, PromptLine, SCHEMA_VERSION};
use crate::sae::SaeParts;
use crate::ui::Ui;
use anyhow::{ensure, Context, Result};
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
    let point = job.hook_point(&args.hook)?;

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
    let sae_parts = if args.encode_only {
        SaeParts::EncoderOnly
    } else {
        SaeParts::EncoderDecoder
    };

    // Before any large download or allocation: will it fit? The SAE, one streamed block, and a
    // prompt group's activations, attention scores and feature activations.
    let parts = Parts::through_layer(point.layer);
    let mut plan = job.memory_plan(parts);
    sae_plan.add_to(&mut plan, sae_parts, true);
    let cfg = job.config();
    let t = encoded.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let group = encoded.len().min(PROMPT_GROUP) as u64;
    let width = cfg.hidden_size.max(cfg.intermediate_size) as u64;
    let scores = 2 * cfg.num_attention_heads as u64 * t * t * 4;
    plan.add(
        "activations",
        group * t * width * 4 * 4 + scores + 2 * t * sae_plan.d_sae as u64 * 4,
    );

    let model = job.load_model(parts, &plan)?;
    let sae = sae_plan.load(&job.ui, sae_parts, &job.device)?;
    let model_info = job.model_info();
    let sae_info = sae_plan.info();
    let ui = &job.ui;

    let mut out = stdout();
    let mut reports = Vec::with_capacity(prompts.len());
    for (group, group_ids) in encoded.chunks(PROMPT_GROUP).enumerate() {
        let activations = ui.phase("forward", || {
            pipeline::capture_many(&model, group_ids, point)
        })?;
        for (offset, (ids, x)) in group_ids.iter().zip(&activations).enumerate() {
            let index = group * PROMPT_GROUP + offset;
            let input = PromptInput {
                index,
                text: &prompts[index],
                ids,
                pieces: ids.iter().map(|&id| tokenizer.piece(id)).collect(),
            };
            let encoded = ui.phase("encode", || pipeline::encode(x, &sae))?;
            let mut report = ui
                .phase("metrics", || {
                    pipeline::analyze(input, x, &encoded, sae.d_sae(), point, args.top_k)
                })
                .with_context(|| format!("prompt {}", index + 1))?;
            if let Some(feature) = args.highlight {
                report.highlight =
                    Some(ui.phase("encode", || pipeline::highlight(x, &sae, feature))?);
            }
            if let Some(neuronpedia) = sae_plan.neuronpedia() {
                report.link_neuronpedia(neuronpedia);
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
            crate::system::write_file_atomically(path, |w| {
                output::features_html::write_features_html(w, &report, &|_| None)
            })?;
            output::dashboard::readable_by_all(path)?;
        }
        ui.phase("output", || {
            write_report(&mut out, &report, args.output.json, style)
        })?;
    }
    out.flush()?;
    ui.report_phases();
    Ok(ExitCode::SUCCESS)
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
