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

/// A streamed block's weights (hundreds of MB) are freed and allocated again block after block.
/// By default glibc returns each large buffer to the kernel and maps fresh pages for the next,
/// which the kernel must zero: a quarter of a `features` run went to clearing pages. Serving
/// large buffers from the heap, and trimming it only past 1 GiB, lets the next block reuse them;
/// peak memory is unchanged (one block's buffers are freed before the next is read).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reuse_freed_buffers() {
    // Safety: mallopt only tunes the allocator; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reuse_freed_buffers() {}

fn main() -> ExitCode {
    reuse_freed_buffers();
    match gemscope::run() {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gemscope: {}", gemscope::error_line(&err));
            ExitCode::from(2)
        }
    }
}
