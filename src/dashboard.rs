//! Assembles the dashboard's input from the two reports it shows: a feature's corpus examples
//! (the `top-examples` store's JSON contract, `report::examples::FeatureExamples`) and its card
//! (`explain`'s JSON contract, `report::card::FeatureCard`). It reads them by their documented
//! JSON field names, so it works on `serde_json::to_value` of either struct, or on what
//! `explain --json` printed.

use crate::report::dashboard::{
    DashboardFeature, Example, ExampleToken, HistogramBin, LogitEffect, NeighbourFeature,
};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One `DashboardFeature` per entry of `examples` (in that order), each with the card of the
/// same feature from `cards` when there is one. `piece` spells a token id the store left
/// unspelled.
pub fn dashboard_features(
    examples: &[Value],
    cards: &[Value],
    piece: &dyn Fn(u32) -> String,
) -> Result<Vec<DashboardFeature>> {
    examples
        .iter()
        .map(|e| {
            let feature = uint(e, "feature")? as u32;
            let card = cards
                .iter()
                .find(|c| c["feature"].as_u64() == Some(u64::from(feature)));
            dashboard_feature(e, card, piece).with_context(|| format!("feature {feature}"))
        })
        .collect()
}

fn uint(v: &Value, field: &str) -> Result<u64> {
    v[field]
        .as_u64()
        .with_context(|| format!("`{field}` is missing or not a non-negative integer"))
}

