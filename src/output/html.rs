//! What every HTML view shares: escaping, token pieces as text, the activation colour scale (the
//! one `features --highlight` paints in the terminal) and the page's CSS, light and dark.

use super::style::{display_piece, shade, HIGHLIGHT_SHADES};
use std::fmt::Write as _;

/// Appends `text` with the five characters that can end an element, an attribute or an entity
/// escaped, so text from outside (labels, tokens, corpus) is always shown, never interpreted.
pub fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `text` escaped for an element's content or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

/// JSON for a `<script type="application/json">` block: `<` is written `\u003c` so no string
/// inside it (a label holding `</script>`) can close the block.
pub fn script_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .expect("plain data serializes")
        .replace('<', "\\u003c")
}

/// A token piece as the page shows it: the table's escapes for control characters and newlines
/// (`\n`, `\u{1b}`), `▁` as the space it stands for, then HTML-escaped. Raw-byte pieces such as
/// `<0x0A>` stay as the vocabulary spells them.
pub fn piece_html(piece: &str) -> String {
    escape(&display_piece(piece).replace('\u{2581}', " "))
}

/// The level (1 = faintest, 5 = strongest) of an activation on the `--highlight` scale,
/// relative to `max`; `None` when the feature is off there.
pub fn shade_level(activation: f32, max: f32) -> Option<usize> {
    let code = shade(activation, max)?;
    HIGHLIGHT_SHADES
        .iter()
        .position(|&c| c == code)
        .map(|i| i + 1)
}

/// The sRGB colour of an xterm-256 colour in the 6x6x6 cube (16..=231) or the grey ramp.
pub fn xterm_rgb(code: u8) -> (u8, u8, u8) {
    const CUBE: [u8; 6] = [0, 95, 135, 175, 215, 255];
    match code {
        16..=231 => {
            let i = code - 16;
            (
                CUBE[usize::from(i / 36)],
                CUBE[usize::from(i / 6 % 6)],
                CUBE[usize::from(i % 6)],
            )
        }
        232..=255 => {
            let g = 8 + 10 * (code - 232);
            (g, g, g)
        }
        // The 16 system colours depend on the terminal's theme; the scale never uses them.
        _ => (128, 128, 128),
    }
}

/// CSS classes `.s1`..`.s5`: the `--highlight` shades as backgrounds, with black text as in the
/// terminal. The ramp is one hue (pale yellow to orange) getting darker at every step, so its
/// order reads without telling hues apart (colour-blind readers, greyscale print).
fn shade_css() -> String {
    let mut css = String::new();
    for (i, &code) in HIGHLIGHT_SHADES.iter().enumerate() {
        let (r, g, b) = xterm_rgb(code);
        let _ = write!(
            css,
            ".s{}{{background:#{r:02x}{g:02x}{b:02x};color:#000}}",
            i + 1
        );
    }
    css
}

/// The legend of the shading: the five shades and what they mean.
pub fn shade_legend(relative_to: &str) -> String {
    let mut out = String::from("<span class=legend>");
    for i in 1..=HIGHLIGHT_SHADES.len() {
        let _ = write!(out, "<i class=s{i}>&nbsp;&nbsp;</i>");
    }
    let _ = write!(out, " activation / {}</span>", escape(relative_to));
    out
}

/// `v` with `digits` significant digits, trailing zeros kept as they fall (`4.500`, `0.01234`).
pub fn significant(v: f64, digits: i32) -> String {
    if !v.is_finite() || v == 0.0 {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).clamp(0, 9) as usize;
    format!("{v:.decimals$}")
}

/// Relative luminance (WCAG) of an sRGB colour, for checking the scale gets darker at each step.
pub fn luminance((r, g, b): (u8, u8, u8)) -> f64 {
    let channel = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
}

/// The page's CSS: system fonts, light and dark through `prefers-color-scheme`, the shade
/// classes, tokens as inline boxes that keep their spaces exactly.
pub fn css() -> String {
    let mut css = String::from(BASE_CSS);
    css.push_str(&shade_css());
    css
}

