//! The bounded top-examples store: per feature the top-N documents, token and active counts, the
//! largest activation and a fixed-bin histogram; its JSONL file format, written byte for byte the
//! same whatever the sharding, and read back exactly.
//!
//! The file: line 1 is the header ([`StoreHeader`]), then one line per feature
//! ([`StoredFeature`]), features ascending. Floats are written as the shortest text that reads
//! back to the same f32 (serde_json's ryu), so reading and writing again gives the same bytes.
//! In Python: `meta, *features = map(json.loads, open(path))`.

use crate::report::examples::{
    Example, ExampleToken, FeatureExamples, Histogram, HISTOGRAM_BINS, HISTOGRAM_BINS_PER_DECADE,
    HISTOGRAM_LOG10_MAX, HISTOGRAM_LOG10_MIN,
};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The `format` value of line 1, so a stray JSONL file is not taken for a store.
pub const STORE_FORMAT: &str = "gemscope-examples";
/// Bumped whenever the file layout changes.
pub const STORE_VERSION: u32 = 1;
/// Counts per histogram: below the first edge, the bins, at or above the last edge.
pub const HISTOGRAM_COUNTS: usize = HISTOGRAM_BINS + 2;

/// Everything that must be equal for two runs' stores to be merged, or for a checkpoint to be
/// resumed: what was run, on what, with which options. The corpus content is checked apart
/// ([`CorpusInfo`]), since a checkpoint knows only the part it has read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// The model as named on the command line, its hub commit, and a hash of its configuration.
    pub model: String,
    pub model_revision: Option<String>,
    pub model_config_sha256: String,
    /// The SAE as resolved (`repo/path` or the local file) and the SHA-256 of its file.
    pub sae: String,
    pub sae_sha256: String,
    pub d_sae: usize,
    pub layer: usize,
    pub site: String,
    pub dtype: String,
    pub device: String,
    /// `text`, `jsonl` or `parquet`, and the JSONL field or Parquet column read.
    pub corpus_format: String,
    pub text_field: Option<String>,
    pub limit: Option<u64>,
    pub top: usize,
    pub max_tokens: usize,
    pub context: Option<usize>,
    pub batch_size: usize,
    /// `None` for every feature of the SAE.
    pub features: Option<Vec<u32>>,
}

/// The corpus a finished store was computed on: records read (lines or rows, skipped ones
/// included, up to `--limit`) and the SHA-256 of their content (see `reader::RecordHasher`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusInfo {
    pub records: u64,
    pub sha256: String,
}

/// Which shards of `count` a partial store holds; a complete store has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSet {
    pub count: u32,
    pub parts: Vec<u32>,
}

/// Where a checkpoint stopped: every batch before `next_batch` is in it, and the first `records`
/// records of the corpus hash to `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub next_batch: u64,
    pub records: u64,
    pub sha256: String,
}

/// Line 1 of a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreHeader {
    pub format: String,
    pub version: u32,
    pub identity: RunIdentity,
    /// `None` only in a checkpoint.
    pub corpus: Option<CorpusInfo>,
    /// `None` for a complete store (unsharded, or every shard merged).
    pub shards: Option<ShardSet>,
    /// Documents run through the model, and their non-BOS tokens.
    pub documents: u64,
    pub tokens: u64,
    /// Documents skipped, by reason (`empty`, `not_utf8`, `no_text_field`, `null`, `tokenizer`).
    pub skipped: BTreeMap<String, u64>,
    /// The histogram's fixed bins (the same for every store of this version).
    pub histogram: HistogramBins,
    /// Set only in a checkpoint.
    pub progress: Option<Progress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramBins {
    pub log10_min: i32,
    pub log10_max: i32,
    pub bins_per_decade: usize,
}

impl HistogramBins {
    pub fn fixed() -> Self {
        Self {
            log10_min: HISTOGRAM_LOG10_MIN,
            log10_max: HISTOGRAM_LOG10_MAX,
            bins_per_decade: HISTOGRAM_BINS_PER_DECADE,
        }
    }
}

/// The lower edge of every histogram bin, `10^(LOG10_MIN + k/BINS_PER_DECADE)` for `k` in
/// `0..=BINS` (the last is `10^LOG10_MAX`), computed once.
fn histogram_edges() -> &'static [f64] {
    static EDGES: OnceLock<Vec<f64>> = OnceLock::new();
    EDGES.get_or_init(|| {
        (0..=HISTOGRAM_BINS)
            .map(|k| {
                10f64.powf(HISTOGRAM_LOG10_MIN as f64 + k as f64 / HISTOGRAM_BINS_PER_DECADE as f64)
            })
            .collect()
    })
}

