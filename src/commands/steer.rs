//! `gemscope steer`: a continuation with SAE features written into the residual stream, beside
//! the unsteered one.

use super::{note_speed, stdout, Job};
use crate::cli::SteerArgs;
use crate::generate::{self, GenerateOptions, Steering};
use crate::model::{NoHook, Parts, Site};
use crate::output;
use crate::report::{SamplingInfo, SteerReport, SteeringEntry, SCHEMA_VERSION};
use crate::sae::SaeParts;
use crate::ui::Ui;
use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::process::ExitCode;

/// The `(feature, strength)` pairs, in the order given.
fn pairs(args: &SteerArgs) -> Result<Vec<(usize, f32)>> {
    let (f, s) = (args.feature.len(), args.strength.len());
    if f == 0 {
        bail!(
            "nothing to steer: give --feature F --strength S (repeat the pair for more features)"
        );
    }
    ensure!(
        f == s,
        "each --feature needs its own --strength: got {f} --feature and {s} --strength"
    );
    if let Some(s) = args.strength.iter().find(|s| !s.is_finite()) {
        bail!("--strength {s} is not a finite number");
    }
    Ok(args
        .feature
        .iter()
        .copied()
        .zip(args.strength.iter().copied())
        .collect())
}

pub fn run(args: SteerArgs, ui: Ui) -> Result<ExitCode> {
    let steering = pairs(&args)?;
    let sampling = args.generation.sampling()?;
    let style = ui.style(args.color);
    let job = Job::open(&args.model, ui)?;
    let point = job.point(args.layer, Site::Res)?;
    let (tokenizer, prompt) = job.generation_prompt(&args.generation)?;

    let sae_plan = job.sae(&args.sae, point)?;
    for &(f, _) in &steering {
        sae_plan.check_feature("--feature", f)?;
    }
    let pending = job.pending_labels(&sae_plan, !args.no_labels);
    let parts = Parts::full(job.config());
    let mut plan = job.memory_plan(parts);
    sae_plan.add_to(&mut plan, SaeParts::EncoderDecoder, false);
    let model = job.load_model(parts, &plan)?;
    let sae = sae_plan.load(&job.ui, SaeParts::EncoderDecoder, &job.device)?;
    let ui = &job.ui;
    let mut hook = Steering::new(&sae, args.layer, args.mode, &steering)?;

    let options = GenerateOptions::new(
        args.generation.max_new_tokens,
        sampling,
        prompt.stop_ids.clone(),
    );
    let ids = &prompt.prompt_ids;
    let (baseline, steered) = ui.phase("forward", || -> Result<_> {
        let baseline = generate::generate(&model, ids, &options, &mut NoHook, |_| Ok(()))
            .context("generation without steering failed")?;
        let steered = generate::generate(&model, ids, &options, &mut hook, |_| Ok(()))
            .context("steered generation failed")?;
        Ok((baseline, steered))
    })?;

    let labels = job.finish_labels(pending);
    let label_of = |f: usize| {
        labels
            .as_ref()
            .and_then(|l| l.label(f as u32).map(str::to_string))
    };
    let report = SteerReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        model: job.model_info(),
        sae: sae_plan.info(),
        hook: point,
        layer: args.layer,
        mode: args.mode,
        steering: steering
            .iter()
            .map(|&(feature, strength)| SteeringEntry {
                feature: feature as u32,
                strength,
                label: label_of(feature),
                neuronpedia_url: sae_plan.neuronpedia().map(|n| n.url(feature as u32)),
            })
            .collect(),
        prompt,
        sampling: SamplingInfo {
            sampling,
            max_new_tokens: args.generation.max_new_tokens,
        },
        baseline: baseline.continuation(&tokenizer)?,
        steered: steered.continuation(&tokenizer)?,
    };

    let mut out = stdout();
    if args.json {
        output::json::write_json(&mut out, &report)?;
    } else {
        output::generation::write_steer_view(&mut out, &report, style)?;
        note_speed(ui, "baseline: ", &report.baseline);
        note_speed(ui, "steered: ", &report.steered);
    }
    out.flush()?;
    ui.report_phases();
    Ok(ExitCode::SUCCESS)
}
