//! The JSON contract of `gemscope features --layers`: every requested layer's per-prompt report
//! from one forward pass, and the strongest features of each prompt across the layers.

use super::{ModelInfo, PromptReport, SaeInfo};
use crate::model::Site;
use serde::Serialize;

/// One layer's reading of every prompt.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub sae: SaeInfo,
    /// The same per-prompt report `features --layer` gives.
    pub prompts: Vec<PromptReport>,
}

/// A feature of one layer ranked among all the layers' features of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossLayerFeature {
    pub layer: usize,
    pub feature: u32,
    /// Summed over the prompt's non-BOS tokens (the ranking key).
    pub activation_sum: f32,
    pub activation_max: f32,
    pub active_tokens: u32,
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuronpedia_url: Option<String>,
}

/// One prompt's strongest features over all the layers.
#[derive(Debug, Clone, Serialize)]
pub struct PromptRanking {
    pub index: usize,
    pub text: String,
    /// By summed activation, descending; ties by layer, then feature.
    pub top_features: Vec<CrossLayerFeature>,
}

/// The whole output of `gemscope features --layers`.
#[derive(Debug, Clone, Serialize)]
pub struct LayersReport {
    pub schema_version: u32,
    pub gemscope_version: &'static str,
    pub model: ModelInfo,
    pub site: Site,
    pub top_k: usize,
    pub layers: Vec<LayerReport>,
    pub ranking: Vec<PromptRanking>,
}

/// The `top_k` strongest of every layer's aggregate features of prompt `index`: the union of the
/// layers' top-k lists holds the overall top k, since each layer's list is its top k by sum.
pub fn rank_across_layers(layers: &[LayerReport], index: usize, top_k: usize) -> PromptRanking {
    let mut all: Vec<CrossLayerFeature> = layers
        .iter()
        .flat_map(|layer| {
            layer.prompts[index]
                .top_features
                .iter()
                .map(move |f| CrossLayerFeature {
                    layer: layer.layer,
                    feature: f.stats.feature,
                    activation_sum: f.stats.activation_sum,
                    activation_max: f.stats.activation_max,
                    active_tokens: f.stats.active_tokens,
                    label: f.label.clone(),
                    neuronpedia_url: f.neuronpedia_url.clone(),
                })
        })
        .collect();
    all.sort_by(|a, b| {
        b.activation_sum
            .total_cmp(&a.activation_sum)
            .then(a.layer.cmp(&b.layer))
            .then(a.feature.cmp(&b.feature))
    });
    all.truncate(top_k);
    let prompt = &layers[0].prompts[index];
    PromptRanking {
        index: prompt.index,
        text: prompt.text.clone(),
        top_features: all,
    }
}
