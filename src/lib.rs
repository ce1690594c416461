//! gemscope: inspect Gemma 2 through Gemma Scope sparse autoencoders.
//!
//! The data path: argv -> [`cli`] flags -> one validated plan ([`commands::Job`]) -> [`hub`]
//! resolves the files -> [`model`] blocks 0..=L with a [`model::Hook`] -> [`sae`] encode/decode
//! -> [`metrics`] -> one [`report`] struct -> an [`output`] view -> stdout or a file.
//! [`pipeline`] strings the forward pass and the SAE together for prompts; [`eval`] splices the
//! SAE into the model; [`generate`] runs the whole model autoregressively (KV cache, sampling,
//! steering). [`ui`] owns stderr (notes, progress, `--verbose` timings).
//!
//! Dependencies point one way: `main -> cli/commands -> (hub, model, sae, pipeline, eval,
//! generate) -> (metrics, report) -> output`; [`system`], [`npy`] and [`tokenizer`] are leaves.

pub mod attribution;
pub mod card;
pub mod cli;
pub mod commands;
pub mod corpus;
pub mod dashboard;
pub mod eval;
pub mod generate;
pub mod hub;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod output;
pub mod pipeline;
pub mod report;
pub mod sae;
pub mod system;
pub mod tokenizer;
pub mod ui;

use std::process::ExitCode;

/// Parses the command line and runs the command. Errors come back for `main` to print.
pub fn run() -> anyhow::Result<ExitCode> {
    use clap::Parser;
    let cli = cli::Cli::parse();
    let ui = ui::Ui::new(cli.global);
    use cli::Command;
    match cli.command {
        Command::Features(args) => commands::features::run(args, ui),
        Command::Eval(args) => commands::eval::run(args, ui),
        Command::Activations(args) => commands::activations::run(args, ui),
        Command::ListSaes(args) => commands::list_saes::run(args, ui),
        Command::Generate(args) => commands::generate::run(args, ui),
        Command::Steer(args) => commands::steer::run(args, ui),
        Command::Attribute(args) => commands::attribute::run(args, ui),
        Command::Dashboard(args) => commands::dashboard::run(args, ui),
        Command::Completions(args) => commands::meta::completions(args),
        Command::Man(args) => commands::meta::man(args),
        Command::Labels(args) => commands::labels::run(args, ui),
        Command::Explain(args) => commands::explain::run(args, ui),
        Command::Search(args) => commands::search::run(args, ui),
        Command::TopExamples(args) => commands::top_examples::run(args, ui),
        Command::Merge(args) => commands::top_examples::run_merge(args, ui),
    }
}

/// An error and its causes on one line, `outer: inner: root`, for `gemscope: ...` on stderr.
/// candle's errors carry a captured backtrace in their message when `RUST_BACKTRACE` is set; it is
/// left out, as are causes that only repeat the one before.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let message = match cause.downcast_ref::<candle_core::Error>() {
            Some(e) => candle_message(e),
            None => cause.to_string(),
        };
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if message.is_empty() || parts.last().is_some_and(|last| last.ends_with(&message)) {
            continue;
        }
        parts.push(message);
    }
    parts.join(": ")
}

fn candle_message(err: &candle_core::Error) -> String {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_drops_backtraces_newlines_and_repeats() {
        let candle = candle_core::Error::Msg("tensor x is missing".into()).bt();
        let err = anyhow::Error::from(candle).context("cannot load the weights of m");
        std::env::set_var("RUST_BACKTRACE", "1");
        let line = error_line(&err);
        assert_eq!(line, "cannot load the weights of m: tensor x is missing");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::from(io).context("cannot open a\nb");
        assert!(!error_line(&err).contains('\n'));
    }
}
