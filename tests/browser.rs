//! The HTML views in a real browser: headless Chromium loads the pages, runs their script, and
//! the rendered DOM shows the index, the cards, the search filter and the escaping held.

use crate::util::{assert_fails_with, fixture_arg, run, stderr};
use gemscope::output::dashboard::{render_directory, write_dashboard};
use gemscope::report::dashboard::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Chromium, installed with apt when missing and we are root (as CI is); `None` (the test then
/// says it is skipped) only when it is missing and cannot be installed by us.
fn chromium() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let find = || {
                ["chromium", "chromium-browser"].iter().find_map(|name| {
                    let out = Command::new("sh")
                        .args(["-c", &format!("command -v {name}")])
                        .output()
                        .ok()?;
                    let path = String::from_utf8(out.stdout).ok()?;
                    (out.status.success() && !path.trim().is_empty())
                        .then(|| PathBuf::from(path.trim()))
                })
            };
            if let Some(path) = find() {
                return Some(path);
            }
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!(
                    "SKIPPED browser tests: chromium is not installed and installing it needs \
                     root (apt-get install -y chromium)"
                );
                return None;
            }
            let status = Command::new("sh")
                .args([
                    "-c",
                    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                     chromium >/dev/null",
                ])
                .status()
                .expect("run apt-get");
            assert!(status.success(), "apt-get install chromium failed");
            Some(find().expect("chromium is on PATH after apt-get install"))
        })
        .as_deref()
}

