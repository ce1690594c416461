//! The human view of `gemscope attribute`: target, ranked attributions, error share, shaded tokens.

use super::card::truncate_label;
use super::style::{clip, display_piece, display_prompt, pad, Style};
use crate::report::attribution::AttributionReport;
use std::io::{self, Write};
use unicode_width::UnicodeWidthStr;

/// Backgrounds for positive totals (pale yellow to orange-red, as `features --highlight`) and
/// negative ones (pale to deep blue), faint to strong, with black text.
const POSITIVE_SHADES: [u8; 5] = [230, 223, 216, 209, 202];
const NEGATIVE_SHADES: [u8; 5] = [195, 153, 117, 75, 33];

/// An attribution with four significant digits, signed: `+0.01234`, `-1.234e-7`.
fn fmt_signed(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{v:+.3e}");
    }
    let decimals = (3 - magnitude).clamp(0, 8) as usize;
    format!("{v:+.decimals$}")
}

/// A probability with four decimals, or four significant digits below 0.001 (`2.153e-7`).
fn fmt_probability(p: f64) -> String {
    if p >= 1e-3 || p == 0.0 {
        format!("{p:.4}")
    } else {
        format!("{p:.3e}")
    }
}

/// The shade of `value` relative to the largest magnitude: `None` for 0.
fn shade(value: f64, max: f64) -> Option<u8> {
    if value == 0.0 || max <= 0.0 {
        return None;
    }
    let ramp = if value > 0.0 {
        &POSITIVE_SHADES
    } else {
        &NEGATIVE_SHADES
    };
    let level = ((value.abs() / max).min(1.0) * ramp.len() as f64).ceil() as usize;
    Some(ramp[level.clamp(1, ramp.len()) - 1])
}

pub fn write_attribution(
    w: &mut dyn Write,
    report: &AttributionReport,
    style: Style,
) -> io::Result<()> {
    writeln!(
        w,
        "{} layer {} {} · SAE {} features ({}) · {} {}",
        style.bold("gemscope attribute:"),
        report.hook.layer,
        report.hook.site,
        report.sae.d_sae,
        report.sae.source,
        report.model.device,
        report.model.dtype
    )?;
    writeln!(
        w,
        "{} {}",
        style.bold("prompt:"),
        display_prompt(&report.prompt)
    )?;
    let target = &report.target;
    let at = &report.tokens[target.position];
    writeln!(
        w,
        "{} {} (id {}) after position {} {} · p = {} · {} = {}",
        style.bold("target:"),
        style.feature(&format!("{:?}", display_piece(&target.text))),
        target.id,
        target.position,
        display_piece(&at.text),
        style.value(&fmt_probability(target.probability)),
        report.metric.name(),
        style.bold(&format!("{:.6}", report.metric_value))
    )?;
    writeln!(w)?;

    let token_width = report
        .attributions
        .iter()
        .map(|a| clip(&display_piece(&a.token)).width())
        .max()
        .unwrap_or(0)
        .max("token".len());
    let with_effect = report.ablation.is_some();
    let mut heading = format!(
        "{:>4}  {}  {:>7}  {:>10}  {:>12}",
        "pos",
        pad("token", token_width),
        "feature",
        "activation",
        "attribution"
    );
    if with_effect {
        heading.push_str(&format!("  {:>12}  {:>12}", "ablated", "estimate"));
    }
    let shown = report.attributions.len();
    writeln!(
        w,
        "{}",
        style.bold(&format!(
            "top {shown} of {} feature attributions (activation x gradient of {}):",
            report.active_features,
            report.metric.name()
        ))
    )?;
    writeln!(w, "  {}", style.dim(&heading))?;
    for a in &report.attributions {
        let mut line = format!(
            "{:>4}  {}  {}  {:>10.3}  {}",
            a.position,
            pad(&clip(&display_piece(&a.token)), token_width),
            style.feature(&format!("#{:<6}", a.feature)),
            a.activation,
            style.value(&format!("{:>12}", fmt_signed(a.attribution)))
        );
        if let Some(label) = &a.label {
            line.push_str(&format!("  {}", truncate_label(label, 40)));
        }
        if let Some(ablation) = &report.ablation {
            match ablation
                .iter()
                .find(|x| x.position == a.position && x.feature == a.feature)
            {
                Some(x) => line.push_str(&format!(
                    "  {:>12}  {:>12}",
                    fmt_signed(x.effect),
                    fmt_signed(x.estimate)
                )),
                None => line.push_str(&format!("  {:>12}  {:>12}", "", "")),
            }
        }
        writeln!(w, "  {}", line.trim_end())?;
    }
    if report.attributions.is_empty() {
        writeln!(
            w,
            "  {}",
            style.dim("no feature is active before the read position")
        )?;
    }
    if with_effect {
        writeln!(
            w,
            "  {}",
            style.dim("ablated: the exact change of the metric with the feature set to 0; estimate: -attribution")
        )?;
    }

    writeln!(w)?;
    writeln!(w, "{}", style.bold("features summed over positions:"))?;
    for f in &report.features {
        writeln!(
            w,
            "  {} {}  at {} position{}{}",
            style.feature(&format!("#{:<6}", f.feature)),
            style.value(&format!("{:>12}", fmt_signed(f.attribution_sum))),
            f.positions,
            if f.positions == 1 { "" } else { "s" },
            f.label
                .as_deref()
                .map(|l| format!("  {}", truncate_label(l, 60)))
                .unwrap_or_default()
        )?;
    }
    writeln!(
        w,
        "{} features {} · SAE error {} · error share {:.1}% of |attribution|",
        style.bold("totals:"),
        fmt_signed(report.feature_attribution_total),
        fmt_signed(report.error_attribution_total),
        100.0 * report.error_share
    )?;

    write_shaded_tokens(w, report, style)
}

