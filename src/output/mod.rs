//! Formatters over the report structs: the human table, JSON and JSONL. They only format.

use crate::report::{
    Continuation, EvalReport, FeaturesReport, Highlight, PromptLine, PromptReport, SteerReport,
};
use serde::Serialize;
use std::io::{self, Write};
use unicode_width::UnicodeWidthStr;

/// How to render for a human: with ANSI colour or without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, sgr: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
    fn feature(&self, text: &str) -> String {
        self.paint("36", text)
    }
    fn value(&self, text: &str) -> String {
        self.paint("33", text)
    }
}

/// A token piece made safe to print on one line: control characters escaped (`\n`, `\t`,
/// `\u{1b}`), everything else (the `▁` of a leading space included) kept as the vocabulary has it.
pub fn display_piece(piece: &str) -> String {
    let mut out = String::with_capacity(piece.len());
    for c in piece.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The prompt text as it appears in the table heading: quoted, control characters escaped.
fn display_prompt(text: &str) -> String {
    let escaped = display_piece(text);
    let shown: String = escaped.chars().take(80).collect();
    if shown.len() < escaped.len() {
        format!("\"{shown}…\"")
    } else {
        format!("\"{shown}\"")
    }
}

/// Pads `text` on the right to `width` terminal columns (wide characters count double).
fn pad(text: &str, width: usize) -> String {
    let w = text.width();
    format!("{text}{}", " ".repeat(width.saturating_sub(w)))
}

/// A statistic with four significant digits (`0.5793`, `33.10`, `1234`), or `n/a`.
fn fmt_opt(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && v != 0.0 => {
            let magnitude = v.abs().log10().floor() as i32;
            let decimals = (3 - magnitude).clamp(0, 6) as usize;
            format!("{v:.decimals$}")
        }
        Some(v) => format!("{v}"),
        None => "n/a".to_string(),
    }
}

const MAX_TOKEN_COLUMNS: usize = 24;

/// Shortens a piece to the token column's width.
fn clip(piece: &str) -> String {
    if piece.width() <= MAX_TOKEN_COLUMNS {
        return piece.to_string();
    }
    let mut out = String::new();
    for c in piece.chars() {
        if out.width() + c.to_string().width() >= MAX_TOKEN_COLUMNS {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// The human table for `gemscope features`.
pub fn write_features_table(
    w: &mut dyn Write,
    report: &FeaturesReport,
    style: Style,
) -> io::Result<()> {
    writeln!(
        w,
        "{} layer {} {} · SAE {} features ({}) · {} {}",
        style.bold("gemscope features:"),
        report.hook.layer,
        report.hook.site,
        report.sae.d_sae,
        report.sae.source,
        report.model.device,
        report.model.dtype
    )?;
    for prompt in &report.prompts {
        writeln!(w)?;
        write_prompt_table(w, prompt, style)?;
    }
    Ok(())
}

fn write_prompt_table(w: &mut dyn Write, prompt: &PromptReport, style: Style) -> io::Result<()> {
    writeln!(
        w,
        "{} {}",
        style.bold(&format!("prompt {}:", prompt.index + 1)),
        display_prompt(&prompt.text)
    )?;
    let pieces: Vec<String> = prompt
        .tokens
        .iter()
        .map(|t| clip(&display_piece(&t.text)))
        .collect();
    let token_width = pieces
        .iter()
        .map(|p| p.width())
        .max()
        .unwrap_or(5)
        .max("token".len());
    let pos_width = prompt
        .tokens
        .len()
        .saturating_sub(1)
        .to_string()
        .len()
        .max(3);
    writeln!(
        w,
        "  {}",
        style.dim(&format!(
            "{:>pos_width$}  {}  {:>4}  top features (id activation)",
            "pos",
            pad("token", token_width),
            "L0"
        ))
    )?;
    for (token, piece) in prompt.tokens.iter().zip(&pieces) {
        let lead = format!(
            "{:>pos_width$}  {}",
            token.position,
            pad(piece, token_width)
        );
        if token.bos {
            writeln!(
                w,
                "  {}",
                style.dim(&format!(
                    "{lead}  {:>4}  BOS, excluded from statistics",
                    "-"
                ))
            )?;
            continue;
        }
        let features: Vec<String> = token
            .top_features
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    style.feature(&format!("#{:<5}", f.feature)),
                    style.value(&format!("{:>7.2}", f.activation))
                )
            })
            .collect();
        let features = if features.is_empty() {
            style.dim("(none active)")
        } else {
            features.join("   ")
        };
        writeln!(w, "  {lead}  {:>4}  {features}", token.l0)?;
    }
    let counted = prompt.tokens.len() - 1;
    writeln!(
        w,
        "  mean L0 {}   variance explained {}   MSE {}   over {counted} token{}",
        style.bold(&format!("{:.1}", prompt.mean_l0)),
        style.bold(&fmt_opt(prompt.variance_explained)),
        style.bold(&fmt_opt(prompt.mse)),
        if counted == 1 { "" } else { "s" }
    )?;
    if let Some(highlight) = &prompt.highlight {
        write_highlight(w, prompt, highlight, style)?;
    }
    if prompt.top_features.is_empty() {
        writeln!(w, "  {}", style.dim("no feature fired on this prompt"))?;
        return Ok(());
    }
    writeln!(
        w,
        "  {}",
        style.dim(&format!(
            "{:<10}{:>10}{:>10}{:>8}",
            "top feature", "sum", "max", "tokens"
        ))
    )?;
    for f in &prompt.top_features {
        writeln!(
            w,
            "  {}{}{:>10.2}{:>8}",
            style.feature(&format!("#{:<9}", f.stats.feature)),
            style.value(&format!("{:>10.2}", f.stats.activation_sum)),
            f.stats.activation_max,
            f.stats.active_tokens
        )?;
    }
    if let Some(url) = prompt
        .top_features
        .first()
        .and_then(|f| f.neuronpedia_url.as_deref())
    {
        writeln!(w, "  top feature on Neuronpedia: {}", style.paint("4", url))?;
    }
    Ok(())
}