fn float(v: &Value, field: &str) -> Result<f64> {
    v[field]
        .as_f64()
        .with_context(|| format!("`{field}` is missing or not a number"))
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a [Value]> {
    Ok(v[field]
        .as_array()
        .with_context(|| format!("`{field}` is missing or not a list"))?)
}

/// One feature's dashboard entry from its store entry and, when known, its card.
pub fn dashboard_feature(
    examples: &Value,
    card: Option<&Value>,
    piece: &dyn Fn(u32) -> String,
) -> Result<DashboardFeature> {
    let mut f = DashboardFeature {
        feature: uint(examples, "feature")? as u32,
        density: Some(float(examples, "density")?),
        max_activation: Some(float(examples, "max_activation")? as f32),
        histogram: histogram(&examples["histogram"]).context("histogram")?,
        ..Default::default()
    };
    for e in array(examples, "examples")? {
        f.examples.push(example(e, piece)?);
    }
    if let Some(card) = card {
        f.labels = card["labels"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        f.neuronpedia_url = card["neuronpedia_url"].as_str().map(String::from);
        for (sign, list) in [
            ("positive", &mut f.logits_positive),
            ("negative", &mut f.logits_negative),
        ] {
            for t in card["logits"][sign]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let id = uint(t, "id")? as u32;
                list.push(LogitEffect {
                    token: t["token"].as_str().map_or_else(|| piece(id), String::from),
                    value: float(t, "value")? as f32,
                });
            }
        }
        for n in card["neighbours"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            f.neighbours.push(NeighbourFeature {
                feature: uint(n, "feature")? as u32,
                cosine: float(n, "cosine")? as f32,
                label: n["label"].as_str().map(String::from),
            });
        }
    }
    Ok(f)
}

/// The store's fixed log10 bins (below the first edge, the bins, at or above the last edge),
/// trimmed to the span from the first to the last non-empty bin.
fn histogram(h: &Value) -> Result<Vec<HistogramBin>> {
    let min = h["log10_min"].as_i64().context("`log10_min`")? as f64;
    let max = h["log10_max"].as_i64().context("`log10_max`")? as f64;
    let per_decade = uint(h, "bins_per_decade")? as f64;
    let counts: Vec<u64> = array(h, "counts")?
        .iter()
        .map(|c| c.as_u64().context("a count is not a non-negative integer"))
        .collect::<Result<_>>()?;
    let bins = ((max - min) * per_decade).round() as usize;
    if counts.len() != bins + 2 || bins == 0 {
        bail!(
            "{} counts for {bins} bins between 10^{min} and 10^{max}",
            counts.len()
        );
    }
    let edge = |k: usize| 10f64.powf(min + k as f64 / per_decade) as f32;
    let all: Vec<HistogramBin> = counts
        .iter()
        .enumerate()
        .map(|(k, &count)| HistogramBin {
            low: if k == 0 { 0.0 } else { edge(k - 1) },
            high: if k == bins + 1 {
                f32::INFINITY
            } else {
                edge(k)
            },
            count,
        })
        .collect();
    let Some(first) = all.iter().position(|b| b.count > 0) else {
        return Ok(Vec::new());
    };
    let last = all.iter().rposition(|b| b.count > 0).unwrap_or(first);
    Ok(all[first..=last].to_vec())
}

fn example(e: &Value, piece: &dyn Fn(u32) -> String) -> Result<Example> {
    let position = uint(e, "position")?;
    let mut tokens = Vec::new();
    let mut max_token = None;
    for (j, t) in array(e, "tokens")?.iter().enumerate() {
        if t["position"].as_u64() == Some(position) {
            max_token = Some(j);
        }
        let id = uint(t, "id")? as u32;
        tokens.push(ExampleToken {
            text: t["text"].as_str().map_or_else(|| piece(id), String::from),
            activation: float(t, "activation")? as f32,
        });
    }
    let document = uint(e, "document")?;
    let max_token = max_token.with_context(|| {
        format!("document {document}: no token of the window is at position {position}")
    })?;
    Ok(Example {
        document,
        tokens,
        max_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store_entry() -> Value {
        let mut counts = vec![0u64; 82];
        counts[41] = 3; // [10^0, 10^0.1)
        counts[43] = 1; // [10^0.2, 10^0.3)
        json!({
            "feature": 7, "tokens": 100, "active": 4, "density": 0.04, "max_activation": 1.9,
            "histogram": {"log10_min": -4, "log10_max": 4, "bins_per_decade": 10, "counts": counts},
            "examples": [{"document": 12, "position": 2, "activation": 1.9, "tokens": [
                {"position": 1, "id": 5, "activation": 0.0},
                {"position": 2, "id": 6, "text": "▁dog", "activation": 1.9}
            ]}]
        })
    }

    #[test]
    fn store_and_card_fields_land_where_the_card_shows_them() {
        let card = json!({
            "feature": 7, "label": "dogs", "labels": ["dogs", "pets"],
            "neuronpedia_url": "https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/7",
            "logits": {"positive": [{"id": 9, "token": "▁bark", "value": 0.5}],
                       "negative": [{"id": 3, "token": "▁cat", "value": -0.25}]},
            "neighbours": [{"feature": 8, "cosine": 0.5, "label": null}]
        });
        let piece = |id: u32| format!("<{id}>");
        let f = &dashboard_features(&[store_entry()], &[card], &piece).unwrap()[0];
        assert_eq!(
            (f.feature, f.density, f.max_activation),
            (7, Some(0.04), Some(1.9))
        );
        assert_eq!(f.labels, ["dogs", "pets"]);
        assert_eq!(f.logits_positive[0].token, "▁bark");
        assert_eq!(f.logits_negative[0].value, -0.25);
        assert_eq!(f.neighbours[0].feature, 8);
        // Trimmed to the non-empty span: bins 41, 42 (empty) and 43.
        assert_eq!(f.histogram.len(), 3);
        assert_eq!(f.histogram[0].low, 1.0);
        assert!((f.histogram[2].high - 10f32.powf(0.3)).abs() < 1e-6);
        assert_eq!(
            f.histogram.iter().map(|b| b.count).collect::<Vec<_>>(),
            [3, 0, 1]
        );
        let e = &f.examples[0];
        assert_eq!((e.document, e.max_token), (12, 1));
        assert_eq!(e.tokens[0].text, "<5>", "spelled from the vocabulary");
        assert_eq!(e.activation(), 1.9);
    }

    #[test]
    fn a_store_entry_without_a_card_or_with_a_bad_window_is_handled() {
        let piece = |id: u32| id.to_string();
        let f = dashboard_feature(&store_entry(), None, &piece).unwrap();
        assert!(f.labels.is_empty() && f.neighbours.is_empty());
        let mut bad = store_entry();
        bad["examples"][0]["position"] = json!(40);
        let err = dashboard_feature(&bad, None, &piece).unwrap_err();
        assert!(format!("{err:#}").contains("no token of the window is at position 40"));
    }
}
