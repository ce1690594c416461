//! `gemscope search`: features whose Neuronpedia labels match a concept, from the label cache
//! (BM25) or from Neuronpedia's own semantic search (`--online`).

use super::labels::{client as neuronpedia_client, label_sets};
use crate::cli::SearchArgs;
use crate::labels::{self, cache, search};
use crate::output;
use crate::report::search::{SearchReport, SearchResult};
use crate::report::SCHEMA_VERSION;
use crate::ui::Ui;
use anyhow::{bail, ensure, Result};
use std::io::Write;
use std::process::ExitCode;

pub fn run(args: SearchArgs, ui: Ui) -> Result<ExitCode> {
    let query = args.query.trim().to_string();
    ensure!(
        !query.is_empty(),
        "the search query is empty: say what to look for, e.g. gemscope search \"dogs\" --layer 20"
    );
    ensure!(args.limit >= 1, "--limit must be at least 1");
    let (sets, _) = label_sets(&args.set, &ui)?;
    let client = neuronpedia_client(args.offline, &ui)?;
    let model_id = sets[0].1.model.clone();
    let sae_ids: Vec<String> = sets.iter().map(|(_, np)| np.sae_id.clone()).collect();
    let url_of = |sae_id: &str, feature: u32| {
        format!("https://www.neuronpedia.org/{model_id}/{sae_id}/{feature}")
    };

    let results: Vec<SearchResult> = if args.online {
        let hits = client.search(&model_id, &sae_ids, &query)?;
        hits.into_iter()
            .filter_map(|hit| {
                let layer = sets
                    .iter()
                    .find(|(_, np)| np.sae_id == hit.sae_id)
                    .map(|(layer, _)| *layer)?;
                Some(SearchResult {
                    layer,
                    feature: hit.feature,
                    neuronpedia_url: url_of(&hit.sae_id, hit.feature),
                    label: hit.description,
                    score: hit.cosine_similarity,
                })
            })
            .take(args.limit)
            .collect()
    } else {
        let cache_dir = cache::cache_dir()?;
        let d_sae = labels::width_features(&crate::hub::catalog::normalize_width(&args.set.width)?)
            .unwrap_or(usize::MAX);
        let mut loaded = Vec::new();
        for (layer, np) in &sets {
            let (found, notes) = labels::labels_for_display(&client, &cache_dir, np, d_sae, *layer);
            for note in notes {
                ui.note(note);
            }
            if let Some(found) = found {
                loaded.push((*layer, found));
            }
        }
        if loaded.is_empty() {
            bail!(
                "no labels to search: none of the {} SAE(s) has labels cached; run `gemscope \
                 labels pull` with the same --layer/--layers, or use --online",
                sets.len()
            );
        }
        let refs: Vec<(usize, &labels::Labels)> = loaded.iter().map(|(l, x)| (*l, x)).collect();
        search::rank(&query, &refs, args.limit)
            .into_iter()
            .map(|m| {
                let sae_id = &sets
                    .iter()
                    .find(|(l, _)| *l == m.layer)
                    .expect("a searched layer")
                    .1
                    .sae_id;
                SearchResult {
                    layer: m.layer,
                    feature: m.feature,
                    neuronpedia_url: url_of(sae_id, m.feature),
                    label: m.label,
                    score: m.score as f64,
                }
            })
            .collect()
    };

    let report = SearchReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        query,
        model_id: model_id.clone(),
        sae_ids,
        method: if args.online { "online" } else { "local" },
        results,
    };
    let mut out = super::stdout();
    if args.json {
        output::json::write_json(&mut out, &report)?;
    } else {
        output::card::write_search(&mut out, &report, ui.style(args.color))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