/// Background shades for `--highlight`, faint to strong (xterm-256 colours, pale yellow to
/// orange-red), with black text so a dark terminal stays readable.
const HIGHLIGHT_SHADES: [u8; 5] = [230, 223, 216, 209, 202];

/// The shade of an activation relative to the prompt's max: `None` when the feature is off.
fn shade(activation: f32, max: f32) -> Option<u8> {
    if activation <= 0.0 || max <= 0.0 {
        return None;
    }
    let level = ((activation / max).min(1.0) * HIGHLIGHT_SHADES.len() as f32).ceil() as usize;
    Some(HIGHLIGHT_SHADES[level.clamp(1, HIGHLIGHT_SHADES.len()) - 1])
}

/// The prompt with each token shaded by one feature's activation (the Neuronpedia look); in
/// plain text, active tokens are marked `[token:1.23]`.
fn write_highlight(
    w: &mut dyn Write,
    prompt: &PromptReport,
    highlight: &Highlight,
    style: Style,
) -> io::Result<()> {
    let legend = if style.color {
        let ramp: String = HIGHLIGHT_SHADES
            .iter()
            .map(|c| format!("\x1b[30;48;5;{c}m  \x1b[0m"))
            .collect();
        format!("background = activation / max {ramp}")
    } else {
        "[token:activation] marks the tokens where it fires".to_string()
    };
    writeln!(
        w,
        "  {} {}",
        style.bold(&format!(
            "feature #{} on this prompt (max {:.2}):",
            highlight.feature, highlight.max
        )),
        style.dim(&legend)
    )?;
    let mut line = String::new();
    for (token, &a) in prompt.tokens.iter().zip(&highlight.activations) {
        let piece = display_piece(&token.text).replace('\u{2581}', " ");
        if token.bos {
            line.push_str(&style.dim(&piece));
            continue;
        }
        match shade(a, highlight.max) {
            Some(c) if style.color => line.push_str(&format!("\x1b[30;48;5;{c}m{piece}\x1b[0m")),
            Some(_) => line.push_str(&format!("[{piece}:{a:.2}]")),
            None if a > 0.0 && !style.color => line.push_str(&format!("[{piece}:{a:.2}]")),
            None => line.push_str(&piece),
        }
    }
    writeln!(w, "  {line}")
}

