//! `gemscope features`: per-token SAE features and reconstruction statistics for prompts.

use super::{check_layer, site_width};
use crate::cli::{
    device_name, dtype_name, select_device, HookArgs, ModelArgs, OutputArgs, PromptArgs,
};
use crate::hub::ModelFiles;
use crate::model::{self, HookPoint, Parts, Site};
use crate::output::{self, Style};
use crate::pipeline::{self, PromptInput};
use crate::report::{FeaturesReport, HookInfo, ModelInfo, PromptLine, SaeInfo, SCHEMA_VERSION};
use crate::sae::{self, JumpReluSae, SaeParts};
use crate::tokenizer::PromptTokenizer;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// SAE parameters: a Gemma Scope params.npz, or a .safetensors with the same tensor names.
    #[arg(long, value_name = "FILE")]
    pub sae: PathBuf,
    #[command(flatten)]
    pub hook: HookArgs,
    /// Features listed per token and in each prompt's aggregate ranking.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top_k: usize,
    #[command(flatten)]
    pub prompts: PromptArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Fails unless the SAE's input width is the width of the hooked site, naming the site that would fit.
pub fn check_sae_width(d_in: usize, site: Site, cfg: &model::Config) -> Result<()> {
    let width = site_width(cfg, site);
    if d_in == width {
        return Ok(());
    }
    let fits: Vec<&str> = [Site::Res, Site::Mlp, Site::Att]
        .into_iter()
        .filter(|&s| site_width(cfg, s) == d_in)
        .map(Site::name)
        .collect();
    let hint = if fits.is_empty() {
        "no site of this model has that width".to_string()
    } else {
        format!("it fits --site {}", fits.join(" or --site "))
    };
    bail!("the SAE reads activations of width {d_in}, but site {site} has width {width}: {hint}");
}

pub fn run(args: FeaturesArgs) -> Result<ExitCode> {
    let prompts = args.prompts.collect()?;
    ensure!(args.top_k >= 1, "--top-k must be at least 1");
    let device = select_device(args.model.device)?;
    let dtype = args.model.dtype.dtype();
    let files = ModelFiles::from_dir(&args.model.model)?;
    let cfg = &files.config;
    check_layer(args.hook.layer, cfg)?;
    let point = HookPoint {
        layer: args.hook.layer,
        site: args.hook.site,
    };

    let (d_in, d_sae) = sae::read_dims(&args.sae)?;
    check_sae_width(d_in, point.site, cfg)?;
    ensure!(
        args.top_k <= d_sae,
        "--top-k {} is larger than the SAE's {d_sae} features",
        args.top_k
    );

    // Tokenize everything before loading weights, so a bad prompt fails fast.
    let tokenizer = PromptTokenizer::from_file(&files.tokenizer, cfg.bos_token_id)?;
    let encoded = prompts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let ids = tokenizer
                .encode(text)
                .with_context(|| format!("prompt {}", i + 1))?;
            let max = cfg.max_position_embeddings;
            ensure!(
                ids.len() <= max,
                "prompt {} has {} tokens (BOS included), more than the model's context of {max}",
                i + 1,
                ids.len()
            );
            ensure!(ids.len() >= 2, "prompt {} has no token after BOS", i + 1);
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;

    let sae = JumpReluSae::load(&args.sae, d_in, SaeParts::EncoderDecoder, &device)?;
    let model = model::load(&files, Parts::through_layer(point.layer), dtype, &device)?;

    let model_info = ModelInfo {
        source: files.source.clone(),
        num_layers: cfg.num_hidden_layers,
        hidden_size: cfg.hidden_size,
        device: device_name(&device).to_string(),
        dtype: dtype_name(dtype).to_string(),
    };
    let sae_info = SaeInfo {
        source: args.sae.display().to_string(),
        d_in,
        d_sae,
    };
    let hook = HookInfo {
        layer: point.layer,
        site: point.site,
    };

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut reports = Vec::with_capacity(prompts.len());
    for (index, (text, ids)) in prompts.iter().zip(&encoded).enumerate() {
        let x = pipeline::capture(&model, ids, point)?;
        let input = PromptInput {
            index,
            text,
            ids,
            pieces: ids.iter().map(|&id| tokenizer.piece(id)).collect(),
        };
        let report = pipeline::analyze(input, &x, &sae, point, args.top_k)
            .with_context(|| format!("prompt {}", index + 1))?;
        if args.output.jsonl {
            output::write_jsonl_line(
                &mut out,
                &PromptLine {
                    schema_version: SCHEMA_VERSION,
                    hook,
                    sae: &sae_info,
                    prompt: &report,
                },
            )?;
            out.flush()?;
        } else {
            reports.push(report);
        }
    }
    if !args.output.jsonl {
        let report = FeaturesReport {
            schema_version: SCHEMA_VERSION,
            gemscope_version: env!("CARGO_PKG_VERSION"),
            model: model_info,
            sae: sae_info,
            hook,
            top_k: args.top_k,
            prompts: reports,
        };
        if args.output.json {
            output::write_json(&mut out, &report)?;
        } else {
            output::write_features_table(
                &mut out,
                &report,
                Style {
                    color: args.output.use_color(),
                },
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
