//! The input of the HTML feature dashboard: plain values a store of top examples and the feature
//! cards fill in, and that tests and benchmarks build by hand.

use serde::Serialize;

/// A whole dashboard: what it shows and the features, in the order the index lists them first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dashboard {
    /// The page title, e.g. `layer 1 res · sae_res_L1.npz`.
    pub title: String,
    /// Facts shown under the title as `name value` pairs (model, SAE, store, corpus tokens).
    pub facts: Vec<(String, String)>,
    pub features: Vec<DashboardFeature>,
}

/// Everything one feature's card shows. Empty lists and `None` are left out of the card.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DashboardFeature {
    pub feature: u32,
    /// Its explanations (Neuronpedia labels), the first the one shown in the index.
    pub labels: Vec<String>,
    pub neuronpedia_url: Option<String>,
    /// Fraction of the corpus's tokens where it fired (`active / tokens`).
    pub density: Option<f64>,
    /// The largest activation seen; tokens are shaded relative to it.
    pub max_activation: Option<f32>,
    /// Activation histogram, bins in increasing order (log-spaced in the store).
    pub histogram: Vec<HistogramBin>,
    /// Tokens its decoder direction promotes, largest first.
    pub logits_positive: Vec<LogitEffect>,
    /// Tokens it suppresses, most negative first.
    pub logits_negative: Vec<LogitEffect>,
    /// Features with the most similar decoder rows.
    pub neighbours: Vec<NeighbourFeature>,
    /// The top activating examples, strongest first.
    pub examples: Vec<Example>,
    /// SAEDashboard's quantile groups: examples from lower activation ranges.
    pub quantiles: Vec<QuantileGroup>,
}

/// Activations in `[low, high)` seen `count` times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HistogramBin {
    pub low: f32,
    pub high: f32,
    pub count: u64,
}

/// One token and the feature's direct effect on its logit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogitEffect {
    /// The piece as the vocabulary spells it (`▁` for a leading space).
    pub token: String,
    pub value: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeighbourFeature {
    pub feature: u32,
    pub cosine: f32,
    pub label: Option<String>,
}

/// A window of a corpus document around the feature's strongest token there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// The document's index in the corpus.
    pub document: u64,
    /// The window's tokens with the feature's activation at each.
    pub tokens: Vec<ExampleToken>,
    /// Index into `tokens` of the strongest token (the one the example was chosen for).
    pub max_token: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExampleToken {
    /// The piece as the vocabulary spells it.
    pub text: String,
    pub activation: f32,
}

/// Examples whose activation lies in `[low, high)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantileGroup {
    pub low: f32,
    pub high: f32,
    pub examples: Vec<Example>,
}

impl Example {
    /// The activation the example was chosen for.
    pub fn activation(&self) -> f32 {
        self.tokens
            .get(self.max_token)
            .map_or(0.0, |t| t.activation)
    }
}

impl DashboardFeature {
    /// The first label, if any.
    pub fn label(&self) -> Option<&str> {
        self.labels.first().map(String::as_str)
    }

    /// What the shading is relative to: the max activation, else the strongest example's.
    pub fn shade_max(&self) -> f32 {
        self.max_activation.unwrap_or_else(|| {
            self.examples
                .iter()
                .chain(self.quantiles.iter().flat_map(|q| &q.examples))
                .map(Example::activation)
                .fold(0.0, f32::max)
        })
    }
}