/// The human table for `gemscope eval`: metrics, gates, and the baseline side by side.
pub fn write_eval_table(w: &mut dyn Write, report: &EvalReport, style: Style) -> io::Result<()> {
    let m = &report.metrics;
    writeln!(
        w,
        "{} layer {} {} · SAE {} features ({}) · {} prompts, {} tokens · {} {}",
        style.bold("gemscope eval:"),
        report.hook.layer,
        report.hook.site,
        report.sae.d_sae,
        report.sae.source,
        report.prompts,
        m.tokens,
        report.model.device,
        report.model.dtype
    )?;
    writeln!(w)?;
    let rows: [(&str, String); 12] = [
        ("mean L0", format!("{:.2}", m.mean_l0)),
        ("variance explained", fmt_opt(Some(m.variance_explained))),
        ("MSE", fmt_opt(Some(m.mse))),
        ("cosine similarity", fmt_opt(Some(m.cosine_similarity))),
        ("dead features", format!("{:.2}%", 100.0 * m.dead_fraction)),
        ("CE loss, clean", format!("{:.4}", m.ce_loss_clean)),
        ("CE loss, SAE spliced", format!("{:.4}", m.ce_loss_spliced)),
        (
            "CE loss, zero-ablated",
            format!("{:.4}", m.ce_loss_zero_ablation),
        ),
        ("delta loss", format!("{:+.4}", m.delta_loss)),
        ("CE loss score", format!("{:.4}", m.ce_loss_score)),
        ("KL(clean || spliced)", format!("{:.4}", m.kl_div)),
        ("predictions", m.predictions.to_string()),
    ];
    for (name, value) in rows {
        writeln!(w, "  {:<24}{}", name, style.bold(&value))?;
    }
    if let Some(baseline) = &report.baseline {
        writeln!(w)?;
        writeln!(
            w,
            "{} {} (tolerance {}%)",
            style.bold("baseline"),
            baseline.file,
            100.0 * baseline.tolerance
        )?;
        writeln!(
            w,
            "  {}",
            style.dim(&format!(
                "{:<24}{:>12}{:>12}{:>10}",
                "metric", "baseline", "current", "change"
            ))
        )?;
        for row in &baseline.metrics {
            writeln!(
                w,
                "  {:<24}{:>12.6}{:>12.6}{:>9.2}%",
                row.metric,
                row.baseline,
                row.current,
                100.0 * row.relative_change
            )?;
        }
    }
    if !report.gates.is_empty() {
        writeln!(w)?;
        writeln!(w, "{}", style.bold("gates"))?;
        for g in &report.gates {
            let mark = if g.passed {
                style.paint("32", "PASS")
            } else {
                style.paint("31;1", "FAIL")
            };
            writeln!(
                w,
                "  {mark}  {:<32}{} {:.6} {} {}",
                g.name, g.metric, g.value, g.op, g.threshold
            )?;
        }
    }
    Ok(())
}

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

/// The terminal's width from `COLUMNS`, else 100.
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c >= 20)
        .unwrap_or(100)
}

/// Narrower than this, `steer` stacks the two continuations instead of setting them side by side.
const MIN_SIDE_BY_SIDE: usize = 60;

/// Text wrapped to `width` terminal columns at spaces (a longer word is cut), keeping its own
/// line breaks; other control characters are escaped.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let paragraph = display_piece(paragraph);
        let mut line = String::new();
        for word in paragraph.split_inclusive(' ') {
            if line.width() + word.trim_end().width() > width && !line.is_empty() {
                lines.push(line.trim_end().to_string());
                line.clear();
            }
            for c in word.chars() {
                if line.width() + c.to_string().width() > width && c != ' ' {
                    lines.push(std::mem::take(&mut line));
                }
                line.push(c);
            }
        }
        lines.push(line.trim_end().to_string());
    }
    lines
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
pub fn write_steer_view(
    w: &mut dyn Write,
    report: &SteerReport,
    style: Style,
    width: usize,
) -> io::Result<()> {
    let steering: Vec<String> = report
        .steering
        .iter()
        .map(|s| format!("#{} {:+}", s.feature, s.strength))
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

/// Cuts `text` to `width` columns.
fn clip_to(text: &str, width: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.width() + c.to_string().width() > width {
            break;
        }
        out.push(c);
    }
    out
}

/// Writes a file through a temporary file in the same directory, renamed into place once
/// complete, so a failure never leaves a partial file that looks finished.
pub fn write_file_atomically(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let written = (|| -> io::Result<()> {
        let mut writer = io::BufWriter::new(tmp.as_file_mut());
        write(&mut writer)?;
        writer.flush()?;
        drop(writer);
        tmp.as_file().sync_all()
    })();
    written.with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// One pretty-printed JSON document and a newline.
pub fn write_json<T: Serialize>(w: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, value).map_err(io::Error::from)?;
    writeln!(w)
}

