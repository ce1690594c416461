//! Benchmark of the HTML dashboard at Neuronpedia's scale: 1,000 synthetic features with 20
//! examples of 128 tokens each (about 1 in 8 tokens active), a 40-bin histogram, 10 promoted
//! and suppressed tokens and 10 neighbours. Reports the time gemscope takes to render it, the
//! size of the single file, how `--out DIR` splits it, and, when Chromium is installed, how long
//! the browser takes to load the page and run its script (index, and a card by `#feature-N`).
//! Run: `cargo bench --bench dashboard`.
//!
//! Env: `GEMSCOPE_BENCH_FEATURES` (default 1000), `GEMSCOPE_BENCH_EXAMPLES` (20),
//! `GEMSCOPE_BENCH_TOKENS` (128 per example), `GEMSCOPE_BENCH_KEEP` (a file to keep the page in).

use gemscope::output::dashboard::{render_directory, render_single, PAGE_BYTES, SINGLE_FILE_BYTES};
use gemscope::report::dashboard::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so every run renders the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

const WORDS: [&str; 16] = [
    "▁the",
    "▁of",
    "▁time",
    "▁travel",
    "▁machine",
    ",",
    "▁and",
    "▁a",
    "▁future",
    "▁past",
    ".",
    "\n",
    "▁physics",
    "▁paradox",
    "▁we",
    "▁were",
];

fn synthetic(features: usize, examples: usize, tokens: usize) -> Dashboard {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let features = (0..features as u32)
        .map(|f| {
            let max = 5.0 + 50.0 * rng.unit();
            let examples = (0..examples)
                .map(|e| {
                    let top = max * (1.0 - e as f32 / (2 * examples) as f32);
                    let at = rng.next() as usize % tokens;
                    let tokens = (0..tokens)
                        .map(|j| ExampleToken {
                            text: WORDS[rng.next() as usize % WORDS.len()].to_string(),
                            activation: if j == at {
                                top
                            } else if rng.next().is_multiple_of(8) {
                                top * rng.unit()
                            } else {
                                0.0
                            },
                        })
                        .collect();
                    Example {
                        document: rng.next() % 100_000,
                        tokens,
                        max_token: at,
                    }
                })
                .collect();
            let effects = |sign: f32, rng: &mut Rng| {
                (0..10)
                    .map(|k| LogitEffect {
                        token: WORDS[k % WORDS.len()].to_string(),
                        value: sign * (1.0 - k as f32 / 20.0) * rng.unit(),
                    })
                    .collect()
            };
            DashboardFeature {
                feature: f,
                labels: vec![format!("references to time travel and its paradoxes ({f})")],
                neuronpedia_url: Some(format!(
                    "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/{f}"
                )),
                density: Some(f64::from(rng.unit()) / 100.0),
                max_activation: Some(max),
                histogram: (0..40)
                    .map(|b| HistogramBin {
                        low: 10f32.powf(b as f32 / 10.0 - 2.0),
                        high: 10f32.powf((b + 1) as f32 / 10.0 - 2.0),
                        count: rng.next() % 10_000,
                    })
                    .collect(),
                logits_positive: effects(1.0, &mut rng),
                logits_negative: effects(-1.0, &mut rng),
                neighbours: (0..10)
                    .map(|k| NeighbourFeature {
                        feature: (f + k + 1) % 16_384,
                        cosine: 0.5 - k as f32 / 40.0,
                        label: Some("a neighbouring concept".into()),
                    })
                    .collect(),
                examples,
                quantiles: vec![],
            }
        })
        .collect();
    Dashboard {
        title: "layer 20 res · synthetic".into(),
        facts: vec![("SAE".into(), "16k, synthetic".into())],
        features,
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Seconds Chromium takes to load `url`, run its script and paint a screenshot (median of 3).
/// (`--dump-dom` would add the time to serialize the cards' JSON back out: 20 s for 33 MB.)
fn chromium_seconds(url: &str) -> Option<f64> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let profile = tempfile::tempdir().ok()?;
        let png = profile.path().join("shot.png");
        let start = Instant::now();
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg(url)
            .output()
            .ok()?;
        if !out.status.success() || !png.exists() {
            return None;
        }
        times.push(start.elapsed());
    }
    Some(median(times).as_secs_f64())
}

fn main() {
    let (n, examples, tokens) = (
        env_usize("GEMSCOPE_BENCH_FEATURES", 1000),
        env_usize("GEMSCOPE_BENCH_EXAMPLES", 20),
        env_usize("GEMSCOPE_BENCH_TOKENS", 128),
    );
    let dashboard = synthetic(n, examples, tokens);
    println!("dashboard: {n} features x {examples} examples x {tokens} tokens");

    let mut times = Vec::new();
    let mut html = String::new();
    for _ in 0..5 {
        let start = Instant::now();
        html = render_single(&dashboard);
        times.push(start.elapsed());
    }
    let render = median(times);
    println!(
        "  render (one file): {:.0} ms, {:.1} MiB ({:.0} bytes per example token)",
        render.as_secs_f64() * 1e3,
        mib(html.len()),
        html.len() as f64 / (n * examples * tokens) as f64
    );
    let start = Instant::now();
    let files = render_directory(&dashboard, SINGLE_FILE_BYTES, PAGE_BYTES);
    let split = start.elapsed();
    let largest = files.iter().map(|(_, h)| h.len()).max().unwrap_or(0);
    println!(
        "  --out DIR: {} files in {:.0} ms, index {:.2} MiB, largest page {:.1} MiB",
        files.len(),
        split.as_secs_f64() * 1e3,
        mib(files[0].1.len()),
        mib(largest)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.html");
    if let Some(keep) = std::env::var_os("GEMSCOPE_BENCH_KEEP") {
        std::fs::write(&keep, &html).unwrap();
    }
    std::fs::write(&file, &html).unwrap();
    let index = format!("file://{}", file.display());
    match chromium_seconds(&index) {
        Some(s) => {
            println!("  chromium, one file, index: {s:.2} s to load, run the script and paint");
            let card = format!("{index}#feature-{}", n / 2);
            if let Some(s) = chromium_seconds(&card) {
                println!("  chromium, one file, #feature-{}: {s:.2} s", n / 2);
            }
            let pages = dir.path().join("pages");
            std::fs::create_dir_all(&pages).unwrap();
            for (name, html) in &files {
                std::fs::write(pages.join(name), html).unwrap();
            }
            let index = format!("file://{}", pages.join("index.html").display());
            if let Some(s) = chromium_seconds(&index) {
                println!("  chromium, --out DIR, index.html: {s:.2} s");
            }
            let baseline = dir.path().join("empty.html");
            std::fs::write(&baseline, "<p>empty</p>").unwrap();
            if let Some(s) = chromium_seconds(&format!("file://{}", baseline.display())) {
                println!("  chromium start-up alone (an empty page): {s:.2} s");
            }
        }
        None => println!("  chromium not found: browser times skipped"),
    }
}
