//! `gemscope features`: per-token SAE features and reconstruction statistics for prompts.

use super::{
    check_sae_width, encode_prompts, hook_point, model_info, open_model, resolve_sae, sae_info,
};
use crate::cli::{dtype_name, select_device, HookArgs, ModelArgs, OutputArgs, PromptArgs, SaeArgs};
use crate::hub;
use crate::model::{self, Parts};
use crate::output::{self, Style};
use crate::pipeline::{self, PromptInput};
use crate::report::{FeaturesReport, PromptLine, SCHEMA_VERSION};
use crate::sae::{self, JumpReluSae, SaeParts};
use crate::system::MemoryPlan;
use crate::tokenizer::PromptTokenizer;
use anyhow::{ensure, Context, Result};
use candle_core::DType;
use clap::Args;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    /// Features listed per token and in each prompt's aggregate ranking.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top_k: usize,
    /// Load only the SAE encoder (W_enc, b_enc, threshold): half the SAE's memory, for very wide
    /// SAEs; variance explained and MSE are then not computed (null in JSON).
    #[arg(long)]
    pub encode_only: bool,
    /// Also print each prompt with its tokens shaded by feature F's activation relative to the
    /// prompt's max (with --color never, active tokens are marked `[token:1.23]`).
    #[arg(long, value_name = "F")]
    pub highlight: Option<usize>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Prompts that pass through the blocks together: each streamed block is read once per group,
/// and a group's activations are all that is held at once.
const PROMPT_GROUP: usize = 32;

/// The large allocations of a `features` run: the SAE, one streamed block, and a prompt group's
/// activations, attention scores and feature activations.
fn memory_plan(
    cfg: &model::Config,
    dtype: DType,
    d_in: usize,
    d_sae: usize,
    encode_only: bool,
    longest: usize,
    group: usize,
) -> MemoryPlan {
    let f32_bytes = 4u64;
    let (d_in, d_sae, t) = (d_in as u64, d_sae as u64, longest as u64);
    let mut plan = MemoryPlan::default();
    plan.add("SAE encoder", (d_in * d_sae + 2 * d_sae) * f32_bytes);
    let decoder = (d_sae * d_in + d_in) * f32_bytes;
    if !encode_only {
        plan.add("SAE decoder", decoder);
        plan.saving("--encode-only", decoder);
    }
    let block = cfg.block_parameters() * dtype.size_in_bytes() as u64;
    plan.add(format!("one block in {}", dtype_name(dtype)), block);
    if dtype == DType::F32 {
        plan.saving("--dtype bf16", block / 2);
    }
    let width = cfg.hidden_size.max(cfg.intermediate_size) as u64;
    let scores = 2 * cfg.num_attention_heads as u64 * t * t * f32_bytes;
    plan.add(
        "activations",
        group as u64 * t * width * f32_bytes * 4 + scores + 2 * t * d_sae * f32_bytes,
    );
    plan
}

pub fn run(args: FeaturesArgs) -> Result<ExitCode> {
    let prompts = args.prompts.collect()?;
    ensure!(args.top_k >= 1, "--top-k must be at least 1");
    let device = select_device(args.model.device)?;
    let dtype = args.model.dtype.dtype();
    let (client, files) = open_model(&args.model)?;
    let cfg = &files.config;
    let point = hook_point(&args.hook, cfg)?;

    // Tokenize everything before any large download or load, so a bad prompt fails fast.
    let tokenizer = PromptTokenizer::from_file(&files.tokenizer, cfg.bos_token_id)?;
    let encoded = encode_prompts(&tokenizer, &prompts, cfg, None)?;

    let resolved = resolve_sae(&client, &args.sae, &files, point)?;
    let (d_in, d_sae) = sae::read_dims(&resolved.path)?;
    check_sae_width(d_in, point.site, cfg)?;
    ensure!(
        args.top_k <= d_sae,
        "--top-k {} is larger than the SAE's {d_sae} features",
        args.top_k
    );
    if let Some(f) = args.highlight {
        ensure!(
            f < d_sae,
            "--highlight {f} does not exist: the SAE has {d_sae} features (0..={})",
            d_sae - 1
        );
    }

    // Before any large download or allocation: will it fit?
    let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
    let group = encoded.len().min(PROMPT_GROUP);
    memory_plan(cfg, dtype, d_in, d_sae, args.encode_only, longest, group).check_available()?;

    let parts = Parts::through_layer(point.layer);
    hub::fetch_weights(&client, &files, parts)?;
    let sae_parts = if args.encode_only {
        SaeParts::EncoderOnly
    } else {
        SaeParts::EncoderDecoder
    };
    let sae = JumpReluSae::load(&resolved.path, d_in, sae_parts, &device)?;
    let model = model::load(&files, parts, dtype, &device)?;

    let model_info = model_info(&files, &device, dtype);
    let sae_info = sae_info(&resolved, d_in, d_sae);

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut reports = Vec::with_capacity(prompts.len());
    for (group, group_ids) in encoded.chunks(PROMPT_GROUP).enumerate() {
        let activations = pipeline::capture_many(&model, group_ids, point)?;
        for (offset, (ids, x)) in group_ids.iter().zip(&activations).enumerate() {
            let index = group * PROMPT_GROUP + offset;
            let pieces = ids.iter().map(|&id| tokenizer.piece(id)).collect();
            let input = PromptInput {
                index,
                text: &prompts[index],
                ids,
                pieces,
            };
            let mut report = pipeline::analyze(input, x, &sae, point, args.top_k)
                .with_context(|| format!("prompt {}", index + 1))?;
            if let Some(feature) = args.highlight {
                report.highlight = Some(pipeline::highlight(x, &sae, feature)?);
            }
            if let Some(neuronpedia) = &resolved.neuronpedia {
                report.link_neuronpedia(neuronpedia);
            }
            if args.output.jsonl {
                let line = PromptLine {
                    schema_version: SCHEMA_VERSION,
                    hook: point,
                    sae: &sae_info,
                    prompt: &report,
                };
                output::write_jsonl_line(&mut out, &line)?;
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
