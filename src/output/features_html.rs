//! `gemscope features --html FILE`: the per-prompt report (tokens, top features with labels, L0,
//! variance explained) as one self-contained page in the dashboard's style, for sharing.

use super::html::{css, escape, piece_html, push_escaped, shade_legend, shade_level, significant};
use crate::report::{FeaturesReport, PromptReport, TokenReport};
use std::fmt::Write as _;
use std::io::{self, Write};

/// A feature's label, when one is known (the labels cache; none gives `None` for every id).
pub type LabelOf<'a> = &'a dyn Fn(u32) -> Option<String>;

/// Writes the whole page.
pub fn write_features_html(
    w: &mut dyn Write,
    report: &FeaturesReport,
    label_of: LabelOf,
) -> io::Result<()> {
    w.write_all(render_features_html(report, label_of).as_bytes())
}

/// The page as a string.
pub fn render_features_html(report: &FeaturesReport, label_of: LabelOf) -> String {
    let title = format!(
        "features · layer {} {} · {}",
        report.hook.layer, report.hook.site, report.sae.source
    );
    let mut out = String::with_capacity(16_384);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <meta name=generator content=\"gemscope {}\">\
         <title>{} · gemscope</title><style>{}</style></head>\n<body class=report>\n\
         <header><h1>{}</h1><p class=meta>model <b>{}</b> · SAE <b>{}</b> ({} features) · \
         {} {} · top {} per token</p></header>\n<main>\n",
        report.gemscope_version,
        escape(&title),
        css(),
        escape(&title),
        escape(&report.model.source),
        escape(&report.sae.source),
        report.sae.d_sae,
        escape(&report.model.device),
        escape(&report.model.dtype),
        report.top_k
    );
    for prompt in &report.prompts {
        render_prompt(&mut out, prompt, label_of);
    }
    out.push_str("</main>\n</body></html>\n");
    out
}

fn stat(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{v:.4}"),
        None => "n/a".to_string(),
    }
}

/// A token's tooltip: position, L0 and its top features.
fn token_title(token: &TokenReport) -> String {
    if token.bos {
        return format!(
            "position {} · BOS, excluded from statistics",
            token.position
        );
    }
    let mut title = format!("position {} · L0 {}", token.position, token.l0);
    for f in &token.top_features {
        let _ = write!(title, " · #{} {}", f.feature, f.activation);
    }
    title
}

