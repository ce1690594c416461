//! What a run shows besides its results: notes and progress bars on stderr (off with `--quiet`),
//! phase timings (`--verbose`), and how stdout is styled. The environment (`NO_COLOR`,
//! `COLUMNS`, whether stderr is a terminal) is read once, here, when the plan is made.

use crate::cli::{ColorArg, GlobalArgs};
use crate::output::style::{Style, DEFAULT_WIDTH};
use std::cell::RefCell;
use std::fmt::Display;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Where a run reports to a person.
#[derive(Debug)]
pub struct Ui {
    quiet: bool,
    verbose: bool,
    stderr_terminal: bool,
    started: Instant,
    /// Time spent in each phase so far, in the order phases were first entered.
    phases: RefCell<Vec<(&'static str, Duration)>>,
}

impl Ui {
    pub fn new(global: GlobalArgs) -> Self {
        Self {
            quiet: global.quiet,
            verbose: global.verbose,
            stderr_terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            phases: RefCell::new(Vec::new()),
        }
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// Whether a person is watching stderr: progress bars and speed lines are for them only.
    pub fn interactive(&self) -> bool {
        self.stderr_terminal && !self.quiet
    }

    /// `gemscope: note: ...` on stderr, unless `--quiet`: the one form every notice takes.
    pub fn note(&self, message: impl Display) {
        if !self.quiet {
            eprintln!("gemscope: note: {message}");
        }
    }

    /// A note only `--verbose` shows: how the job was planned, for someone tuning it.
    pub fn detail(&self, message: impl Display) {
        if self.verbose {
            eprintln!("gemscope: note: {message}");
        }
    }

    /// Runs `work`, adding its time to `phase` (shown by `--verbose`).
    pub fn phase<T>(&self, phase: &'static str, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = work();
        let elapsed = start.elapsed();
        let mut phases = self.phases.borrow_mut();
        match phases.iter_mut().find(|(name, _)| *name == phase) {
            Some((_, total)) => *total += elapsed,
            None => phases.push((phase, elapsed)),
        }
        result
    }

    /// With `--verbose`, one line on stderr with each phase's time and the run's total.
    pub fn report_phases(&self) {
        if !self.verbose {
            return;
        }
        let phases = self.phases.borrow();
        let parts: Vec<String> = phases
            .iter()
            .map(|(name, d)| format!("{name} {:.3} s", d.as_secs_f64()))
            .collect();
        eprintln!(
            "gemscope: timings: {}; total {:.3} s",
            parts.join(", "),
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A progress bar over `len` units, drawn only for a person at a terminal.
    pub fn progress(&self, len: u64, template: &str) -> indicatif::ProgressBar {
        if !self.interactive() {
            return indicatif::ProgressBar::hidden();
        }
        indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        )
    }

    /// How to style stdout: colour as `--color` and `NO_COLOR` say, the width from `COLUMNS`.
    pub fn style(&self, color: ColorArg) -> Style {
        Style {
            color: color.enabled(),
            width: terminal_width(),
        }
    }
}

/// The terminal's width from `COLUMNS`, else 100.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c >= 20)
        .unwrap_or(DEFAULT_WIDTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_by_name_in_first_seen_order() {
        let ui = Ui::new(GlobalArgs {
            quiet: false,
            verbose: true,
        });
        ui.phase("load", || std::thread::sleep(Duration::from_millis(2)));
        ui.phase("forward", || ());
        ui.phase("load", || std::thread::sleep(Duration::from_millis(2)));
        let phases = ui.phases.borrow();
        let names: Vec<&str> = phases.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["load", "forward"]);
        assert!(phases[0].1 >= Duration::from_millis(4));
    }
}
