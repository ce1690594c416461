//! The feature dashboard as HTML: an index of every feature (sortable, searchable, `#q=` in the
//! address) and one card per feature (labels, density, histogram, logit effects, neighbours,
//! shaded examples), in one self-contained file or, when that would be too large, a directory
//! of pages behind one index. No network: CSS, script and plots (SVG) are inline.

use super::html::{
    css, escape, piece_html, push_escaped, script_json, shade_legend, shade_level, significant,
};
use crate::report::dashboard::{Dashboard, DashboardFeature, Example, HistogramBin, LogitEffect};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Above this many bytes of cards `--out DIR` splits them into pages. Measured (benches/dashboard.rs,
/// BENCHMARKS.md): 1,000 features x 20 examples x 128 tokens make 33 MB, which Chromium shows
/// 1.3 to 1.8 s after its own start-up; a 4 MB page, 0.5 s. 16 MB is about 500 such features.
pub const SINGLE_FILE_BYTES: usize = 16 << 20;

/// The most bytes of cards on one page of a directory.
pub const PAGE_BYTES: usize = 4 << 20;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file to open: the single file, or the directory's `index.html`.
    pub entry: PathBuf,
    /// Pages of cards besides the entry (0 for a single file).
    pub pages: usize,
    /// Bytes written, all files together.
    pub bytes: usize,
}

/// Where a feature's card is: `#feature-N` on the same page, or `page-K.html#feature-N`.
type Hrefs = HashMap<u32, String>;

fn anchor(feature: u32) -> String {
    format!("feature-{feature}")
}

/// Writes the dashboard: to `out` as one file when it ends in `.html`, else into the directory
/// `out` (created if missing) as `index.html`, with the cards on `page-K.html` pages when
/// together they pass [`SINGLE_FILE_BYTES`]. Every file is written atomically.
pub fn write_dashboard(out: &Path, dashboard: &Dashboard) -> Result<Written> {
    let single_file = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    if single_file {
        let html = render_single(dashboard);
        write(out, &html)?;
        return Ok(Written {
            entry: out.to_path_buf(),
            pages: 0,
            bytes: html.len(),
        });
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the directory {}", out.display()))?;
    let files = render_directory(dashboard, SINGLE_FILE_BYTES, PAGE_BYTES);
    let mut bytes = 0;
    for (name, html) in &files {
        write(&out.join(name), html)?;
        bytes += html.len();
    }
    Ok(Written {
        entry: out.join("index.html"),
        pages: files.len() - 1,
        bytes,
    })
}

fn write(path: &Path, html: &str) -> Result<()> {
    crate::system::write_file_atomically(path, |w| w.write_all(html.as_bytes()))
}

/// The whole dashboard as one page: index and every card.
pub fn render_single(dashboard: &Dashboard) -> String {
    let hrefs = local_hrefs(&dashboard.features);
    let cards: Vec<(u32, String)> = dashboard
        .features
        .iter()
        .map(|f| (f.feature, render_card(f, &hrefs)))
        .collect();
    page(dashboard, &dashboard.title, &hrefs, &cards)
}

fn local_hrefs(features: &[DashboardFeature]) -> Hrefs {
    features
        .iter()
        .map(|f| (f.feature, format!("#{}", anchor(f.feature))))
        .collect()
}

/// The dashboard as files `(name, html)`, `index.html` first: one page holding everything while
/// the cards stay under `single_limit` bytes, else an index and pages of at most `page_limit`
/// bytes of cards (at least one card each). Every page carries the whole index.
pub fn render_directory(
    dashboard: &Dashboard,
    single_limit: usize,
    page_limit: usize,
) -> Vec<(String, String)> {
    let local = local_hrefs(&dashboard.features);
    // A card's size hardly depends on where its neighbour links point: measure with local
    // links, then split.
    let sizes: Vec<usize> = dashboard
        .features
        .iter()
        .map(|f| render_card(f, &local).len())
        .collect();
    if sizes.iter().sum::<usize>() <= single_limit {
        return vec![("index.html".to_string(), render_single(dashboard))];
    }
    let mut pages: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, size) in sizes.iter().enumerate() {
        if i > start && bytes + size > page_limit {
            pages.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    pages.push(start..sizes.len());
    let page_name = |k: usize| format!("page-{:03}.html", k + 1);
    let mut hrefs = Hrefs::new();
    for (k, range) in pages.iter().enumerate() {
        for f in &dashboard.features[range.clone()] {
            hrefs.insert(f.feature, format!("{}#{}", page_name(k), anchor(f.feature)));
        }
    }
    let mut files = vec![(
        "index.html".to_string(),
        page(dashboard, &dashboard.title, &hrefs, &[]),
    )];
    for (k, range) in pages.iter().enumerate() {
        let features = &dashboard.features[range.clone()];
        // Links to the cards of this page stay on it.
        let mut page_hrefs = hrefs.clone();
        page_hrefs.extend(local_hrefs(features));
        let cards: Vec<(u32, String)> = features
            .iter()
            .map(|f| (f.feature, render_card(f, &page_hrefs)))
            .collect();
        let title = format!(
            "{} · features {} to {}",
            dashboard.title,
            features[0].feature,
            features[features.len() - 1].feature
        );
        files.push((page_name(k), page(dashboard, &title, &page_hrefs, &cards)));
    }
    files
}

/// One HTML document: the header, the searchable index of every feature (`hrefs` says where
/// each card is), and `cards` as HTML strings in a JSON block that the script puts on the page
/// one at a time, for `#feature-N`. Parsing a string is cheap where parsing millions of token
/// elements is not: a 1,000-feature file opens in about a second instead of a minute.
fn page(dashboard: &Dashboard, title: &str, hrefs: &Hrefs, cards: &[(u32, String)]) -> String {
    let mut out = String::with_capacity(cards.iter().map(|(_, c)| c.len()).sum::<usize>() + 65_536);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <meta name=generator content=\"gemscope {}\">\
         <title>{} · gemscope</title><style>{}</style></head>\n<body>\n<header><h1>{}</h1>",
        env!("CARGO_PKG_VERSION"),
        escape(title),
        css(),
        escape(title),
    );
    if !dashboard.facts.is_empty() {
        out.push_str("<p class=meta>");
        for (i, (name, value)) in dashboard.facts.iter().enumerate() {
            if i > 0 {
                out.push_str(" · ");
            }
            let _ = write!(out, "{} <b>{}</b>", escape(name), escape(value));
        }
        out.push_str("</p>");
    }
    out.push_str("</header>\n");
    out.push_str(&render_index(dashboard, hrefs));
    out.push_str("<main id=card></main>\n<script type=\"application/json\" id=cards>{");
    for (i, (feature, html)) in cards.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{feature}\":");
        push_script_string(&mut out, html);
    }
    out.push_str("}</script>\n");
    let _ = write!(out, "<script>{PAGE_JS}</script>\n</body></html>\n");
    out
}