fn render_prompt(out: &mut String, prompt: &PromptReport, label_of: LabelOf) {
    let counted = prompt.tokens.len().saturating_sub(1);
    let _ = write!(
        out,
        "<section class=prompt id=prompt-{}><h2>prompt {}</h2><p class=toks>",
        prompt.index + 1,
        prompt.index + 1
    );
    push_escaped(out, &super::style::display_piece(&prompt.text));
    let _ = writeln!(
        out,
        "</p><div class=stats><span>mean L0 <b>{:.1}</b></span><span>variance explained \
         <b>{}</b></span><span>MSE <b>{}</b></span><span>over {counted} token{}</span></div>",
        prompt.mean_l0,
        stat(prompt.variance_explained),
        stat(prompt.mse),
        if counted == 1 { "" } else { "s" }
    );
    // The tokens, shaded by the --highlight feature when there is one.
    match &prompt.highlight {
        Some(h) => {
            let label = label_of(h.feature)
                .map(|l| format!(" {}", escape(&l)))
                .unwrap_or_default();
            let _ = write!(
                out,
                "<h3>tokens shaded by feature #{}{label} {}</h3>",
                h.feature,
                shade_legend(&format!("max {}", significant(h.max.into(), 4)))
            );
        }
        None => out.push_str("<h3>tokens</h3>"),
    }
    out.push_str("<p class=toks>");
    for (j, token) in prompt.tokens.iter().enumerate() {
        let activation = prompt.highlight.as_ref().map(|h| h.activations[j]);
        let level = match (&prompt.highlight, activation) {
            (Some(h), Some(a)) if !token.bos => shade_level(a, h.max),
            _ => None,
        };
        let mut class = String::new();
        if token.bos {
            class.push_str("bos");
        } else if let Some(level) = level {
            let _ = write!(class, "s{level}");
        }
        let mut title = token_title(token);
        if let (Some(a), Some(h)) = (activation, &prompt.highlight) {
            let _ = write!(title, " · feature #{} here {a}", h.feature);
        }
        let _ = write!(
            out,
            "<i{} title=\"{}\">{}</i>",
            if class.is_empty() {
                String::new()
            } else {
                format!(" class=\"{class}\"")
            },
            escape(&title),
            piece_html(&token.text)
        );
    }
    out.push_str("</p>\n");
    // The same per-token table as the terminal's.
    out.push_str(
        "<details><summary>per token</summary><table><thead><tr><th class=num>pos</th>\
         <th>token</th><th class=num>L0</th><th>top features</th></tr></thead><tbody>",
    );
    for token in &prompt.tokens {
        let _ = write!(
            out,
            "<tr><td class=num>{}</td><td><code>{}</code></td>",
            token.position,
            piece_html(&token.text)
        );
        if token.bos {
            out.push_str(
                "<td class=num>–</td><td class=meta>BOS, excluded from statistics</td></tr>",
            );
            continue;
        }
        let _ = write!(out, "<td class=num>{}</td><td>", token.l0);
        for (k, f) in token.top_features.iter().enumerate() {
            if k > 0 {
                out.push_str(" · ");
            }
            feature_link(out, f.feature, f.neuronpedia_url.as_deref(), label_of);
            let _ = write!(out, " <span class=mono>{:.2}</span>", f.activation);
        }
        if token.top_features.is_empty() {
            out.push_str("<span class=meta>none active</span>");
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table></details>\n");
    if prompt.top_features.is_empty() {
        out.push_str("<p class=meta>no feature fired on this prompt</p></section>\n");
        return;
    }
    let most = prompt
        .top_features
        .iter()
        .map(|f| f.stats.activation_sum)
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    out.push_str(
        "<h3>top features over the prompt</h3><table class=top><thead><tr><th>feature</th>\
         <th>label</th><th class=num>sum</th><th></th><th class=num>max</th>\
         <th class=num>tokens</th></tr></thead><tbody>",
    );
    for f in &prompt.top_features {
        let s = &f.stats;
        out.push_str("<tr><td>");
        feature_link(out, s.feature, f.neuronpedia_url.as_deref(), &|_| None);
        out.push_str("</td><td>");
        if let Some(label) = label_of(s.feature) {
            push_escaped(out, &label);
        }
        let _ = write!(
            out,
            "</td><td class=num>{:.2}</td><td style=\"width:30%\"><span class=bar \
             style=\"width:{:.1}%\"></span></td><td class=num>{:.2}</td><td class=num>{}</td></tr>",
            s.activation_sum,
            100.0 * s.activation_sum / most,
            s.activation_max,
            s.active_tokens
        );
    }
    out.push_str("</tbody></table></section>\n");
}

/// `#id` (a link to its Neuronpedia page when there is one), then its label if known.
fn feature_link(out: &mut String, feature: u32, url: Option<&str>, label_of: LabelOf) {
    match url {
        Some(url) => {
            let _ = write!(out, "<a href=\"{}\">#{feature}</a>", escape(url));
        }
        None => {
            let _ = write!(out, "#{feature}");
        }
    }
    if let Some(label) = label_of(feature) {
        out.push_str(" <span class=meta>");
        push_escaped(out, &label);
        out.push_str("</span>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Highlight;

    #[test]
    fn page_shows_tokens_stats_labels_and_shading() {
        let mut report = crate::output::features::tests::report();
        report.prompts[0].highlight = Some(Highlight {
            feature: 3,
            activations: vec![9.0, 1.5, 0.0, 0.3],
            max: 1.5,
        });
        let label_of = |f: u32| (f == 3).then(|| "<b>time</b> & \"travel\"".to_string());
        let html = render_features_html(&report, &label_of);
        assert!(html.contains("variance explained <b>0.7500</b>"), "{html}");
        assert!(html.contains("mean L0 <b>1.0</b>"), "{html}");
        assert!(html.contains("&lt;b&gt;time&lt;/b&gt; &amp; &quot;travel&quot;"));
        assert!(!html.contains("<b>time</b>"));
        // BOS is never shaded, however large its value; the newline piece keeps its escape.
        assert!(
            html.contains("<i class=\"bos\" title=\"position 0 · BOS"),
            "{html}"
        );
        assert!(
            html.contains(
                "<i class=\"s5\" title=\"position 1 · L0 2 · #3 1.5 · feature #3 here 1.5\">a</i>"
            ),
            "{html}"
        );
        assert!(
            html.contains("<i class=\"s1\""),
            "0.3 / 1.5 is the faintest shade"
        );
        assert!(html.contains(">&lt;0x0A&gt;</i>"), "{html}");
        assert!(html.contains("> 東京\\n</i>"), "{html}");
    }
}