/// The histogram count an activation `a > 0` falls in (see [`HISTOGRAM_LOG10_MIN`]).
pub fn histogram_bin(a: f32) -> usize {
    // The number of edges <= a: 0 below the first edge, HISTOGRAM_BINS + 1 at or above the last.
    // log10 guesses it (the hot loop sees every active token); the edges then decide exactly.
    let edges = histogram_edges();
    let a = a as f64;
    let guess = (a.log10() - HISTOGRAM_LOG10_MIN as f64) * HISTOGRAM_BINS_PER_DECADE as f64;
    let mut k = (guess.floor() + 1.0).clamp(0.0, edges.len() as f64) as usize;
    while k > 0 && edges[k - 1] > a {
        k -= 1;
    }
    while k < edges.len() && edges[k] <= a {
        k += 1;
    }
    k
}

/// One document's strongest token for a feature, with the window of context around it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub activation: f32,
    pub document: u64,
    pub position: u32,
    /// First position of the window; the window's activations follow.
    pub start: u32,
    pub activations: Vec<f32>,
    /// Token ids from position `ids_start` on, shared by every feature that keeps the document.
    ids: Arc<[u32]>,
    ids_start: u32,
}

impl Candidate {
    /// The token ids of the window.
    pub fn window_ids(&self) -> &[u32] {
        let from = (self.start - self.ids_start) as usize;
        &self.ids[from..from + self.activations.len()]
    }

    /// The store's order: activation descending, then document ascending.
    fn ranks_before(&self, other: &Candidate) -> bool {
        self.activation > other.activation
            || (self.activation == other.activation && self.document < other.document)
    }
}

/// The best `capacity` candidates of a feature, kept in the store's order.
#[derive(Debug, Clone, Default)]
pub struct TopN {
    items: Vec<Candidate>,
}

impl TopN {
    /// Whether a candidate of this activation and document would enter a list of `capacity`.
    fn admits(&self, capacity: usize, activation: f32, document: u64) -> bool {
        self.items.len() < capacity
            || self.items.last().is_some_and(|last| {
                activation > last.activation
                    || (activation == last.activation && document < last.document)
            })
    }

    fn insert(&mut self, capacity: usize, candidate: Candidate) {
        let at = self.items.partition_point(|c| c.ranks_before(&candidate));
        self.items.insert(at, candidate);
        self.items.truncate(capacity);
    }

    pub fn items(&self) -> &[Candidate] {
        &self.items
    }
}

/// The store in memory: the header's counts and, per selected feature (a column of the encoded
/// activations), its statistics and top list.
#[derive(Debug, Clone)]
pub struct Store {
    pub header: StoreHeader,
    /// The feature id of each column.
    pub features: Vec<u32>,
    active: Vec<u64>,
    max_activation: Vec<f32>,
    /// `[features, HISTOGRAM_COUNTS]`, row-major.
    histogram: Vec<u64>,
    top: Vec<TopN>,
}

impl Store {
    /// An empty store for the given run and features.
    pub fn new(identity: RunIdentity, features: Vec<u32>) -> Self {
        let n = features.len();
        Self {
            header: StoreHeader {
                format: STORE_FORMAT.to_string(),
                version: STORE_VERSION,
                identity,
                corpus: None,
                shards: None,
                documents: 0,
                tokens: 0,
                skipped: BTreeMap::new(),
                histogram: HistogramBins::fixed(),
                progress: None,
            },
            features,
            active: vec![0; n],
            max_activation: vec![0.0; n],
            histogram: vec![0; n * HISTOGRAM_COUNTS],
            top: vec![TopN::default(); n],
        }
    }

    /// Memory the store can reach, in bytes: every feature's full top list with windows of
    /// `window` tokens, each example holding its own token ids (the upper bound; documents shared
    /// between features share their ids).
    pub fn bound_bytes(features: usize, top: usize, window: usize) -> u64 {
        let per_example = std::mem::size_of::<Candidate>() + window * 8 + 32;
        let per_feature = HISTOGRAM_COUNTS * 8 + 8 + 4 + std::mem::size_of::<TopN>();
        (features * (per_feature + top * per_example)) as u64
    }