/// `html` as a JSON string inside a script element: JSON's escapes, and `</` written `<\/` so
/// nothing in it can close the element (labels and tokens are escaped already; this guards the
/// card's own closing tags).
fn push_script_string(out: &mut String, html: &str) {
    out.push('"');
    let mut rest = html;
    while let Some(i) = rest.find(['"', '\\', '\n', '\r', '\t', '/']) {
        out.push_str(&rest[..i]);
        match rest.as_bytes()[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ if out.ends_with('<') => out.push_str("\\/"),
            _ => out.push('/'),
        }
        rest = &rest[i + 1..];
    }
    // Other control characters never reach a card: pieces are escaped as the table does.
    out.push_str(rest);
    out.push('"');
}

/// One index row for the script: id, label, density, max activation, where its card is.
#[derive(serde::Serialize)]
struct IndexRow<'a>(u32, Option<&'a str>, Option<f64>, Option<f32>, &'a str);

fn render_index(dashboard: &Dashboard, hrefs: &Hrefs) -> String {
    let rows: Vec<IndexRow> = dashboard
        .features
        .iter()
        .map(|f| {
            IndexRow(
                f.feature,
                f.label(),
                f.density,
                f.max_activation,
                hrefs[&f.feature].as_str(),
            )
        })
        .collect();
    format!(
        "<section id=index><input id=q type=search placeholder=\"search labels and ids\" \
         aria-label=\"search labels and ids\" autocomplete=off> <span id=count class=meta>{n} \
         features</span>\n<noscript><p>This page needs JavaScript to show its index and \
         cards.</p></noscript>\n<table id=features><thead><tr>\
         <th data-key=0 class=num>feature</th><th data-key=1>label</th>\
         <th data-key=2 class=num>density</th><th data-key=3 class=num>max activation</th>\
         </tr></thead><tbody></tbody></table>\n\
         <script type=\"application/json\" id=index-data>{json}</script></section>\n",
        n = rows.len(),
        json = script_json(&rows),
    )
}

