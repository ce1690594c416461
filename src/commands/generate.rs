//! `gemscope generate`: continue a prompt with the whole model, streaming the text as it comes.

use super::{model_info, open_model};
use crate::cli::{dtype_name, select_device, GenerationArgs, ModelArgs};
use crate::generate::{self, GenerateOptions, Generation};
use crate::hub::{self, HubClient, ModelFiles};
use crate::model::{self, Gemma2, NoHook, Parts};
use crate::output::{self, TextStream};
use crate::report::{Continuation, GenerateReport, PromptInfo, SamplingInfo, SCHEMA_VERSION};
use crate::system::MemoryPlan;
use crate::tokenizer::PromptTokenizer;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::io::{BufWriter, IsTerminal, Write};
use std::process::ExitCode;

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

/// The prompt, tokenized, and the tokens that stop generation.
pub(crate) struct PreparedPrompt {
    pub tokenizer: PromptTokenizer,
    pub info: PromptInfo,
}

/// Tokenizes the prompt (through the chat template with `--chat`) and finds the stop tokens:
/// the config's `eos_token_id` (else the vocabulary's `<eos>`), and `<end_of_turn>` when the
/// vocabulary has it. Without those special tokens in the vocabulary, the template's markers
/// are tokenized as ordinary text.
pub(crate) fn prepare_prompt(args: &GenerationArgs, files: &ModelFiles) -> Result<PreparedPrompt> {
    let cfg = &files.config;
    let tokenizer = PromptTokenizer::from_file(&files.tokenizer, cfg.bos_token_id)?;
    let prompt_text = args.prompt_text();
    let prompt_ids = tokenizer.encode(&prompt_text)?;
    let context = cfg.max_position_embeddings;
    ensure!(
        prompt_ids.len() + args.max_new_tokens <= context,
        "the prompt's {} tokens (BOS included) and --max-new-tokens {} exceed the model's context of {context}",
        prompt_ids.len(),
        args.max_new_tokens
    );
    let mut stop_ids = cfg.eos_token_ids.clone();
    if stop_ids.is_empty() {
        stop_ids.extend(tokenizer.token_id("<eos>"));
    }
    if let Some(id) = tokenizer.token_id("<end_of_turn>") {
        if !stop_ids.contains(&id) {
            stop_ids.push(id);
        }
    }
    Ok(PreparedPrompt {
        tokenizer,
        info: PromptInfo {
            prompt: args.prompt.clone(),
            chat: args.chat,
            prompt_text,
            prompt_ids,
            stop_ids,
        },
    })
}

/// The whole model, resident (every block runs for every token), after checking it fits.
pub(crate) fn load_full_model(
    client: &HubClient,
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
    extra: &[(&str, u64)],
) -> Result<Gemma2> {
    let cfg = &files.config;
    let parts = Parts::full(cfg);
    let mut plan = MemoryPlan::default();
    let bytes = dtype.size_in_bytes() as u64;
    plan.add(
        format!("{} blocks in {}", cfg.num_hidden_layers, dtype_name(dtype)),
        cfg.block_parameters() * cfg.num_hidden_layers as u64 * bytes,
    );
    plan.add(
        "embedding (the tied LM head)",
        (cfg.vocab_size * cfg.hidden_size) as u64 * bytes,
    );
    for (what, size) in extra {
        plan.add(*what, *size);
    }
    if dtype == DType::F32 {
        plan.saving(
            "--dtype bf16",
            cfg.block_parameters() * cfg.num_hidden_layers as u64 * 2,
        );
    }
    plan.check_available()?;
    hub::fetch_weights(client, files, parts)?;
    model::load(files, parts, dtype, device)
}

pub(crate) fn continuation(
    generation: &Generation,
    tokenizer: &PromptTokenizer,
) -> Result<Continuation> {
    Ok(Continuation {
        generated_ids: generation.ids.clone(),
        text: tokenizer.decode(&generation.ids)?,
        stop_reason: if generation.stop.is_some() {
            "stop_token"
        } else {
            "max_new_tokens"
        },
        stop_token: generation.stop,
        prefill_seconds: generation.prefill_seconds,
        decode_seconds: generation.decode_seconds,
        tokens_per_second: generation.tokens_per_second(),
    })
}

/// A one-line account of a run on stderr, only for a person at a terminal.
pub(crate) fn note_speed(label: &str, c: &Continuation) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let speed = c
        .tokens_per_second
        .map_or(String::new(), |t| format!(", {t:.1} tokens/s"));
    eprintln!(
        "gemscope: {label}{} tokens, prompt {:.2} s{speed}, stopped at {}",
        c.generated_ids.len(),
        c.prefill_seconds,
        c.stop_reason.replace('_', " ")
    );
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let sampling = args.generation.sampling()?;
    let device = select_device(args.model.device)?;
    let dtype = args.model.dtype.dtype();
    let (client, files) = open_model(&args.model)?;
    let _cfg = files.config.clone();
    let prepared = prepare_prompt(&args.generation, &files)?;
    let model = load_full_model(&client, &files, dtype, &device, &[])?;

    let options = GenerateOptions::new(
        args.generation.max_new_tokens,
        sampling,
        prepared.info.stop_ids.clone(),
    );
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let generation = if args.json {
        generate::generate(
            &model,
            &prepared.info.prompt_ids,
            &options,
            &mut NoHook,
            |_| Ok(()),
        )
    } else {
        // Text is decoded from all tokens so far and printed as it grows, so that a character
        // split over several byte tokens appears whole.
        let mut stream = TextStream::default();
        let tokenizer = &prepared.tokenizer;
        let generation = generate::generate(
            &model,
            &prepared.info.prompt_ids,
            &options,
            &mut NoHook,
            |token| {
                stream.push(token);
                let text = tokenizer.decode(stream.ids())?;
                stream.write_new(&mut out, &text, false)?;
                Ok(())
            },
        );
        if generation.is_ok() {
            let text = tokenizer.decode(stream.ids())?;
            stream.write_new(&mut out, &text, true)?;
            writeln!(out)?;
        }
        generation
    }
    .context("generation failed")?;
    let continuation = continuation(&generation, &prepared.tokenizer)?;
    if args.json {
        let report = GenerateReport {
            schema_version: SCHEMA_VERSION,
            gemscope_version: env!("CARGO_PKG_VERSION"),
            model: model_info(&files, &device, dtype),
            prompt: prepared.info,
            sampling: SamplingInfo {
                sampling,
                max_new_tokens: args.generation.max_new_tokens,
            },
            continuation,
        };
        output::write_json(&mut out, &report)?;
    } else {
        note_speed("", &continuation);
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