/// The prompt with each token shaded by its total attribution (features + error); in plain
/// text, tokens with a non-zero total are marked `[token:+0.0123]`.
fn write_shaded_tokens(
    w: &mut dyn Write,
    report: &AttributionReport,
    style: Style,
) -> io::Result<()> {
    let max = report
        .token_attribution
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()));
    let legend = if style.color {
        let ramp = |shades: &[u8]| -> String {
            shades
                .iter()
                .map(|c| format!("\x1b[30;48;5;{c}m  \x1b[0m"))
                .collect()
        };
        format!(
            "background: negative {} positive {}",
            ramp(&NEGATIVE_SHADES),
            ramp(&POSITIVE_SHADES)
        )
    } else {
        "[token:total] marks each token's attribution".to_string()
    };
    writeln!(
        w,
        "{} {}",
        style.bold("tokens by total attribution (features + error):"),
        style.dim(&legend)
    )?;
    let mut line = String::new();
    for (token, &total) in report.tokens.iter().zip(&report.token_attribution) {
        let piece = display_piece(&token.text).replace('\u{2581}', " ");
        if token.position == 0 || token.position > report.target.position {
            line.push_str(&style.dim(&piece));
            continue;
        }
        match shade(total, max) {
            Some(c) if style.color => line.push_str(&format!("\x1b[30;48;5;{c}m{piece}\x1b[0m")),
            Some(_) => line.push_str(&format!("[{piece}:{}]", fmt_signed(total))),
            None => line.push_str(&piece),
        }
    }
    writeln!(w, "  {line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_keep_four_digits_and_shades_follow_the_sign() {
        assert_eq!(fmt_signed(0.012346), "+0.01235");
        assert_eq!(fmt_signed(-1.5), "-1.500");
        assert_eq!(fmt_signed(2.5e-7), "+2.500e-7");
        assert_eq!(fmt_signed(0.0), "0");
        assert_eq!(shade(1.0, 1.0), Some(202));
        assert_eq!(shade(-0.1, 1.0), Some(195));
        assert_eq!(shade(0.0, 1.0), None);
        assert_eq!(fmt_probability(0.92192), "0.9219");
        assert_eq!(fmt_probability(6.9e-7), "6.900e-7");
    }
}
