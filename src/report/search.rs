//! The JSON contract of `gemscope search`: features whose labels match a query, best first.

use serde::Serialize;

/// One matching feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResult {
    /// The SAE's layer.
    pub layer: usize,
    pub feature: u32,
    /// The explanation that matched.
    pub label: String,
    /// Local search: the BM25 score of the label; `--online`: Neuronpedia's cosine similarity.
    pub score: f64,
    /// The feature's Neuronpedia page.
    pub neuronpedia_url: String,
}

/// The whole output of `gemscope search --json`.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub query: String,
    /// The Neuronpedia model id searched (`gemma-2-2b`).
    pub model_id: String,
    /// The Neuronpedia SAE ids searched.
    pub sae_ids: Vec<String>,
    /// `local` (BM25 over the cached labels) or `online` (Neuronpedia's semantic search).
    pub method: &'static str,
    pub results: Vec<SearchResult>,
}
