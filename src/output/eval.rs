//! The `eval` table: metrics, gates, and the baseline side by side.

use super::style::*;
use crate::report::EvalReport;
use std::io::{self, Write};

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