    /// Counts a skipped document under `reason`.
    pub fn skip(&mut self, reason: &str) {
        *self.header.skipped.entry(reason.to_string()).or_insert(0) += 1;
    }

    /// Adds one document: `ids` its tokens (BOS first) and `f` its encoded activations
    /// `[ids.len(), features]` row-major, column `j` being feature `self.features[j]`.
    /// BOS (row 0) is left out of every statistic; within the document the feature's first
    /// (lowest) position of its largest activation is its candidate.
    pub fn add_document(&mut self, document: u64, ids: &Arc<[u32]>, f: &[f32]) {
        let width = self.features.len();
        let len = ids.len();
        debug_assert_eq!(f.len(), len * width);
        let capacity = self.header.identity.top;
        let context = self.header.identity.context;
        self.header.documents += 1;
        self.header.tokens += len.saturating_sub(1) as u64;
        let mut best = vec![0f32; width];
        let mut best_position = vec![0u32; width];
        for position in 1..len {
            let row = &f[position * width..(position + 1) * width];
            for (j, &a) in row.iter().enumerate() {
                if a > 0.0 {
                    self.active[j] += 1;
                    self.histogram[j * HISTOGRAM_COUNTS + histogram_bin(a)] += 1;
                    if a > best[j] {
                        best[j] = a;
                        best_position[j] = position as u32;
                    }
                }
            }
        }
        // The features whose top list this document enters, with their windows.
        let mut entering: Vec<(usize, usize, usize, Vec<f32>)> = Vec::new();
        for j in 0..width {
            let activation = best[j];
            if activation <= 0.0 {
                continue;
            }
            if activation > self.max_activation[j] {
                self.max_activation[j] = activation;
            }
            if !self.top[j].admits(capacity, activation, document) {
                continue;
            }
            let position = best_position[j] as usize;
            let (start, end) = match context {
                Some(c) => (
                    position.saturating_sub(c).max(1),
                    (position + c + 1).min(len),
                ),
                None => (1, len),
            };
            entering.push((j, start, end, Vec::with_capacity(end - start)));
        }
        // Windows are gathered row by row: reading column by column would miss the cache at
        // every token of a wide SAE.
        for position in 1..len {
            let row = &f[position * width..(position + 1) * width];
            for (j, start, end, window) in entering.iter_mut() {
                if (*start..*end).contains(&position) {
                    window.push(row[*j]);
                }
            }
        }
        for (j, start, _, activations) in entering {
            self.top[j].insert(
                capacity,
                Candidate {
                    activation: best[j],
                    document,
                    position: best_position[j],
                    start: start as u32,
                    activations,
                    ids: Arc::clone(ids),
                    ids_start: 0,
                },
            );
        }
    }

    /// Column of `feature`, if the store holds it.
    fn column(&self, feature: u32) -> Option<usize> {
        self.features.binary_search(&feature).ok()
    }

    /// Feature `feature`'s examples and statistics in the report's shape (token text left empty:
    /// see [`FeatureExamples::spell`]).
    pub fn feature(&self, feature: u32) -> Option<FeatureExamples> {
        let j = self.column(feature)?;
        Some(self.feature_examples(j))
    }

