//! The human views of `gemscope explain` (feature cards) and `gemscope search` (ranked labels).

use super::style::{display_piece, pad, shade_legend, shaded_tokens, Style};
use crate::report::card::{ExplainReport, FeatureCard, TokenEffect};
use crate::report::search::SearchReport;
use std::io::{self, Write};
use unicode_width::UnicodeWidthStr;

/// `text` cut to `width` terminal columns with an ellipsis; control characters escaped.
pub fn truncate_label(text: &str, width: usize) -> String {
    let text = display_piece(text);
    if text.width() <= width {
        return text;
    }
    let mut out = String::new();
    for c in text.chars() {
        if out.width() + c.to_string().width() + 1 > width {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// One card per feature.
pub fn write_cards(w: &mut dyn Write, report: &ExplainReport, style: Style) -> io::Result<()> {
    writeln!(
        w,
        "{} layer {} {} · SAE {} features ({})",
        style.bold("gemscope explain:"),
        report.hook.layer,
        report.hook.site,
        report.sae.d_sae,
        report.sae.source
    )?;
    for card in &report.features {
        writeln!(w)?;
        write_card(w, card, style)?;
    }
    Ok(())
}

fn write_card(w: &mut dyn Write, card: &FeatureCard, style: Style) -> io::Result<()> {
    let label = match &card.label {
        Some(label) => display_piece(label),
        None => style.dim("(no label cached)"),
    };
    writeln!(
        w,
        "{} {label}",
        style.feature(&style.bold(&format!("#{}", card.feature)))
    )?;
    for other in card.labels.iter().skip(1) {
        writeln!(w, "  {} {}", style.dim("also:"), display_piece(other))?;
    }
    let mut facts = vec![
        format!("threshold {:.4}", card.threshold),
        format!("|W_enc| {:.4}", card.encoder_norm),
        format!("|W_dec| {:.4}", card.decoder_norm),
        format!("b_enc {:.4}", card.encoder_bias),
    ];
    if let Some(density) = card.density {
        facts.push(format!("density {:.3e}", density));
    }
    if let Some(max) = card.max_activation {
        facts.push(format!("max activation {max:.2}"));
    }
    writeln!(w, "  {}", facts.join("   "))?;
    write_tokens(w, "promotes", &card.logits.positive, style)?;
    write_tokens(w, "suppresses", &card.logits.negative, style)?;
    if !card.neighbours.is_empty() {
        writeln!(w, "  {}", style.dim("nearest decoder directions (cosine):"))?;
        for n in &card.neighbours {
            let label = n
                .label
                .as_deref()
                .map(|l| format!("  {}", truncate_label(l, 60)))
                .unwrap_or_default();
            writeln!(
                w,
                "    {} {}{label}",
                style.feature(&format!("#{:<6}", n.feature)),
                style.value(&format!("{:>7.4}", n.cosine))
            )?;
        }
    }
    if let Some(url) = &card.neuronpedia_url {
        writeln!(w, "  {}", style.paint("4", url))?;
    }
    if let Some(examples) = &card.examples {
        write_examples(w, card, examples, style)?;
    }
    Ok(())
}

/// Eighths of a block, for a histogram drawn in one line of text.
const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A corpus store's view of a feature: its counts, the log10 histogram as one line of bars over
/// the decades where it fired, and each top example with its tokens shaded by activation.
fn write_examples(
    w: &mut dyn Write,
    card: &FeatureCard,
    examples: &[crate::report::examples::Example],
    style: Style,
) -> io::Result<()> {
    let (tokens, active) = (card.tokens.unwrap_or(0), card.active.unwrap_or(0));
    writeln!(
        w,
        "  {} active on {active} of {tokens} corpus tokens",
        style.dim("examples:")
    )?;
    if let Some(h) = &card.histogram {
        let used: Vec<usize> = (0..h.counts.len()).filter(|&i| h.counts[i] > 0).collect();
        if let (Some(&first), Some(&last)) = (used.first(), used.last()) {
            let top = h.counts.iter().copied().max().unwrap_or(1).max(1) as f64;
            let bars: String = h.counts[first..=last]
                .iter()
                .map(|&c| BARS[((c as f64 / top) * 8.0).ceil() as usize])
                .collect();
            // Bin k (1-based between the edges) starts at 10^(log10_min + (k-1)/bins_per_decade).
            let edge = |k: usize| {
                let k = k.clamp(1, h.counts.len() - 1) as f64;
                10f64.powf(h.log10_min as f64 + (k - 1.0) / h.bins_per_decade as f64)
            };
            writeln!(
                w,
                "  {} {:.3e} {} {:.3e}",
                style.dim("log10 histogram:"),
                edge(first),
                style.value(&bars),
                edge(last + 1)
            )?;
        }
    }
    if examples.is_empty() {
        return writeln!(w, "    {}", style.dim("(never active in the corpus)"));
    }
    writeln!(w, "  {}", style.dim(&shade_legend(style)))?;
    for e in examples {
        let shaded = shaded_tokens(
            e.tokens
                .iter()
                .map(|t| (t.text.as_deref().unwrap_or("?"), t.activation, false)),
            e.activation,
            style,
        );
        writeln!(
            w,
            "    {} {}  {shaded}",
            style.value(&format!("{:>8.3}", e.activation)),
            style.dim(&format!("doc {} pos {}", e.document, e.position)),
        )?;
    }
    Ok(())
}

fn write_tokens(
    w: &mut dyn Write,
    title: &str,
    tokens: &[TokenEffect],
    style: Style,
) -> io::Result<()> {
    let shown: Vec<String> = tokens
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                display_piece(&t.token),
                style.value(&format!("{:+.3}", t.value))
            )
        })
        .collect();
    writeln!(
        w,
        "  {} {}",
        style.dim(&pad(&format!("{title}:"), 11)),
        shown.join("  ")
    )
}