/// Builds the index from its JSON, filters it by the search box (words in any order, over
/// `#id` and the label; `#q=words` in the address fills the box), sorts by a clicked column,
/// and shows the card `#feature-N` names in place of the index, following the index's link
/// when the card is on another page of a directory.
const PAGE_JS: &str = r#"(()=>{
const data=JSON.parse(document.getElementById('index-data').textContent);
const cards=JSON.parse(document.getElementById('cards').textContent);
const index=document.getElementById('index'),main=document.getElementById('card');
const tbody=document.querySelector('#features tbody'),q=document.getElementById('q'),count=document.getElementById('count');
const heads=[...document.querySelectorAll('#features th[data-key]')];
let key=null,dir=1;
const pct=d=>d==null?'–':(d*100).toPrecision(3)+'%';
const num=v=>v==null?'–':Number(v.toPrecision(4)).toString();
const cmp=(a,b)=>a==null?(b==null?0:1):b==null?-1:(typeof a==='string'?a.localeCompare(b)*dir:(a-b)*dir);
function cell(tr,text,cls){const td=tr.insertCell();td.textContent=text;if(cls)td.className=cls;}
function render(){
 const words=q.value.toLowerCase().split(/\s+/).filter(Boolean);
 const rows=data.filter(r=>{const hay=('#'+r[0]+' '+(r[1]||'')).toLowerCase();return words.every(w=>hay.includes(w));});
 if(key!==null)rows.sort((a,b)=>cmp(a[key],b[key])||a[0]-b[0]);
 const body=document.createElement('tbody');
 for(const r of rows){const tr=body.insertRow();tr.dataset.feature=r[0];
  const td=tr.insertCell(),a=document.createElement('a');a.href=r[4];a.textContent='#'+r[0];td.className='num';td.append(a);
  cell(tr,r[1]||'',r[1]?'':'meta');cell(tr,pct(r[2]),'num');cell(tr,num(r[3]),'num');}
 tbody.replaceChildren(...body.rows);
 count.textContent=(rows.length===data.length?'':rows.length+' of ')+data.length+' features';
}
function route(){
 const h=decodeURIComponent(location.hash.slice(1));
 const m=/^feature-(\d+)$/.exec(h);
 if(m&&cards[m[1]]!==undefined){main.innerHTML=cards[m[1]];index.hidden=true;main.hidden=false;scrollTo(0,0);return;}
 main.replaceChildren();main.hidden=true;index.hidden=false;
 if(h.startsWith('q=')){q.value=h.slice(2);render();}
 if(m){const r=data.find(r=>r[0]==m[1]);if(r&&!r[4].startsWith('#'))location.replace(r[4]);}
}
q.addEventListener('input',()=>{history.replaceState(null,'',q.value?'#q='+encodeURIComponent(q.value):location.pathname);render();});
for(const th of heads)th.addEventListener('click',()=>{const k=+th.dataset.key;dir=key===k?-dir:(k===1?1:-1);key=k;
 for(const o of heads)o.removeAttribute('aria-sort');th.setAttribute('aria-sort',dir>0?'ascending':'descending');render();});
addEventListener('hashchange',route);
render();route();
document.body.dataset.ready='1';
})();"#;

fn percent(density: f64) -> String {
    format!("{}%", significant(100.0 * density, 3))
}

/// One feature's card.
fn render_card(f: &DashboardFeature, hrefs: &Hrefs) -> String {
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<article class=card id={} data-feature={}>\n<h2>#{} ",
        anchor(f.feature),
        f.feature,
        f.feature
    );
    match f.label() {
        Some(label) => push_escaped(&mut out, label),
        None => out.push_str("<span class=meta>no label</span>"),
    }
    out.push_str("</h2>");
    if f.labels.len() > 1 {
        out.push_str("<ul class=labels>");
        for label in &f.labels[1..] {
            out.push_str("<li>");
            push_escaped(&mut out, label);
            out.push_str("</li>");
        }
        out.push_str("</ul>");
    }
    out.push_str("<div class=stats>");
    if let Some(d) = f.density {
        let _ = write!(out, "<span>density <b>{}</b></span>", percent(d));
    }
    if let Some(m) = f.max_activation {
        let _ = write!(
            out,
            "<span>max activation <b>{}</b></span>",
            significant(m.into(), 4)
        );
    }
    let n = f.examples.len();
    let _ = write!(
        out,
        "<span>{n} example{}</span>",
        if n == 1 { "" } else { "s" }
    );
    if let Some(url) = &f.neuronpedia_url {
        let _ = write!(out, "<a href=\"{}\">Neuronpedia</a>", escape(url));
    }
    out.push_str("<a href=\"#index\">all features</a></div>\n");
    if !f.histogram.is_empty() {
        out.push_str("<h3>activation histogram</h3>");
        out.push_str(&histogram_svg(&f.histogram));
    }
    let lists = [
        (
            "promoted tokens",
            "pos",
            logit_table(&f.logits_positive, false),
        ),
        (
            "suppressed tokens",
            "neg",
            logit_table(&f.logits_negative, true),
        ),
        ("neighbours", "nbr", neighbour_list(f, hrefs)),
    ];
    if lists.iter().any(|(_, _, html)| !html.is_empty()) {
        out.push_str("<div class=cols>");
        for (title, class, html) in lists {
            if !html.is_empty() {
                let _ = write!(out, "<div class={class}><h3>{title}</h3>{html}</div>");
            }
        }
        out.push_str("</div>\n");
    }
    let max = f.shade_max();
    if !f.examples.is_empty() {
        let _ = writeln!(
            out,
            "<h3>top examples {}</h3>",
            shade_legend(&format!("max {}", significant(max.into(), 4)))
        );
        for example in &f.examples {
            render_example(&mut out, example, max);
        }
    }
    for group in &f.quantiles {
        let _ = writeln!(
            out,
            "<details class=quantile><summary>activations {} to {} · {} example{}</summary>",
            significant(group.low.into(), 3),
            significant(group.high.into(), 3),
            group.examples.len(),
            if group.examples.len() == 1 { "" } else { "s" }
        );
        for example in &group.examples {
            render_example(&mut out, example, max);
        }
        out.push_str("</details>\n");
    }
    out.push_str("</article>\n");
    out
}

