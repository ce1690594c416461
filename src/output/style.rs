//! What every human view shares: colour, token and prompt escaping, column padding and clipping,
//! number formatting, wrapping, and the Neuronpedia-style activation shades.

use unicode_width::UnicodeWidthStr;

/// How to render for a human: with ANSI colour or without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
    /// Terminal columns available (from `COLUMNS`, read once when the plan is made).
    pub width: usize,
}

/// Width when `COLUMNS` does not say.
pub const DEFAULT_WIDTH: usize = 100;

impl Style {
    /// Plain text at the default width: what a pipe and a test get.
    pub const PLAIN: Style = Style {
        color: false,
        width: DEFAULT_WIDTH,
    };
}

impl Style {
    pub fn paint(&self, sgr: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
    pub fn feature(&self, text: &str) -> String {
        self.paint("36", text)
    }
    pub fn value(&self, text: &str) -> String {
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
pub fn display_prompt(text: &str) -> String {
    let escaped = display_piece(text);
    let shown: String = escaped.chars().take(80).collect();
    if shown.len() < escaped.len() {
        format!("\"{shown}…\"")
    } else {
        format!("\"{shown}\"")
    }
}

/// Pads `text` on the right to `width` terminal columns (wide characters count double).
pub fn pad(text: &str, width: usize) -> String {
    let w = text.width();
    format!("{text}{}", " ".repeat(width.saturating_sub(w)))
}

/// A statistic with four significant digits (`0.5793`, `33.10`, `1234`), or `n/a`.
pub fn fmt_opt(value: Option<f64>) -> String {
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

pub const MAX_TOKEN_COLUMNS: usize = 24;

/// Shortens a piece to the token column's width.
pub fn clip(piece: &str) -> String {
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

/// Background shades for `--highlight`, faint to strong (xterm-256 colours, pale yellow to
/// orange-red), with black text so a dark terminal stays readable.
pub const HIGHLIGHT_SHADES: [u8; 5] = [230, 223, 216, 209, 202];

/// The shade of an activation relative to the prompt's max: `None` when the feature is off.
pub fn shade(activation: f32, max: f32) -> Option<u8> {
    if activation <= 0.0 || max <= 0.0 {
        return None;
    }
    let level = ((activation / max).min(1.0) * HIGHLIGHT_SHADES.len() as f32).ceil() as usize;
    Some(HIGHLIGHT_SHADES[level.clamp(1, HIGHLIGHT_SHADES.len()) - 1])
}

/// Narrower than this, `steer` stacks the two continuations instead of setting them side by side.
pub const MIN_SIDE_BY_SIDE: usize = 60;

/// Text wrapped to `width` terminal columns at spaces (a longer word is cut), keeping its own
/// line breaks; other control characters are escaped.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
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
/// Cuts `text` to `width` columns.
pub fn clip_to(text: &str, width: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.width() + c.to_string().width() > width {
            break;
        }
        out.push(c);
    }
    out
}

/// Tokens shaded by one feature's activation relative to `max` (the Neuronpedia look, the
/// `--highlight` shades with black text); without colour the tokens where it fires are marked
/// `[token:1.23]`. Each item is `(piece, activation, dim)`: a dim token (BOS) is never shaded.
pub fn shaded_tokens<'a>(
    tokens: impl IntoIterator<Item = (&'a str, f32, bool)>,
    max: f32,
    style: Style,
) -> String {
    let mut line = String::new();
    for (piece, a, dim) in tokens {
        let piece = display_piece(piece).replace('\u{2581}', " ");
        if dim {
            line.push_str(&style.dim(&piece));
            continue;
        }
        match shade(a, max) {
            Some(c) if style.color => line.push_str(&format!("\x1b[30;48;5;{c}m{piece}\x1b[0m")),
            _ if a > 0.0 && !style.color => line.push_str(&format!("[{piece}:{a:.2}]")),
            _ => line.push_str(&piece),
        }
    }
    line
}

/// The legend of [`shaded_tokens`]: the colour ramp, or what the brackets mean.
pub fn shade_legend(style: Style) -> String {
    if style.color {
        let ramp: String = HIGHLIGHT_SHADES
            .iter()
            .map(|c| format!("\x1b[30;48;5;{c}m  \x1b[0m"))
            .collect();
        format!("background = activation / max {ramp}")
    } else {
        "[token:activation] marks the tokens where it fires".to_string()
    }
}
