//! `gemscope dashboard`: the HTML feature dashboard of a `top-examples` store, each feature with
//! the card `explain` computes (labels, logit effects, neighbours), as one offline file or pages.

use super::explain::{check_store, feature_cards, CardOptions};
use super::Job;
use crate::cli::DashboardArgs;
use crate::corpus::store::Store;
use crate::output::dashboard::write_dashboard;
use crate::report::dashboard::Dashboard;
use crate::ui::Ui;
use anyhow::{bail, Context, Result};
use std::process::ExitCode;

pub fn run(args: DashboardArgs, ui: Ui) -> Result<ExitCode> {
    let job = Job::open(&args.model, ui)?;
    let point = job.hook_point(&args.hook)?;
    let sae_plan = job.sae(&args.sae, point)?;
    // A store of another layer, site or SAE width (or an unmerged shard) is refused up front.
    check_store(&args.examples, &sae_plan)?;
    let store = job.ui.phase("load", || Store::open(&args.examples))?;
    let features: Vec<u32> = match (&args.features, args.top_features) {
        (Some(list), _) => {
            for &f in list {
                sae_plan.check_feature("--features", f as usize)?;
                if !store.features.contains(&f) {
                    bail!(
                        "--features: feature {f} is not in {} (it was run with --features)",
                        args.examples.display()
                    );
                }
            }
            list.clone()
        }
        (None, top) => {
            // Every feature that fired, most often active first (ties by id), or the top N.
            let mut fired: Vec<(u64, u32)> = store
                .features
                .iter()
                .filter_map(|&f| store.feature(f))
                .filter(|e| e.active > 0)
                .map(|e| (e.active, e.feature))
                .collect();
            fired.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            fired.truncate(top.unwrap_or(usize::MAX));
            fired.into_iter().map(|(_, f)| f).collect()
        }
    };
    if features.is_empty() {
        bail!(
            "no feature of {} ever fired: nothing to show",
            args.examples.display()
        );
    }

    let tokenizer = job.tokenizer()?;
    let piece = |id: u32| tokenizer.piece(id);
    let examples = features
        .iter()
        .map(|&f| {
            let mut e = store
                .feature(f)
                .context("a listed feature is missing from the store")?;
            e.spell(piece);
            Ok(serde_json::to_value(e)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let options = CardOptions {
        tokens: 10,
        neighbours: 10,
        labels: !args.no_labels,
        page_data: false,
    };
    let ids: Vec<usize> = features.iter().map(|&f| f as usize).collect();
    let (cards, _) = feature_cards(&job, &sae_plan, &tokenizer, &ids, &options)?;
    let cards = cards
        .iter()
        .map(serde_json::to_value)
        .collect::<serde_json::Result<Vec<_>>>()?;

    let id = &store.header.identity;
    let dashboard = Dashboard {
        title: format!("layer {} {} · {}", point.layer, point.site, id.sae),
        facts: vec![
            ("model".into(), id.model.clone()),
            ("store".into(), args.examples.display().to_string()),
            ("documents".into(), store.header.documents.to_string()),
            ("corpus tokens".into(), store.header.tokens.to_string()),
            ("features".into(), features.len().to_string()),
        ],
        features: crate::dashboard::dashboard_features(&examples, &cards, &piece)?,
    };
    let written = job
        .ui
        .phase("output", || write_dashboard(&args.out, &dashboard))?;
    job.ui.note(format!(
        "wrote {} ({} features, {:.1} MB{})",
        written.entry.display(),
        features.len(),
        written.bytes as f64 / 1e6,
        if written.pages > 0 {
            format!(", {} pages", written.pages)
        } else {
            String::new()
        }
    ));
    job.ui.report_phases();
    Ok(ExitCode::SUCCESS)
}
