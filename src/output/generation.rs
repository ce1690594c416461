//! `generate`'s streamed text and `steer`'s two continuations side by side.

use super::style::*;
use crate::report::{Continuation, SteerReport};
use std::io::{self, Write};

/// Streams generated text: given the decoding of every token so far, writes what is new. A
/// trailing U+FFFD (a character whose bytes have not all arrived) waits for the next token.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    written: usize,
}

impl TextStream {
    pub fn push(&mut self, id: u32) {
        self.ids.push(id);
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Writes the part of `text` not yet written and flushes; `last` writes a trailing U+FFFD too.
    pub fn write_new(&mut self, w: &mut dyn Write, text: &str, last: bool) -> io::Result<()> {
        let end = if last {
            text.len()
        } else {
            text.trim_end_matches('\u{FFFD}').len()
        };
        if end > self.written && text.is_char_boundary(self.written) {
            w.write_all(&text.as_bytes()[self.written..end])?;
            self.written = end;
            w.flush()?;
        }
        Ok(())
    }
}

fn describe_stop(c: &Continuation) -> String {
    let n = c.generated_ids.len();
    let tokens = format!("{n} token{}", if n == 1 { "" } else { "s" });
    match c.stop_token {
        Some(id) => format!("{tokens}, stopped at token {id}"),
        None => format!("{tokens}, --max-new-tokens reached"),
    }
}

/// The human view of `gemscope steer`: a header naming the steering, then the baseline and
/// steered continuations in two columns (stacked, each labelled, on a narrow terminal).
pub fn write_steer_view(w: &mut dyn Write, report: &SteerReport, style: Style) -> io::Result<()> {
    let width = style.width;
    let steering: Vec<String> = report
        .steering
        .iter()
        .map(|s| match &s.label {
            Some(label) => format!(
                "#{} ({}) {:+}",
                s.feature,
                super::card::truncate_label(label, 40),
                s.strength
            ),
            None => format!("#{} {:+}", s.feature, s.strength),
        })
        .collect();
    let steering = steering.join(", ");
    writeln!(
        w,
        "{} layer {} res · {} {} · SAE {} features ({}) · {} {}",
        style.bold("gemscope steer:"),
        report.layer,
        report.mode.name(),
        style.feature(&steering),
        report.sae.d_sae,
        report.sae.source,
        report.model.device,
        report.model.dtype
    )?;
    writeln!(
        w,
        "{} {}{}",
        style.bold("prompt:"),
        display_prompt(&report.prompt.prompt),
        if report.prompt.chat {
            " (chat template)"
        } else {
            ""
        }
    )?;
    writeln!(w)?;
    let left_label = "baseline";
    let right_label = format!("steered ({} {steering})", report.mode.name());
    if width < MIN_SIDE_BY_SIDE {
        for (label, c) in [
            (left_label.to_string(), &report.baseline),
            (right_label, &report.steered),
        ] {
            writeln!(w, "{}", style.bold(&format!("── {label} ──")))?;
            for line in wrap(&c.text, width) {
                writeln!(w, "{line}")?;
            }
            writeln!(w, "{}", style.dim(&format!("({})", describe_stop(c))))?;
        }
        return Ok(());
    }
    let col = (width - 3) / 2;
    let left = wrap(&report.baseline.text, col);
    let right = wrap(&report.steered.text, col);
    let rule = |l: &str, r: &str| format!("{} │ {}", pad(l, col), r);
    writeln!(
        w,
        "{}",
        style.bold(&rule(left_label, &clip_to(&right_label, col)))
    )?;
    writeln!(w, "{}┼{}", "─".repeat(col + 1), "─".repeat(col + 1))?;
    for i in 0..left.len().max(right.len()) {
        let l = left.get(i).map_or("", String::as_str);
        let r = right.get(i).map_or("", String::as_str);
        writeln!(w, "{}", rule(l, r).trim_end())?;
    }
    let (ls, rs) = (
        describe_stop(&report.baseline),
        describe_stop(&report.steered),
    );
    writeln!(w, "{}", style.dim(rule(&clip_to(&ls, col), &rs).trim_end()))?;
    Ok(())
}