/// An example's tokens: each active token an `<i>` shaded by activation / `max` with the exact
/// activation as its title, the strongest a `<b>` (outlined), the inactive ones plain text
/// (they are most tokens, and a 1,000-feature dashboard holds millions).
fn render_example(out: &mut String, example: &Example, max: f32) {
    let _ = write!(
        out,
        "<div class=ex><div class=meta>document {} · <b>{}</b></div><p class=toks>",
        example.document,
        example.activation()
    );
    for (j, token) in example.tokens.iter().enumerate() {
        let piece = piece_html(&token.text);
        let tag = if j == example.max_token { "b" } else { "i" };
        if token.activation == 0.0 && tag == "i" {
            out.push_str(&piece);
            continue;
        }
        let _ = write!(out, "<{tag}");
        if let Some(level) = shade_level(token.activation, max) {
            let _ = write!(out, " class=s{level}");
        }
        let _ = write!(out, " title={}>{piece}</{tag}>", token.activation);
    }
    out.push_str("</p></div>\n");
}

/// Bars of the histogram, one `<rect>` per bin (empty bins have height 0), the bin's range and
/// count as its tooltip, the outer edges labelled.
fn histogram_svg(bins: &[HistogramBin]) -> String {
    const W: f64 = 520.0;
    const H: f64 = 110.0;
    const PLOT: f64 = 92.0;
    let most = bins.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let step = W / bins.len() as f64;
    let mut out = format!(
        "<svg class=hist viewBox=\"0 0 {W} {H}\" role=img aria-label=\"activation histogram, \
         {} bins\"><line x1=0 y1={PLOT} x2={W} y2={PLOT}></line>",
        bins.len()
    );
    for (i, bin) in bins.iter().enumerate() {
        let h = PLOT * bin.count as f64 / most;
        // A bin with any count stays visible next to a tall one.
        let h = if bin.count > 0 { h.max(1.0) } else { 0.0 };
        let _ = write!(
            out,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\"><title>{} to {}: {}</title></rect>",
            i as f64 * step + 0.5,
            PLOT - h,
            (step - 1.0).max(0.5),
            significant(bin.low.into(), 3),
            significant(bin.high.into(), 3),
            bin.count
        );
    }
    let (first, last) = (bins[0].low, bins[bins.len() - 1].high);
    let _ = write!(
        out,
        "<text x=0 y={H}>{}</text><text x={W} y={H} text-anchor=end>{}</text></svg>",
        significant(first.into(), 3),
        significant(last.into(), 3)
    );
    out
}

/// Tokens with a bar each, the longest bar the largest |value| of the list.
fn logit_table(effects: &[LogitEffect], negative: bool) -> String {
    if effects.is_empty() {
        return String::new();
    }
    let most = effects
        .iter()
        .map(|e| e.value.abs())
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    let mut out = format!(
        "<table class=\"bars{}\">",
        if negative { " neg" } else { "" }
    );
    for e in effects {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td class=num>{:+.3}</td><td style=\"width:45%\">\
             <span class=bar style=\"width:{:.1}%\"></span></td></tr>",
            piece_html(&e.token),
            e.value,
            100.0 * e.value.abs() / most
        );
    }
    out.push_str("</table>");
    out
}

