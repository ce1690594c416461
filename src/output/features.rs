//! The `features` table, with the per-token features, the aggregate and `--highlight` shading.

use super::style::*;
use crate::report::{FeaturesReport, Highlight, PromptReport};
use std::io::{self, Write};
use unicode_width::UnicodeWidthStr;

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

pub(crate) fn write_prompt_table(
    w: &mut dyn Write,
    prompt: &PromptReport,
    style: Style,
) -> io::Result<()> {
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
    // The label column appears when a label is cached, cut to what the terminal has left.
    let labelled = prompt.top_features.iter().any(|f| f.label.is_some());
    let label_width = style.width.saturating_sub(44).max(20);
    writeln!(
        w,
        "  {}",
        style.dim(&format!(
            "{:<10}{:>10}{:>10}{:>8}{}",
            "top feature",
            "sum",
            "max",
            "tokens",
            if labelled { "  label" } else { "" }
        ))
    )?;
    for f in &prompt.top_features {
        let label = match (&f.label, labelled) {
            (Some(label), _) => format!("  {}", super::card::truncate_label(label, label_width)),
            (None, true) => format!("  {}", style.dim("-")),
            (None, false) => String::new(),
        };
        writeln!(
            w,
            "  {}{}{:>10.2}{:>8}{label}",
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

/// The prompt with each token shaded by one feature's activation (the Neuronpedia look); in
/// plain text, active tokens are marked `[token:1.23]`.
fn write_highlight(
    w: &mut dyn Write,
    prompt: &PromptReport,
    highlight: &Highlight,
    style: Style,
) -> io::Result<()> {
    writeln!(
        w,
        "  {} {}",
        style.bold(&format!(
            "feature #{} on this prompt (max {:.2}):",
            highlight.feature, highlight.max
        )),
        style.dim(&shade_legend(style))
    )?;
    let tokens = prompt
        .tokens
        .iter()
        .zip(&highlight.activations)
        .map(|(token, &a)| (token.text.as_str(), a, token.bos));
    writeln!(w, "  {}", shaded_tokens(tokens, highlight.max, style))
}

/// The human view of `gemscope features --layers`: each layer's per-prompt tables, then each
/// prompt's strongest features across the layers.
pub fn write_layers_table(
    w: &mut dyn Write,
    report: &crate::report::layers::LayersReport,
    style: Style,
) -> io::Result<()> {
    let layers: Vec<String> = report.layers.iter().map(|l| l.layer.to_string()).collect();
    writeln!(
        w,
        "{} layers {} {} · one forward pass · {} {}",
        style.bold("gemscope features:"),
        layers.join(","),
        report.site,
        report.model.device,
        report.model.dtype
    )?;
    for layer in &report.layers {
        writeln!(w)?;
        writeln!(
            w,
            "{} · SAE {} features ({})",
            style.bold(&format!("layer {}", layer.layer)),
            layer.sae.d_sae,
            layer.sae.source
        )?;
        for prompt in &layer.prompts {
            write_prompt_table(w, prompt, style)?;
        }
    }
    let label_width = style.width.saturating_sub(50).max(20);
    for ranking in &report.ranking {
        writeln!(w)?;
        writeln!(
            w,
            "{} {}",
            style.bold(&format!(
                "prompt {}, strongest across layers:",
                ranking.index + 1
            )),
            display_prompt(&ranking.text)
        )?;
        writeln!(
            w,
            "  {}",
            style.dim(&format!(
                "{:>5}  {:<9}{:>10}{:>10}{:>8}  label",
                "layer", "feature", "sum", "max", "tokens"
            ))
        )?;
        for f in &ranking.top_features {
            let label = f
                .label
                .as_deref()
                .map(|l| super::card::truncate_label(l, label_width))
                .unwrap_or_else(|| style.dim("-"));
            writeln!(
                w,
                "  {:>5}  {}{}{:>10.2}{:>8}  {label}",
                f.layer,
                style.feature(&format!("#{:<8}", f.feature)),
                style.value(&format!("{:>10.2}", f.activation_sum)),
                f.activation_max,
                f.active_tokens
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::{AggregateFeature, FeatureActivation};
    use crate::model::Site;
    use crate::report::*;
    use unicode_width::UnicodeWidthStr;

    pub(crate) fn report() -> FeaturesReport {
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
        write_features_table(&mut out, &report(), Style::PLAIN).unwrap();
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
        write_features_table(&mut out, &r, Style::PLAIN).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/3"),
            "{text}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let mut out = Vec::new();
        write_features_table(
            &mut out,
            &report(),
            Style {
                color: true,
                ..Style::PLAIN
            },
        )
        .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("\x1b[36m"));
    }

    #[test]
    fn display_piece_escapes_every_control_character() {
        assert_eq!(display_piece("a\u{1b}b\tc"), "a\\u{1b}b\\tc");
        assert_eq!(display_piece("▁Golden"), "▁Golden");
    }
}