    fn feature_examples(&self, j: usize) -> FeatureExamples {
        let tokens = self.header.tokens;
        FeatureExamples {
            feature: self.features[j],
            tokens,
            active: self.active[j],
            density: density(self.active[j], tokens),
            max_activation: self.max_activation[j],
            histogram: Histogram {
                log10_min: HISTOGRAM_LOG10_MIN,
                log10_max: HISTOGRAM_LOG10_MAX,
                bins_per_decade: HISTOGRAM_BINS_PER_DECADE,
                counts: self.histogram_of(j).to_vec(),
            },
            examples: self.top[j]
                .items()
                .iter()
                .map(|c| Example {
                    document: c.document,
                    position: c.position,
                    activation: c.activation,
                    tokens: c
                        .window_ids()
                        .iter()
                        .zip(&c.activations)
                        .enumerate()
                        .map(|(i, (&id, &activation))| ExampleToken {
                            position: c.start + i as u32,
                            id,
                            text: None,
                            activation,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn histogram_of(&self, j: usize) -> &[u64] {
        &self.histogram[j * HISTOGRAM_COUNTS..(j + 1) * HISTOGRAM_COUNTS]
    }

    /// Adds `other`'s counts and candidates (another shard of the same run) into this store.
    /// Exact: counts add, maxima and top lists combine in the store's total order.
    pub fn absorb(&mut self, other: Store) -> Result<()> {
        ensure!(
            self.features == other.features,
            "the stores hold different features"
        );
        self.header.documents += other.header.documents;
        self.header.tokens += other.header.tokens;
        for (reason, n) in other.header.skipped {
            *self.header.skipped.entry(reason).or_insert(0) += n;
        }
        let capacity = self.header.identity.top;
        for (mine, theirs) in self.histogram.iter_mut().zip(&other.histogram) {
            *mine += theirs;
        }
        for (j, top) in other.top.into_iter().enumerate() {
            self.active[j] += other.active[j];
            self.max_activation[j] = self.max_activation[j].max(other.max_activation[j]);
            for candidate in top.items {
                if self.top[j].admits(capacity, candidate.activation, candidate.document) {
                    self.top[j].insert(capacity, candidate);
                }
            }
        }
        Ok(())
    }

    /// Writes the store: the header line, then one line per feature.
    pub fn write(&self, w: &mut dyn Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, &self.header)?;
        writeln!(w)?;
        for j in 0..self.features.len() {
            let line = StoredFeatureRef {
                feature: self.features[j],
                tokens: self.header.tokens,
                active: self.active[j],
                density: density(self.active[j], self.header.tokens),
                max_activation: self.max_activation[j],
                histogram: self.histogram_of(j),
                examples: self.top[j]
                    .items()
                    .iter()
                    .map(|c| StoredExampleRef {
                        document: c.document,
                        position: c.position,
                        activation: c.activation,
                        start: c.start,
                        ids: c.window_ids(),
                        activations: &c.activations,
                    })
                    .collect(),
            };
            serde_json::to_writer(&mut *w, &line)?;
            writeln!(w)?;
        }
        Ok(())
    }

    /// Writes the store to `path` atomically (a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::system::write_file_atomically(path, |w| self.write(w))
    }

    /// Reads a whole store (or checkpoint) back, checking every line.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open store {}", path.display()))?;
        Self::read(std::io::BufReader::new(file))
            .with_context(|| format!("{} is not a readable gemscope store", path.display()))
    }

    /// Reads a store from its lines.
    pub fn read(reader: impl BufRead) -> Result<Self> {
        let mut lines = reader.lines();
        let header = read_header(lines.next())?;
        let mut features = Vec::new();
        let mut stored = Vec::new();
        for (i, line) in lines.enumerate() {
            let line = line.with_context(|| format!("cannot read line {}", i + 2))?;
            let feature: StoredFeature = serde_json::from_str(&line)
                .with_context(|| format!("line {} is not a feature record", i + 2))?;
            ensure!(
                features.last().is_none_or(|&last| last < feature.feature),
                "line {}: feature {} is out of order",
                i + 2,
                feature.feature
            );
            ensure!(
                feature.histogram.len() == HISTOGRAM_COUNTS,
                "line {}: the histogram has {} counts, expected {HISTOGRAM_COUNTS}",
                i + 2,
                feature.histogram.len()
            );
            features.push(feature.feature);
            stored.push(feature);
        }
        let identity = header.identity.clone();
        let mut store = Store::new(identity, features);
        store.header = header;
        for (j, feature) in stored.into_iter().enumerate() {
            ensure!(
                feature.tokens == store.header.tokens,
                "feature {} counts {} tokens, the header {}",
                feature.feature,
                feature.tokens,
                store.header.tokens
            );
            store.active[j] = feature.active;
            store.max_activation[j] = feature.max_activation;
            store.histogram[j * HISTOGRAM_COUNTS..(j + 1) * HISTOGRAM_COUNTS]
                .copy_from_slice(&feature.histogram);
            let capacity = store.header.identity.top;
            ensure!(
                feature.examples.len() <= capacity,
                "feature {} has {} examples, more than --top {capacity}",
                feature.feature,
                feature.examples.len()
            );
            for e in feature.examples {
                ensure!(
                    e.ids.len() == e.activations.len()
                        && e.start <= e.position
                        && (e.position - e.start) < e.ids.len() as u32,
                    "feature {}, document {}: the window does not hold the example's position",
                    feature.feature,
                    e.document
                );
                let candidate = Candidate {
                    activation: e.activation,
                    document: e.document,
                    position: e.position,
                    start: e.start,
                    activations: e.activations,
                    ids: e.ids.into(),
                    ids_start: e.start,
                };
                ensure!(
                    store.top[j]
                        .items
                        .last()
                        .is_none_or(|last| last.ranks_before(&candidate)),
                    "feature {}: examples are out of order",
                    feature.feature
                );
                store.top[j].items.push(candidate);
            }
        }
        Ok(store)
    }
}

fn read_header(line: Option<std::io::Result<String>>) -> Result<StoreHeader> {
    let Some(line) = line else {
        bail!("the file is empty");
    };
    let line = line.context("cannot read line 1")?;
    let value: serde_json::Value =
        serde_json::from_str(&line).context("line 1 is not a JSON header")?;
    ensure!(
        value.get("format").and_then(|f| f.as_str()) == Some(STORE_FORMAT),
        "line 1 is not a gemscope-examples header"
    );
    let version = value.get("version").and_then(|v| v.as_u64());
    ensure!(
        version == Some(STORE_VERSION as u64),
        "the store has version {version:?}; this gemscope reads version {STORE_VERSION}"
    );
    serde_json::from_value(value).context("the header on line 1 is incomplete")
}

/// Reads only the header line of a store.
pub fn read_store_header(path: &Path) -> Result<StoreHeader> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open store {}", path.display()))?;
    read_header(std::io::BufReader::new(file).lines().next())
        .with_context(|| format!("{} is not a readable gemscope store", path.display()))
}

/// Feature `feature` of the store at `path`, parsing only its line (a store of a 16k-wide SAE
/// is hundreds of MB); `None` when the store does not hold it.
pub fn read_feature(path: &Path, feature: u32) -> Result<Option<FeatureExamples>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open store {}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header = read_header(lines.next())
        .with_context(|| format!("{} is not a readable gemscope store", path.display()))?;
    let prefix = format!("{{\"feature\":{feature},");
    for (i, line) in lines.enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if !line.starts_with(&prefix) {
            continue;
        }
        let store = Store::read(std::io::Cursor::new(format!(
            "{}\n{line}\n",
            serde_json::to_string(&header)?
        )))
        .with_context(|| format!("{}: line {}", path.display(), i + 2))?;
        return Ok(store.feature(feature));
    }
    Ok(None)
}

