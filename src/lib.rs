//! gemscope: inspect Gemma 2 through Gemma Scope sparse autoencoders.
//!
//! The data path: prompt -> [`tokenizer`] -> [`model`] blocks 0..=L with a [`model::Hook`] ->
//! [`sae`] encode/decode -> [`metrics`] -> one [`report`] struct -> [`output`] formatter.
//! [`pipeline`] strings these together; [`commands`] wires them to the flags in [`cli`].

pub mod cli;
pub mod commands;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod output;
pub mod pipeline;
pub mod report;
pub mod sae;
pub mod tokenizer;

use std::process::ExitCode;

/// Parses the command line and runs the command. Errors come back for `main` to print.
pub fn run() -> anyhow::Result<ExitCode> {
    use clap::Parser;
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Features(args) => commands::features::run(args),
        cli::Command::Activations(args) => commands::activations::run(args),
        cli::Command::ListSaes(args) => commands::list_saes::run(args),
    }
}