/// The ranked matches of `gemscope search`.
pub fn write_search(w: &mut dyn Write, report: &SearchReport, style: Style) -> io::Result<()> {
    writeln!(
        w,
        "{} {:?} in {} SAE(s) of {} ({})",
        style.bold("gemscope search:"),
        report.query,
        report.sae_ids.len(),
        report.model_id,
        if report.method == "online" {
            "Neuronpedia's semantic search"
        } else {
            "BM25 over the cached labels"
        }
    )?;
    if report.results.is_empty() {
        writeln!(w, "{}", style.dim("no label matches"))?;
        return Ok(());
    }
    writeln!(
        w,
        "{}",
        style.dim(&format!(
            "{:>5}  {:<8}{:<52}{:>7}  url",
            "layer", "feature", "label", "score"
        ))
    )?;
    for r in &report.results {
        writeln!(
            w,
            "{:>5}  {}{}{}  {}",
            r.layer,
            style.feature(&format!("#{:<7}", r.feature)),
            pad(&truncate_label(&r.label, 50), 52),
            style.value(&format!("{:>7.3}", r.score)),
            r.neuronpedia_url
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::search::SearchResult;

    #[test]
    fn labels_are_cut_to_the_column_and_escaped() {
        assert_eq!(truncate_label("dogs", 10), "dogs");
        assert_eq!(truncate_label("a\nb", 10), "a\\nb");
        let cut = truncate_label("references to dogs and puppies", 12);
        assert_eq!(cut, "references …");
        assert_eq!(cut.width(), 12);
        assert!(truncate_label("東京東京東京", 5).width() <= 5);
    }

    #[test]
    fn a_card_shows_labels_effects_neighbours_and_the_url() {
        use crate::report::card::{FeatureCard, LogitEffects, Neighbour, TokenEffect};
        let effect = |id, token: &str, value| TokenEffect {
            id,
            token: token.into(),
            value,
        };
        let card = FeatureCard {
            feature: 10004,
            label: Some("time travel".into()),
            labels: vec!["time travel".into(), "the future".into()],
            threshold: 1.5,
            encoder_norm: 1.0,
            decoder_norm: 0.5,
            encoder_bias: -0.25,
            logits: LogitEffects {
                positive: vec![effect(5, "▁future", 0.75)],
                negative: vec![effect(9, "\n", -0.5)],
            },
            neighbours: vec![
                Neighbour {
                    feature: 7,
                    cosine: 0.5,
                    label: Some("clocks".into()),
                },
                Neighbour {
                    feature: 8,
                    cosine: 0.25,
                    label: None,
                },
            ],
            neuronpedia_url: Some(
                "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/10004".into(),
            ),
            density: Some(0.00125),
            max_activation: Some(41.5),
            tokens: None,
            active: None,
            histogram: None,
            examples: None,
        };
        let mut out = Vec::new();
        write_card(&mut out, &card, Style::PLAIN).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#10004 time travel");
        assert_eq!(lines[1], "  also: the future");
        assert!(lines[2].contains("threshold 1.5000") && lines[2].contains("density 1.250e-3"));
        assert!(lines[2].contains("max activation 41.50"));
        assert_eq!(lines[3], "  promotes:   ▁future +0.750");
        assert_eq!(lines[4], "  suppresses: \\n -0.500");
        assert_eq!(lines[6], "    #7       0.5000  clocks");
        assert_eq!(lines[7], "    #8       0.2500");
        assert!(lines[8].ends_with("/10004"));
    }

    #[test]
    fn search_table_lists_layer_feature_label_score_url() {
        let report = SearchReport {
            schema_version: 1,
            gemscope_version: "0",
            query: "dogs".into(),
            model_id: "gemma-2-2b".into(),
            sae_ids: vec!["20-gemmascope-res-16k".into()],
            method: "local",
            results: vec![SearchResult {
                layer: 20,
                feature: 12082,
                label: "references to dogs".into(),
                score: 3.25,
                neuronpedia_url:
                    "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/12082".into(),
            }],
        };
        let mut out = Vec::new();
        write_search(&mut out, &report, Style::PLAIN).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(2).unwrap();
        assert!(
            row.starts_with("   20  #12082  references to dogs"),
            "{text}"
        );
        assert!(
            row.contains("3.250  https://www.neuronpedia.org/"),
            "{text}"
        );
    }
}
