//! The JSON contract of one feature's corpus examples (`top-examples` stores, `explain --examples`).
//!
//! Fields marked † in the README are a contract: `examples[k].document`, `.position`,
//! `.activation`, `.tokens[j].id`, `.tokens[j].activation`, `density`, `tokens`, `active`,
//! `max_activation`. The store on disk keeps the same numbers in a more compact layout
//! (`corpus::store`); [`crate::corpus::Store::feature`] turns a stored line into this struct.

use serde::{Deserialize, Serialize};

/// The bins of the log10 activation histogram, fixed so that shards and merges add exactly.
///
/// `counts[0]` holds activations below `10^LOG10_MIN`, `counts[k]` for `k` in `1..=BINS` holds
/// `10^(LOG10_MIN + (k-1)/BINS_PER_DECADE) <= a < 10^(LOG10_MIN + k/BINS_PER_DECADE)`, and the
/// last count holds activations of `10^LOG10_MAX` and more. Only active tokens (`a > 0`) count.
pub const HISTOGRAM_LOG10_MIN: i32 = -4;
pub const HISTOGRAM_LOG10_MAX: i32 = 4;
pub const HISTOGRAM_BINS_PER_DECADE: usize = 10;
/// Bins between the two edges; the histogram has two more counts (below and above).
pub const HISTOGRAM_BINS: usize =
    (HISTOGRAM_LOG10_MAX - HISTOGRAM_LOG10_MIN) as usize * HISTOGRAM_BINS_PER_DECADE;

/// A feature's top examples over a corpus and its activation statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureExamples {
    pub feature: u32,
    /// † Non-BOS tokens seen in the corpus.
    pub tokens: u64,
    /// † Of those, how many had the feature active (> 0).
    pub active: u64,
    /// † `active / tokens` (0 when no token was seen).
    pub density: f64,
    /// † The largest activation over all non-BOS tokens (0 when never active).
    pub max_activation: f32,
    pub histogram: Histogram,
    /// † The top documents, activation descending, then document index ascending.
    pub examples: Vec<Example>,
}

/// Counts of log10(activation) over the fixed bins (see [`HISTOGRAM_LOG10_MIN`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub log10_min: i32,
    pub log10_max: i32,
    pub bins_per_decade: usize,
    /// `[below 10^log10_min, the bins..., at or above 10^log10_max]`.
    pub counts: Vec<u64>,
}

/// One document, at its strongest token for the feature, with a window of context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// † The document's index in the corpus: 0-based line of a text or JSONL file, row of a
    /// Parquet file (skipped documents keep their index).
    pub document: u64,
    /// † Token position of the maximum (BOS is position 0 and never an example).
    pub position: u32,
    /// † The feature's activation there.
    pub activation: f32,
    /// † The window of context, in order: `--context` tokens either side of `position` (the
    /// whole truncated document without BOS by default).
    pub tokens: Vec<ExampleToken>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleToken {
    pub position: u32,
    /// † Token id.
    pub id: u32,
    /// The vocabulary's spelling (`▁Golden`), when a tokenizer was at hand to spell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// † The feature's activation at this token.
    pub activation: f32,
}

impl FeatureExamples {
    /// Fills every token's `text` from the tokenizer's vocabulary (`PromptTokenizer::piece`).
    pub fn spell(&mut self, piece: impl Fn(u32) -> String) {
        for token in self.examples.iter_mut().flat_map(|e| e.tokens.iter_mut()) {
            token.text = Some(piece(token.id));
        }
    }
}