/// One compact JSON object on its own line.
pub fn write_jsonl_line(w: &mut dyn Write, line: &PromptLine<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *w, line).map_err(io::Error::from)?;
    writeln!(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{AggregateFeature, FeatureActivation};
    use crate::model::Site;
    use crate::report::*;

    fn report() -> FeaturesReport {
        let token = |position, id, text: &str, bos, l0, top: Vec<FeatureActivation>| TokenReport {
            position,
            id,
            text: text.into(),
            bos,
            l0,
            top_features: top.into_iter().map(Into::into).collect(),
        };
        FeaturesReport {
            schema_version: SCHEMA_VERSION,
            gemscope_version: "test",
            model: ModelInfo {
                source: "m".into(),
                revision: None,
                num_layers: 4,
                hidden_size: 8,
                device: "cpu".into(),
                dtype: "f32".into(),
            },
            sae: SaeInfo {
                source: "s.npz".into(),
                file: "s.npz".into(),
                repo: None,
                path: None,
                revision: None,
                width: None,
                l0: None,
                d_in: 8,
                d_sae: 16,
                neuronpedia: None,
            },
            hook: crate::model::HookPoint {
                layer: 1,
                site: Site::Res,
            },
            top_k: 2,
            prompts: vec![PromptReport {
                index: 0,
                text: "a\nb".into(),
                tokens: vec![
                    token(0, 2, "<bos>", true, 9, vec![]),
                    token(
                        1,
                        40,
                        "a",
                        false,
                        2,
                        vec![FeatureActivation {
                            feature: 3,
                            activation: 1.5,
                        }],
                    ),
                    token(2, 7, "<0x0A>", false, 0, vec![]),
                    token(
                        3,
                        41,
                        "▁東京\n",
                        false,
                        1,
                        vec![FeatureActivation {
                            feature: 12,
                            activation: 0.25,
                        }],
                    ),
                ],
                mean_l0: 1.0,
                variance_explained: Some(0.75),
                mse: Some(0.125),
                top_features: vec![AggregateFeature {
                    feature: 3,
                    activation_sum: 1.5,
                    activation_max: 1.5,
                    active_tokens: 1,
                }
                .into()],
                highlight: None,
            }],
        }
    }

    #[test]
    fn table_escapes_controls_marks_bos_and_aligns() {
        let mut out = Vec::new();
        write_features_table(&mut out, &report(), Style { color: false }).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("prompt 1: \"a\\nb\""), "{text}");
        assert!(text.contains("BOS, excluded"), "{text}");
        assert!(text.contains("▁東京\\n"), "{text}");
        assert!(text.contains("(none active)"), "{text}");
        assert!(text.contains("variance explained 0.7500"), "{text}");
        assert!(!text.contains('\x1b'), "no colour when off");
        // The L0 column starts at the same terminal column on every token row, wide characters included.
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("#3 ") || l.contains("#12 "))
            .collect();
        let l0_col: Vec<usize> = rows
            .iter()
            .map(|l| l.split("  #").next().unwrap().trim_end().width())
            .collect();
        assert_eq!(l0_col[0], l0_col[1], "{text}");
    }

    #[test]
    fn statistics_keep_four_significant_digits_and_links_show() {
        assert_eq!(fmt_opt(Some(33.100987)), "33.10");
        assert_eq!(fmt_opt(Some(0.57934)), "0.5793");
        assert_eq!(fmt_opt(Some(12345.6)), "12346");
        assert_eq!(fmt_opt(None), "n/a");
        let mut r = report();
        r.prompts[0].link_neuronpedia(&crate::hub::Neuronpedia {
            model: "gemma-2-2b".into(),
            sae_id: "1-gemmascope-res-16k".into(),
        });
        let mut out = Vec::new();
        write_features_table(&mut out, &r, Style { color: false }).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/3"),
            "{text}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let mut out = Vec::new();
        write_features_table(&mut out, &report(), Style { color: true }).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("\x1b[36m"));
    }

    #[test]
    fn display_piece_escapes_every_control_character() {
        assert_eq!(display_piece("a\u{1b}b\tc"), "a\\u{1b}b\\tc");
        assert_eq!(display_piece("▁Golden"), "▁Golden");
    }
}