/// Promoted tokens, bars and links in Okabe-Ito blue, suppressed tokens in its vermillion: a
/// pair that colour-blind readers tell apart.
const BASE_CSS: &str = r#"
:root{--bg:#fff;--fg:#1b1b1f;--muted:#5f6368;--line:#dadce0;--panel:#f6f7f9;--accent:#0072b2;--neg:#d55e00;--mark:#000;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#16171a;--fg:#e8eaed;--muted:#9aa0a6;--line:#3c4043;--panel:#202124;--accent:#56b4e9;--neg:#e69f00;--mark:#fff}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header,section,main{max-width:1100px;margin:0 auto;padding:12px 20px}
h1{font-size:1.35em;margin:.4em 0}h2{font-size:1.2em;margin:.2em 0}h3{font-size:1em;margin:1em 0 .4em;color:var(--muted);font-weight:600}
a{color:var(--accent)}
.meta{color:var(--muted);margin:.2em 0}
code,.mono,.toks,td.num{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;white-space:nowrap}
th[data-key]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:var(--panel)}
input[type=search]{font:inherit;padding:6px 10px;width:min(420px,100%);border:1px solid var(--line);border-radius:6px;background:var(--bg);color:var(--fg)}
.card,.prompt{border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:16px 0;background:var(--bg)}
.stats{display:flex;flex-wrap:wrap;gap:6px 22px;margin:.4em 0}
.stats b{font-variant-numeric:tabular-nums}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:8px 24px}
.labels{margin:.2em 0 .4em 1.2em;padding:0;color:var(--muted)}
.toks{white-space:pre-wrap;word-break:break-word;line-height:1.9;margin:0}
.toks i{font-style:normal;border-radius:2px}
.toks i:hover{outline:1px solid var(--muted)}
.toks b{outline:2px solid var(--mark);outline-offset:-1px;border-radius:2px}
.toks i.bos{color:var(--muted)}
.ex{padding:6px 0;border-bottom:1px dashed var(--line)}
.ex .meta{font-size:.85em}
.legend i{display:inline-block;width:1.2em;font-style:normal}
.legend{color:var(--muted);font-size:.85em}
.bars td{padding:1px 6px;border:0}
.bar{height:.8em;background:var(--accent);display:inline-block;vertical-align:middle;border-radius:1px}
.neg .bar{background:var(--neg)}
svg.hist{width:100%;max-width:520px;height:auto;display:block}
svg.hist rect{fill:var(--accent)}svg.hist text{fill:var(--muted);font-size:10px}
svg.hist line{stroke:var(--line)}
details summary{cursor:pointer;color:var(--muted)}
.top a{font-size:.9em}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_from_outside_text() {
        let hostile = r#"<script>alert("x")</script> & </style> 'q'"#;
        let out = escape(hostile);
        assert_eq!(
            out,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;/style&gt; &#39;q&#39;"
        );
        assert!(!script_json(&hostile).contains('<'));
    }

    #[test]
    fn pieces_keep_spaces_and_escape_controls_like_the_table() {
        assert_eq!(piece_html("▁the"), " the");
        assert_eq!(piece_html("\n\n"), "\\n\\n");
        assert_eq!(piece_html("<0x0A>"), "&lt;0x0A&gt;");
        assert_eq!(piece_html("a\u{1b}"), "a\\u{1b}");
    }

    #[test]
    fn the_scale_is_the_terminal_one_and_darkens_at_every_step() {
        assert_eq!(xterm_rgb(230), (0xff, 0xff, 0xd7));
        assert_eq!(xterm_rgb(202), (0xff, 0x5f, 0x00));
        assert_eq!(xterm_rgb(232), (8, 8, 8));
        let lum: Vec<f64> = HIGHLIGHT_SHADES
            .iter()
            .map(|&c| luminance(xterm_rgb(c)))
            .collect();
        assert!(lum.windows(2).all(|w| w[1] < w[0] - 0.05), "{lum:?}");
        assert!(css().contains(".s1{background:#ffffd7;color:#000}"));
        assert_eq!(shade_level(0.0, 2.0), None);
        assert_eq!(shade_level(0.1, 2.0), Some(1));
        assert_eq!(shade_level(2.0, 2.0), Some(5));
        assert_eq!(shade_level(9.0, 2.0), Some(5));
    }
}
