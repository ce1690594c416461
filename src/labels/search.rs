//! Ranking cached labels against a query with BM25 (the `bm25` crate: Unicode word splitting,
//! English stop words and stemming, so `dogs` finds `dog`, case-insensitively).

use super::Labels;
use bm25::{Document, Language, SearchEngineBuilder};

/// A feature whose label matches the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub layer: usize,
    pub feature: u32,
    /// The feature's best-matching explanation.
    pub label: String,
    pub score: f32,
}

/// Packs `(layer, feature, explanation)` into one document id.
fn document_id(layer: usize, feature: u32, explanation: usize) -> u64 {
    ((layer as u64) << 40) | ((feature as u64) << 8) | explanation.min(255) as u64
}

/// The `limit` best matches of `query` among the labels of each `(layer, labels)`, best first:
/// each feature once, with the score of its best explanation; ties by layer, then feature.
/// Scores are comparable within one call (the statistics are those of all the labels given).
pub fn rank(query: &str, sets: &[(usize, &Labels)], limit: usize) -> Vec<Match> {
    let mut documents = Vec::new();
    for &(layer, labels) in sets {
        for (feature, texts) in labels.iter() {
            for (k, text) in texts.iter().enumerate().take(256) {
                documents.push(Document::new(document_id(layer, feature, k), text.clone()));
            }
        }
    }
    if documents.is_empty() {
        return Vec::new();
    }
    let engine = SearchEngineBuilder::<u64>::with_documents(Language::English, documents).build();
    // (layer, feature) -> its best match and that explanation's position in the export.
    let mut best: std::collections::BTreeMap<(usize, u32), (Match, u64)> = Default::default();
    for hit in engine.search(query, None) {
        if hit.score <= 0.0 {
            continue;
        }
        let id = hit.document.id;
        let (layer, feature, k) = (
            (id >> 40) as usize,
            ((id >> 8) & 0xffff_ffff) as u32,
            id & 0xff,
        );
        let candidate = Match {
            layer,
            feature,
            label: hit.document.contents,
            score: hit.score,
        };
        let better = |(current, current_k): &(Match, u64)| {
            candidate.score > current.score || (candidate.score == current.score && k < *current_k)
        };
        if best.get(&(layer, feature)).is_none_or(better) {
            best.insert((layer, feature), (candidate, k));
        }
    }
    let mut matches: Vec<Match> = best.into_values().map(|(m, _)| m).collect();
    matches.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.layer.cmp(&b.layer))
            .then(a.feature.cmp(&b.feature))
    });
    matches.truncate(limit);
    matches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Neuronpedia;

    fn labels(sae: &str, items: &[(u32, &str)]) -> Labels {
        let np = Neuronpedia {
            model: "gemma-2-2b".into(),
            sae_id: sae.into(),
        };
        Labels::from_explanations(&np, items.iter().map(|&(f, t)| (f, t.to_string())))
    }

    #[test]
    fn ranks_word_matches_across_layers_case_insensitively() {
        let l20 = labels(
            "20-gemmascope-res-16k",
            &[
                (12082, "references to dogs and puppies"),
                (5, "Dog breeds"),
                (7, "time travel"),
                (9, "cats"),
                (11, "mentions of a dog's owner and the dog"),
            ],
        );
        let l3 = labels(
            "3-gemmascope-res-16k",
            &[(2, "hot dogs and sausages"), (4, "the")],
        );
        let found = rank("Dogs", &[(20, &l20), (3, &l3)], 10);
        let ids: Vec<(usize, u32)> = found.iter().map(|m| (m.layer, m.feature)).collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(!ids.contains(&(20, 7)) && !ids.contains(&(20, 9)));
        // The label that says "dog" twice and the short "Dog breeds" rank above the longer ones.
        assert!(ids[0] == (20, 11) || ids[0] == (20, 5), "{ids:?}");
        assert!(found.windows(2).all(|w| w[0].score >= w[1].score));
        assert_eq!(rank("dogs", &[(20, &l20)], 1).len(), 1);
        assert!(rank("zebra", &[(20, &l20)], 10).is_empty());
        // A stop word alone matches nothing.
        assert!(rank("the", &[(3, &l3)], 10).is_empty());
    }

    #[test]
    fn a_feature_appears_once_with_its_best_explanation() {
        let l = labels(
            "1-gemmascope-res-16k",
            &[(1, "weather"), (1, "rain and rainy weather"), (2, "rain")],
        );
        let found = rank("rain", &[(1, &l)], 10);
        assert_eq!(found.len(), 2);
        assert_eq!(found.iter().filter(|m| m.feature == 1).count(), 1);
    }
}
