//! The `gemscope` binary: runs the command, prints any error once with its causes, picks the exit code.

use std::process::ExitCode;

/// A closed stdout (`gemscope ... | head`) is the reader's choice, not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    match gemscope::run() {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gemscope: {}", gemscope::error_line(&err));
            ExitCode::from(2)
        }
    }
}
