//! `gemscope generate`: continue a prompt with the whole model, streaming the text as it comes.

use super::{note_speed, stdout, Job};
use crate::cli::GenerateArgs;
use crate::generate::{self, GenerateOptions};
use crate::model::{NoHook, Parts};
use crate::output::{self, generation::TextStream};
use crate::report::{GenerateReport, SamplingInfo, SCHEMA_VERSION};
use crate::ui::Ui;
use anyhow::{Context, Result};
use std::io::Write;
use std::process::ExitCode;

pub fn run(args: GenerateArgs, ui: Ui) -> Result<ExitCode> {
    let sampling = args.generation.sampling()?;
    let job = Job::open(&args.model, ui)?;
    let (tokenizer, prompt) = job.generation_prompt(&args.generation)?;
    let parts = Parts::full(job.config());
    let model = job.load_model(parts, &job.memory_plan(parts))?;
    let ui = &job.ui;

    let options = GenerateOptions::new(
        args.generation.max_new_tokens,
        sampling,
        prompt.stop_ids.clone(),
    );
    let mut out = stdout();
    let generation = ui.phase("forward", || {
        if args.json {
            return generate::generate(&model, &prompt.prompt_ids, &options, &mut NoHook, |_| {
                Ok(())
            });
        }
        // Text is decoded from all tokens so far and printed as it grows, so that a character
        // split over several byte tokens appears whole.
        let mut stream = TextStream::default();
        let generation =
            generate::generate(&model, &prompt.prompt_ids, &options, &mut NoHook, |token| {
                stream.push(token);
                let text = tokenizer.decode(stream.ids())?;
                stream.write_new(&mut out, &text, false)?;
                Ok(())
            })?;
        let text = tokenizer.decode(stream.ids())?;
        stream.write_new(&mut out, &text, true)?;
        writeln!(out)?;
        Ok(generation)
    });
    let continuation = generation
        .context("generation failed")?
        .continuation(&tokenizer)?;
    if args.json {
        let report = GenerateReport {
            schema_version: SCHEMA_VERSION,
            gemscope_version: env!("CARGO_PKG_VERSION"),
            model: job.model_info(),
            prompt,
            sampling: SamplingInfo {
                sampling,
                max_new_tokens: args.generation.max_new_tokens,
            },
            continuation,
        };
        output::json::write_json(&mut out, &report)?;
    } else {
        note_speed(ui, "", &continuation);
    }
    out.flush()?;
    ui.report_phases();
    Ok(ExitCode::SUCCESS)
}
