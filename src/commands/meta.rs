//! `gemscope completions` and `gemscope man`: the shell completion scripts and man pages,
//! generated from the same clap definitions as the parser, so they never drift from the flags.

use super::stdout;
use crate::cli::{Cli, CompletionsArgs, ManArgs, Shell};
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;
use std::process::ExitCode;

pub fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    use clap_complete::shells;
    let mut cmd = Cli::command();
    let mut out = stdout();
    let name = "gemscope";
    match args.shell {
        Shell::Bash => clap_complete::generate(shells::Bash, &mut cmd, name, &mut out),
        Shell::Zsh => clap_complete::generate(shells::Zsh, &mut cmd, name, &mut out),
        Shell::Fish => clap_complete::generate(shells::Fish, &mut cmd, name, &mut out),
        Shell::Powershell => clap_complete::generate(shells::PowerShell, &mut cmd, name, &mut out),
        Shell::Elvish => clap_complete::generate(shells::Elvish, &mut cmd, name, &mut out),
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs) -> Result<ExitCode> {
    let cmd = Cli::command();
    match &args.out_dir {
        None => {
            let mut out = stdout();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // One page for gemscope and one per subcommand, named as man expects
            // (gemscope-features.1), each written atomically.
            let mut pages = vec![(String::from("gemscope"), cmd.clone())];
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("gemscope-{}", sub.get_name());
                pages.push((name.clone(), sub.clone().name(name.clone())));
            }
            for (name, page) in pages {
                let path = dir.join(format!("{name}.1"));
                crate::system::write_file_atomically(&path, |w| {
                    clap_mangen::Man::new(page).render(w)
                })?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
