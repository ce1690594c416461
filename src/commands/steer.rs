//! `gemscope steer`: a continuation with SAE features written into the residual stream, beside
//! the unsteered one.

use super::generate::{continuation, load_full_model, note_speed, prepare_prompt};
use super::model_info;
use super::{check_layer, check_sae_width, open_model, resolve_sae, sae_info};
use crate::cli::{select_device, ColorArg, GenerationArgs, ModelArgs, SaeArgs};
use crate::generate::{self, GenerateOptions, SteerMode, Steering};
use crate::model::{HookPoint, NoHook, Site};
use crate::output::{self, Style};
use crate::report::{SamplingInfo, SteerReport, SteeringEntry, SCHEMA_VERSION};
use crate::sae::{self, JumpReluSae, SaeParts};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

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
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Print one JSON document instead of the side-by-side view.
    #[arg(long)]
    pub json: bool,
    /// Colour in the side-by-side view; NO_COLOR, when set, always turns it off.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

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

pub fn run(args: SteerArgs) -> Result<ExitCode> {
    let steering = pairs(&args)?;
    let sampling = args.generation.sampling()?;
    let device = select_device(args.model.device)?;
    let dtype = args.model.dtype.dtype();
    let (client, files) = open_model(&args.model)?;
    let cfg = files.config.clone();
    check_layer(args.layer, &cfg)?;
    let point = HookPoint {
        layer: args.layer,
        site: Site::Res,
    };
    let prepared = prepare_prompt(&args.generation, &files)?;

    let resolved = resolve_sae(&client, &args.sae, &files, point)?;
    let (d_in, d_sae) = sae::read_dims(&resolved.path)?;
    check_sae_width(d_in, point.site, &cfg)?;
    if let Some(&(f, _)) = steering.iter().find(|&&(f, _)| f >= d_sae) {
        bail!(
            "--feature {f} does not exist: the SAE has {d_sae} features (0..={})",
            d_sae - 1
        );
    }
    let sae_bytes = (2 * d_in as u64 * d_sae as u64 + 2 * d_sae as u64 + d_in as u64) * 4;
    let model = load_full_model(&client, &files, dtype, &device, &[("SAE", sae_bytes)])?;
    let sae = JumpReluSae::load(&resolved.path, d_in, SaeParts::EncoderDecoder, &device)?;
    let mut hook = Steering::new(&sae, args.layer, args.mode, &steering)?;

    let options = GenerateOptions::new(
        args.generation.max_new_tokens,
        sampling,
        prepared.info.stop_ids.clone(),
    );
    let ids = &prepared.info.prompt_ids;
    let baseline = generate::generate(&model, ids, &options, &mut NoHook, |_| Ok(()))
        .context("generation without steering failed")?;
    let steered = generate::generate(&model, ids, &options, &mut hook, |_| Ok(()))
        .context("steered generation failed")?;

    let baseline = continuation(&baseline, &prepared.tokenizer)?;
    let steered = continuation(&steered, &prepared.tokenizer)?;
    let report = SteerReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        model: model_info(&files, &device, dtype),
        sae: sae_info(&resolved, d_in, d_sae),
        hook: point,
        layer: args.layer,
        mode: args.mode,
        steering: steering
            .iter()
            .map(|&(feature, strength)| SteeringEntry {
                feature: feature as u32,
                strength,
                neuronpedia_url: resolved.neuronpedia.as_ref().map(|n| n.url(feature as u32)),
            })
            .collect(),
        prompt: prepared.info,
        sampling: SamplingInfo {
            sampling,
            max_new_tokens: args.generation.max_new_tokens,
        },
        baseline,
        steered,
    };

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.json {
        output::write_json(&mut out, &report)?;
    } else {
        let style = Style {
            color: args.color.enabled(),
        };
        output::write_steer_view(&mut out, &report, style, output::terminal_width())?;
        note_speed("baseline: ", &report.baseline);
        note_speed("steered: ", &report.steered);
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
