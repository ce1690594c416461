//! One file per subcommand, each only its own logic on top of the shared [`Job`]: flags in,
//! a report out to the view the flags chose.

pub mod activations;
pub mod attribute;
pub mod dashboard;
pub mod eval;
pub mod explain;
pub mod features;
pub mod generate;
pub mod job;
pub mod labels;
pub mod list_saes;
pub mod meta;
pub mod search;
pub mod steer;
pub mod top_examples;

pub use job::{check_sae_width, site_width, Job, SaePlan};

use crate::report::Continuation;
use std::io::{BufWriter, StdoutLock};

/// Standard output, locked and buffered: every command writes its results through this.
pub fn stdout() -> BufWriter<StdoutLock<'static>> {
    BufWriter::new(std::io::stdout().lock())
}

/// A one-line account of a generation on stderr, only for a person at a terminal.
pub(crate) fn note_speed(ui: &crate::ui::Ui, label: &str, c: &Continuation) {
    if !ui.interactive() {
        return;
    }
    let speed = c
        .tokens_per_second
        .map_or(String::new(), |t| format!(", {t:.1} tokens/s"));
    ui.note(format!(
        "{label}{} tokens, prompt {:.2} s{speed}, stopped at {}",
        c.generated_ids.len(),
        c.prefill_seconds,
        c.stop_reason.replace('_', " ")
    ));
}