/// Headless Chromium with nothing reaching out to the network, a fresh profile each run, killed
/// after two minutes should it ever hang.
fn headless(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn url(path: &Path, fragment: &str) -> String {
    format!("file://{}{fragment}", path.display())
}

/// The DOM after the page's scripts ran.
fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = headless(chromium, profile.path())
        .args(["--virtual-time-budget=2000", "--dump-dom", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --dump-dom {url} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// A PNG of the page as a 1200x900 window shows it.
fn screenshot(chromium: &Path, url: &str, png: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let out = headless(chromium, profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --screenshot {url} failed");
    let bytes = std::fs::read(png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "a blank screenshot ({} bytes)",
        bytes.len()
    );
}

/// The text of the element that starts at the first `start` after `from`, to its `end`.
fn section<'a>(dom: &'a str, start: &str, end: &str) -> &'a str {
    let at = dom
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in the DOM"));
    let rest = &dom[at..];
    &rest[..rest.find(end).expect("element closes") + end.len()]
}

fn index_rows(dom: &str) -> Vec<u32> {
    let table = section(dom, "<table id=\"features\">", "</table>");
    table
        .split("<tr data-feature=\"")
        .skip(1)
        .map(|row| row[..row.find('"').unwrap()].parse().unwrap())
        .collect()
}

const HOSTILE: &str = "<script>document.title='pwned'</script> \"quoted\" & </style> <b>bold</b>";

fn token(text: &str, activation: f32) -> ExampleToken {
    ExampleToken {
        text: text.into(),
        activation,
    }
}

/// A dashboard of `n` features: feature `i` has `i % 4 + 1` examples of 6 tokens, a
/// histogram of `i % 5 + 3` bins, two labels, logit effects and two neighbours; feature 7's
/// label and tokens are hostile HTML.
fn hand_built(n: u32) -> Dashboard {
    let words = ["▁the", "▁dog", "\n", "<0x0A>", "▁barked", "!"];
    let features = (0..n)
        .map(|i| {
            let max = 2.0 + i as f32;
            let examples = (0..i % 4 + 1)
                .map(|e| {
                    let tokens = words
                        .iter()
                        .enumerate()
                        .map(|(j, w)| {
                            let text = if i == 7 && j == 1 { HOSTILE } else { w };
                            // Tokens 1 and 4 fire, token 4 the most; the rest are off.
                            let a = match j {
                                1 => max / (3.0 + e as f32),
                                4 => max / (1.0 + e as f32),
                                _ => 0.0,
                            };
                            token(text, a)
                        })
                        .collect();
                    Example {
                        document: u64::from(10 * i + e),
                        tokens,
                        max_token: 4,
                    }
                })
                .collect();
            let label = match i {
                7 => HOSTILE.to_string(),
                i if i % 3 == 0 => format!("dogs and barking, variant {i}"),
                i => format!("punctuation at line ends {i}"),
            };
            DashboardFeature {
                feature: 100 + i,
                labels: vec![label, "a second explanation".into()],
                neuronpedia_url: Some(format!(
                    "https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/{}",
                    100 + i
                )),
                density: Some(0.001 * f64::from(i + 1)),
                max_activation: Some(max),
                histogram: (0..i % 5 + 3)
                    .map(|b| HistogramBin {
                        low: 10f32.powf(b as f32 / 10.0 - 1.0),
                        high: 10f32.powf((b + 1) as f32 / 10.0 - 1.0),
                        count: u64::from((b * 7 + i) % 9),
                    })
                    .collect(),
                logits_positive: vec![
                    LogitEffect {
                        token: "▁bark".into(),
                        value: 0.9,
                    },
                    LogitEffect {
                        token: if i == 7 {
                            HOSTILE.into()
                        } else {
                            "▁woof".into()
                        },
                        value: 0.4,
                    },
                ],
                logits_negative: vec![LogitEffect {
                    token: "▁cat".into(),
                    value: -0.7,
                }],
                neighbours: vec![
                    NeighbourFeature {
                        feature: 100 + (i + 1) % n,
                        cosine: 0.61,
                        label: Some(if i == 6 {
                            HOSTILE.into()
                        } else {
                            "next".into()
                        }),
                    },
                    NeighbourFeature {
                        feature: 9999,
                        cosine: 0.2,
                        label: None,
                    },
                ],
                examples,
                quantiles: vec![QuantileGroup {
                    low: 0.0,
                    high: max / 2.0,
                    examples: vec![Example {
                        document: 999,
                        tokens: vec![token("▁low", max / 4.0), token("▁end", 0.0)],
                        max_token: 0,
                    }],
                }],
            }
        })
        .collect();
    Dashboard {
        title: "layer 1 res · test dashboard".into(),
        facts: vec![("SAE".into(), "sae_res_L1.npz".into())],
        features,
    }
}

/// Shaded tokens in the token lines (`<p class="toks">`) of `html` before any quantile group.
fn shaded_tokens(html: &str) -> usize {
    let top = html.split("<details").next().unwrap();
    top.split("<p class=\"toks\">")
        .skip(1)
        .map(|line| {
            let line = &line[..line.find("</p>").unwrap()];
            (1..=5)
                .map(|s| {
                    line.matches(&format!("<i class=\"s{s}\"")).count()
                        + line.matches(&format!("<b class=\"s{s}\"")).count()
                })
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn dashboard_index_cards_and_search_work_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.html");
    let dashboard = hand_built(12);
    let written = write_dashboard(&file, &dashboard).unwrap();
    assert_eq!(
        (written.pages, written.entry.as_path()),
        (0, file.as_path())
    );

    let dom = dump_dom(chromium, &url(&file, ""));
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not run"
    );
    // The script built one row per feature, in the dashboard's order, and no card yet.
    let all: Vec<u32> = dashboard.features.iter().map(|f| f.feature).collect();
    assert_eq!(index_rows(&dom), all);
    assert!(dom.contains("<span id=\"count\" class=\"meta\">12 features</span>"));
    assert!(!dom.contains("<article class=\"card\""));
    // `#feature-N` puts that card on the page in place of the index: its examples with their
    // active tokens shaded (2 per example), the strongest marked, one bar per histogram bin.
    for i in [0, 1, 3, 6] {
        let f = &dashboard.features[i];
        let dom = dump_dom(chromium, &url(&file, &format!("#feature-{}", f.feature)));
        assert!(
            dom.contains("<section id=\"index\" hidden=\"\">"),
            "index not hidden"
        );
        let card = section(
            &dom,
            &format!("<article class=\"card\" id=\"feature-{}\"", f.feature),
            "</article>",
        );
        assert_eq!(dom.matches("<article class=\"card\"").count(), 1);
        assert_eq!(
            card.matches("<div class=\"ex\">").count(),
            f.examples.len() + 1
        );
        assert_eq!(shaded_tokens(card), 2 * f.examples.len(), "{card}");
        assert_eq!(
            card.matches("<b class=\"s5\"").count(),
            1,
            "the top example's max"
        );
        let svg = section(card, "<svg class=\"hist\"", "</svg>");
        assert_eq!(svg.matches("<rect").count(), f.histogram.len());
    }

    // `#q=` in the address filters by label words, `#q=#1` by id prefix.
    let dom = dump_dom(chromium, &url(&file, "#q=dogs%20barking"));
    let dogs: Vec<u32> = (0..12)
        .filter(|i| i % 3 == 0 && *i != 7)
        .map(|i| 100 + i)
        .collect();
    assert_eq!(index_rows(&dom), dogs);
    assert!(
        dom.contains("4 of 12 features"),
        "{}",
        section(&dom, "<span id=\"count\"", "</span>")
    );
    let dom = dump_dom(chromium, &url(&file, "#q=%23105"));
    assert_eq!(index_rows(&dom), [105]);
}

#[test]
fn outside_text_renders_as_text_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.html");
    write_dashboard(&file, &hand_built(12)).unwrap();
    let dom = dump_dom(chromium, &url(&file, "#feature-107"));
    // No injected script ran, no injected element exists, the style sheet was not cut short.
    assert!(
        dom.contains("<title>layer 1 res · test dashboard · gemscope</title>"),
        "title changed"
    );
    assert!(!dom.contains("<b>bold</b>"));
    assert_eq!(
        dom.matches("<script").count(),
        3,
        "only the page's own scripts"
    );
    assert_eq!(dom.matches("<style>").count(), 1);
    assert!(
        dom.contains(".s5{background:#ff5f00;color:#000}"),
        "the CSS is whole"
    );
    let escaped = "&lt;script&gt;document.title='pwned'&lt;/script&gt; \"quoted\" &amp; \
                   &lt;/style&gt; &lt;b&gt;bold&lt;/b&gt;";
    let card = section(
        &dom,
        "<article class=\"card\" id=\"feature-107\"",
        "</article>",
    );
    assert!(card.contains(&format!("<h2>#107 {escaped}</h2>")), "{card}");
    assert!(
        card.contains(&format!("<code>{escaped}</code>")),
        "logit token: {card}"
    );
    assert!(
        card.contains(&format!("<i class=\"s2\" title=\"3\">{escaped}</i>")),
        "{card}"
    );
    // The index row the script built holds the label as text too.
    let row = section(&dom, "<tr data-feature=\"107\">", "</tr>");
    assert!(row.contains(escaped), "{row}");
    let dom = dump_dom(chromium, &url(&file, "#feature-106"));
    let neighbour = section(
        &dom,
        "<article class=\"card\" id=\"feature-106\"",
        "</article>",
    );
    assert!(neighbour.contains(escaped), "neighbour label: {neighbour}");
}

#[test]
fn directory_pages_link_back_and_index_follows_feature_anchors() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dashboard = hand_built(12);
    let files = render_directory(&dashboard, 0, 1);
    assert_eq!(files.len(), 13, "index and one page per card");
    for (name, html) in &files {
        std::fs::write(dir.path().join(name), html).unwrap();
    }
    let index = dir.path().join("index.html");
    let dom = dump_dom(chromium, &url(&index, ""));
    assert_eq!(index_rows(&dom).len(), 12);
    assert!(dom.contains("href=\"page-004.html#feature-103\""));
    // index.html#feature-N (typed in the address bar) goes to the page with that card.
    let dom = dump_dom(chromium, &url(&index, "#feature-103"));
    assert!(
        dom.contains("<article class=\"card\" id=\"feature-103\""),
        "not followed"
    );
}

#[test]
fn features_html_from_the_tiny_fixture_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.html");
    let (model, sae) = (fixture_arg("tiny"), fixture_arg("tiny/sae_res_L1.npz"));
    let out = run(&[
        "features",
        "--model",
        &model,
        "--sae",
        &sae,
        "--layer",
        "1",
        "--device",
        "cpu",
        "--highlight",
        "15",
        "--json",
        "--html",
        file.to_str().unwrap(),
        "The cat <sat> & \"ran\"\nhome",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prompt = &report["prompts"][0];
    let html = std::fs::read_to_string(&file).unwrap();
    let ve = prompt["variance_explained"].as_f64().unwrap();
    assert!(html.contains(&format!("variance explained <b>{ve:.4}</b>")));
    assert!(html.contains(&format!(
        "mean L0 <b>{:.1}</b>",
        prompt["mean_l0"].as_f64().unwrap()
    )));
    let Some(chromium) = chromium() else { return };
    let dom = dump_dom(chromium, &url(&file, ""));
    let after = &dom[dom.find("<h3>tokens shaded").expect("the shaded strip")..];
    let strip = section(after, "<p class=\"toks\">", "</p>");
    let tokens = prompt["tokens"].as_array().unwrap();
    assert_eq!(
        strip.matches("<i ").count(),
        tokens.len(),
        "one box per token"
    );
    let activations = prompt["highlight"]["activations"].as_array().unwrap();
    let active = activations
        .iter()
        .skip(1)
        .filter(|a| a.as_f64().unwrap() > 0.0)
        .count();
    assert_eq!(shaded_tokens(strip), active, "{strip}");
    assert!(!dom.contains("<sat>"), "the prompt's markup is text");
    let png = dir.path().join("prompt.png");
    screenshot(chromium, &url(&file, ""), &png);
}

#[test]
fn features_html_into_a_missing_directory_fails_before_any_output() {
    let (model, sae) = (fixture_arg("tiny"), fixture_arg("tiny/sae_res_L1.npz"));
    let out = run(&[
        "features",
        "--model",
        &model,
        "--sae",
        &sae,
        "--layer",
        "1",
        "--html",
        "/nonexistent-dir/prompt.html",
        "hello",
    ]);
    assert_fails_with(&out, "cannot create a file in /nonexistent-dir");
}

/// A card and the index paint in a real window (the README's images come from the tiny
/// fixture through `gemscope dashboard`; this checks the same views paint non-blank).
#[test]
fn screenshots_of_the_index_and_a_card() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.html");
    write_dashboard(&file, &hand_built(12)).unwrap();
    for (name, fragment) in [("index", ""), ("card", "#feature-104")] {
        let png = dir.path().join(format!("{name}.png"));
        screenshot(chromium, &url(&file, fragment), &png);
    }
}

/// The tiny fixture end to end, as a user runs it: `top-examples` over the test corpus, then
/// `gemscope dashboard`, rendered in Chromium: the index lists every feature of the store that
/// fired, and a card shows the store's examples and one histogram bar per bin.
#[test]
fn dashboard_command_on_the_tiny_fixture_renders_the_store() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.jsonl");
    let html = dir.path().join("dashboard.html");
    let (model, sae, corpus, store_arg, html_arg) = (
        fixture_arg("tiny"),
        fixture_arg("tiny/sae_res_L1.npz"),
        fixture_arg("corpus.txt"),
        store.display().to_string(),
        html.display().to_string(),
    );
    let common = ["--model", &model, "--sae", &sae, "--layer", "1"];
    let mut args = vec!["top-examples"];
    args.extend(common);
    args.extend([
        "--corpus",
        &corpus,
        "--out",
        &store_arg,
        "--top",
        "4",
        "--context",
        "3",
    ]);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut args = vec!["dashboard", "--no-labels"];
    args.extend(common);
    args.extend(["--examples", &store_arg, "--out", &html_arg]);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "the dashboard goes to its file only");

    let stored = gemscope::corpus::Store::open(&store).unwrap();
    let fired: Vec<_> = stored
        .features
        .iter()
        .filter_map(|&f| stored.feature(f))
        .filter(|e| e.active > 0)
        .collect();
    let dom = dump_dom(chromium, &url(&html, ""));
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not run"
    );
    let mut listed = index_rows(&dom);
    listed.sort_unstable();
    let mut want: Vec<u32> = fired.iter().map(|e| e.feature).collect();
    want.sort_unstable();
    assert_eq!(listed, want, "the index lists every feature that fired");

    // The busiest feature's card: one block per stored example, the histogram's bins as bars.
    let busiest = fired
        .iter()
        .max_by_key(|e| (e.active, std::cmp::Reverse(e.feature)))
        .unwrap();
    let dom = dump_dom(
        chromium,
        &url(&html, &format!("#feature-{}", busiest.feature)),
    );
    let card = section(
        &dom,
        &format!("<article class=\"card\" id=\"feature-{}\"", busiest.feature),
        "</article>",
    );
    assert_eq!(
        card.matches("<div class=\"ex\">").count(),
        busiest.examples.len()
    );
    let active_in_windows: usize = busiest
        .examples
        .iter()
        .map(|e| e.tokens.iter().filter(|t| t.activation > 0.0).count())
        .sum();
    assert_eq!(shaded_tokens(card), active_in_windows, "{card}");
    assert!(section(card, "<svg class=\"hist\"", "</svg>").contains("<rect"));

    // A store of another layer is refused with one line, before anything is written.
    let other = dir.path().join("other.html");
    let other_arg = other.display().to_string();
    let sae3 = fixture_arg("tiny/sae_res_L3.npz");
    let out = run(&[
        "dashboard",
        "--model",
        &model,
        "--sae",
        &sae3,
        "--layer",
        "3",
        "--examples",
        &store_arg,
        "--out",
        &other_arg,
    ]);
    assert_fails_with(&out, "holds layer 1 res");
    assert!(!other.exists());
}