fn neighbour_list(f: &DashboardFeature, hrefs: &Hrefs) -> String {
    if f.neighbours.is_empty() {
        return String::new();
    }
    let mut out = String::from("<table class=bars>");
    for n in &f.neighbours {
        let id = match hrefs.get(&n.feature) {
            Some(href) => format!("<a href=\"{}\">#{}</a>", escape(href), n.feature),
            None => format!("#{}", n.feature),
        };
        let _ = write!(
            out,
            "<tr><td>{id}</td><td class=num>{:.3}</td><td>{}</td></tr>",
            n.cosine,
            n.label.as_deref().map(escape).unwrap_or_default()
        );
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::dashboard::*;

    fn feature(id: u32, label: &str) -> DashboardFeature {
        DashboardFeature {
            feature: id,
            labels: vec![label.to_string()],
            density: Some(0.0123),
            max_activation: Some(4.0),
            histogram: vec![
                HistogramBin {
                    low: 0.1,
                    high: 1.0,
                    count: 5,
                },
                HistogramBin {
                    low: 1.0,
                    high: 10.0,
                    count: 0,
                },
            ],
            logits_positive: vec![LogitEffect {
                token: "▁dog".into(),
                value: 0.5,
            }],
            neighbours: vec![
                NeighbourFeature {
                    feature: 9,
                    cosine: 0.5,
                    label: Some("x".into()),
                },
                NeighbourFeature {
                    feature: 77,
                    cosine: 0.25,
                    label: None,
                },
            ],
            examples: vec![Example {
                document: 3,
                tokens: vec![
                    ExampleToken {
                        text: "▁a".into(),
                        activation: 0.0,
                    },
                    ExampleToken {
                        text: "\n".into(),
                        activation: 1.0,
                    },
                    ExampleToken {
                        text: "b".into(),
                        activation: 4.0,
                    },
                ],
                max_token: 2,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn cards_shade_mark_and_link() {
        let hrefs: Hrefs = [(9, "#feature-9".to_string())].into();
        let card = render_card(&feature(5, "dogs & cats"), &hrefs);
        assert!(card.contains("<h2>#5 dogs &amp; cats</h2>"), "{card}");
        assert!(card.contains("density <b>1.23%</b>"), "{card}");
        assert!(
            card.contains(" a<i class=s2 title=1>\\n</i><b class=s5 title=4>b</b></p>"),
            "{card}"
        );
        assert_eq!(card.matches("<rect").count(), 2);
        assert!(
            card.contains("height=\"0.00\""),
            "an empty bin is a bar of height 0"
        );
        assert!(card.contains("<a href=\"#feature-9\">#9</a>"), "{card}");
        assert!(
            card.contains("<td>#77</td>"),
            "a neighbour without a card is not a link"
        );
        assert!(card.contains("<code> dog</code>"), "{card}");
    }

    #[test]
    fn directories_split_by_size_and_link_across_pages() {
        let dashboard = Dashboard {
            title: "t".into(),
            facts: vec![],
            features: (0..10).map(|i| feature(i, "l")).collect(),
        };
        let card = render_card(&dashboard.features[0], &Hrefs::new()).len();
        let one = render_directory(&dashboard, usize::MAX, 1);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, render_single(&dashboard));
        let files = render_directory(&dashboard, card, 3 * card + card / 2);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "index.html",
                "page-001.html",
                "page-002.html",
                "page-003.html",
                "page-004.html"
            ]
        );
        assert!(!files[0].1.contains("<article"));
        assert!(files[0].1.contains("\"page-004.html#feature-9\""));
        assert_eq!(files[4].1.matches("<article").count(), 1);
        // Feature 0's neighbour 9 lives on another page (the card is a JSON string there).
        assert!(files[1]
            .1
            .contains("<a href=\\\"page-004.html#feature-9\\\">#9<\\/a>"));
        assert!(
            files[1].1.contains("\"#feature-1\""),
            "feature 1 is on this page"
        );
    }

    #[test]
    fn cards_travel_as_json_strings_no_tag_can_end() {
        let html = "<p class=\"x\">a\\b\n\t</p></script><!-- é";
        let mut out = String::new();
        push_script_string(&mut out, html);
        assert!(!out.contains("</"), "{out}");
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), html);
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(4.5, 4), "4.500");
        assert_eq!(significant(0.012345, 3), "0.0123");
        assert_eq!(significant(1234.5, 3), "1234");
        assert_eq!(percent(0.5), "50.0%");
    }
}