fn density(active: u64, tokens: u64) -> f64 {
    if tokens == 0 {
        0.0
    } else {
        active as f64 / tokens as f64
    }
}

/// One feature's line of a store, as written.
#[derive(Serialize)]
struct StoredFeatureRef<'a> {
    feature: u32,
    tokens: u64,
    active: u64,
    density: f64,
    max_activation: f32,
    histogram: &'a [u64],
    examples: Vec<StoredExampleRef<'a>>,
}

#[derive(Serialize)]
struct StoredExampleRef<'a> {
    document: u64,
    position: u32,
    activation: f32,
    start: u32,
    ids: &'a [u32],
    activations: &'a [f32],
}

/// One feature's line of a store, as read.
#[derive(Debug, Deserialize)]
struct StoredFeature {
    feature: u32,
    tokens: u64,
    active: u64,
    max_activation: f32,
    histogram: Vec<u64>,
    examples: Vec<StoredExample>,
}

#[derive(Debug, Deserialize)]
struct StoredExample {
    document: u64,
    position: u32,
    activation: f32,
    start: u32,
    ids: Vec<u32>,
    activations: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(top: usize, context: Option<usize>) -> RunIdentity {
        RunIdentity {
            model: "m".into(),
            model_revision: None,
            model_config_sha256: "c".into(),
            sae: "s".into(),
            sae_sha256: "h".into(),
            d_sae: 2,
            layer: 1,
            site: "res".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            corpus_format: "text".into(),
            text_field: None,
            limit: None,
            top,
            max_tokens: 128,
            context,
            batch_size: 2,
            features: None,
        }
    }

    #[test]
    fn a_16k_store_with_top_20_stays_under_the_documented_bound() {
        // The README's figure: 16k features, --top 20, 128-token windows.
        let bytes = Store::bound_bytes(16384, 20, 128);
        assert!(bytes < 380_000_000, "{bytes}");
    }

    #[test]
    fn histogram_bin_counts_the_edges_at_or_below() {
        let edges = histogram_edges();
        let mut a = 1e-6f32;
        while a < 1e6 {
            for v in [
                a,
                f32::from_bits(a.to_bits() + 1),
                f32::from_bits(a.to_bits() - 1),
            ] {
                let exact = edges.partition_point(|&e| e <= v as f64);
                assert_eq!(histogram_bin(v), exact, "{v}");
            }
            a *= 1.0123;
        }
        for &edge in edges {
            for v in [edge as f32, f32::from_bits((edge as f32).to_bits() + 1)] {
                assert_eq!(histogram_bin(v), edges.partition_point(|&e| e <= v as f64));
            }
        }
    }

    #[test]
    fn histogram_bins_are_the_documented_edges() {
        assert_eq!(histogram_bin(1e-5), 0);
        // The f32 nearest 1e-4 lies just below it: edges compare exactly, in f64.
        assert_eq!(histogram_bin(1e-4), 0);
        assert_eq!(histogram_bin(1.0001e-4), 1);
        assert_eq!(histogram_bin(1.0), 41);
        assert_eq!(histogram_bin(1.2), 41);
        assert_eq!(histogram_bin(1.3), 42);
        assert_eq!(histogram_bin(9999.0), HISTOGRAM_BINS);
        assert_eq!(histogram_bin(1e4), HISTOGRAM_BINS + 1);
        assert_eq!(histogram_bin(f32::MAX), HISTOGRAM_BINS + 1);
    }

    #[test]
    fn top_list_orders_by_activation_then_document_and_lowest_position_wins() {
        let mut store = Store::new(identity(2, Some(1)), vec![0, 1]);
        let ids: Arc<[u32]> = vec![2, 10, 11, 12, 13].into();
        // Feature 0 peaks at 3.0 twice (positions 2 and 4): position 2 wins; BOS's 9.0 is ignored.
        let f = [9., 0., 1., 0., 3., 0., 0., 0.5, 3., 0.];
        store.add_document(0, &ids, &f);
        let g = [0., 0., 3., 0., 0., 0., 0., 0., 0., 0.];
        store.add_document(1, &ids, &g);
        let h = [0., 0., 4., 0., 0., 0., 0., 0., 0., 0.];
        store.add_document(2, &ids, &h);
        let f0 = store.feature(0).unwrap();
        let order: Vec<(u64, u32, f32)> = f0
            .examples
            .iter()
            .map(|e| (e.document, e.position, e.activation))
            .collect();
        // 4.0 (doc 2) first, then the tie at 3.0 goes to the lower document (0 over 1).
        assert_eq!(order, vec![(2, 1, 4.0), (0, 2, 3.0)]);
        let window: Vec<(u32, u32, f32)> = f0.examples[1]
            .tokens
            .iter()
            .map(|t| (t.position, t.id, t.activation))
            .collect();
        assert_eq!(window, vec![(1, 10, 1.0), (2, 11, 3.0), (3, 12, 0.0)]);
        assert_eq!((f0.tokens, f0.active, f0.max_activation), (12, 5, 4.0));
        let f1 = store.feature(1).unwrap();
        assert_eq!((f1.active, f1.examples.len()), (1, 1));
        assert_eq!(f1.examples[0].position, 3);
    }

    #[test]
    fn written_store_reads_back_to_the_same_bytes_and_merges_exactly() {
        let ids: Arc<[u32]> = vec![2, 5, 6, 7].into();
        let docs: Vec<Vec<f32>> = vec![
            vec![0., 0., 0.25, 1.5, 3.0, 0., 0.1, 0.7],
            vec![0., 0., 2.0, 0.0, 0.0, 1e-7, 3.0, 2e5],
            vec![0., 0., 0.125, 0.0, 3.0, 0.0, 0.0, 0.0],
        ];
        let mut whole = Store::new(identity(2, None), vec![0, 1]);
        let mut even = Store::new(identity(2, None), vec![0, 1]);
        let mut odd = Store::new(identity(2, None), vec![0, 1]);
        for (d, f) in docs.iter().enumerate() {
            whole.add_document(d as u64, &ids, f);
            let part = if d % 2 == 0 { &mut even } else { &mut odd };
            part.add_document(d as u64, &ids, f);
        }
        let bytes = |s: &Store| {
            let mut out = Vec::new();
            s.write(&mut out).unwrap();
            out
        };
        let written = bytes(&whole);
        let reread = Store::read(&written[..]).unwrap();
        assert_eq!(bytes(&reread), written);
        odd.absorb(even).unwrap();
        assert_eq!(bytes(&odd), written);
        let f1 = whole.feature(1).unwrap();
        assert_eq!(f1.histogram.counts[0], 1);
        assert_eq!(f1.histogram.counts[HISTOGRAM_COUNTS - 1], 1);
    }
}
