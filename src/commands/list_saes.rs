//! `gemscope list-saes`: the SAEs a Gemma Scope release holds (layers, widths, average L0s and
//! which is canonical), from the release's file listing on the hub or cached on disk.

use super::stdout;
use crate::cli::ListSaesArgs;
use crate::hub::catalog::{default_release, load_catalog, normalize_width, Catalog, Release};
use crate::hub::{HubClient, HubOptions};
use crate::output;
use crate::report::{SaeListing, SaeListingRow, SCHEMA_VERSION};
use crate::ui::Ui;
use anyhow::{bail, Result};
use std::io::Write;
use std::process::ExitCode;

fn rows(
    catalog: &Catalog,
    release: Option<&Release>,
    layer: Option<usize>,
    width: Option<&str>,
) -> Vec<SaeListingRow> {
    catalog
        .entries
        .iter()
        .filter(|e| layer.is_none_or(|l| e.layer == l) && width.is_none_or(|w| e.width == w))
        .map(|e| {
            let canonical = catalog.canonical_l0(e.layer, &e.width) == Some(e.l0);
            SaeListingRow {
                layer: e.layer,
                width: e.width.clone(),
                l0: e.l0,
                canonical,
                path: e.path.clone(),
                neuronpedia_id: release
                    .filter(|_| canonical)
                    .map(|r| r.neuronpedia(e.layer, &e.width).sae_id),
            }
        })
        .collect()
}

pub fn run(args: ListSaesArgs, ui: Ui) -> Result<ExitCode> {
    let mut options = HubOptions::from_env(args.offline)?;
    options.progress &= !ui.quiet();
    let client = HubClient::new(options)?;
    let (repo, note) = match &args.release {
        Some(release) => (release.clone(), None),
        None => default_release(&args.model, args.site)?,
    };
    let (catalog, more) = load_catalog(&client, &repo)?;
    let width = args.width.as_deref().map(normalize_width).transpose()?;
    match (args.layer, &width) {
        (Some(layer), Some(width)) => catalog.check_width(layer, width)?,
        (Some(layer), None) => catalog.check_layer(layer)?,
        (None, _) if catalog.entries.is_empty() => catalog.check_layer(0)?,
        (None, Some(width)) if !catalog.entries.iter().any(|e| &e.width == width) => {
            let mut widths: Vec<String> = Vec::new();
            for e in &catalog.entries {
                if !widths.contains(&e.width) {
                    widths.push(e.width.clone());
                }
            }
            bail!(
                "{repo} has no width {width} SAEs: its widths are {}",
                widths.join(", ")
            );
        }
        (None, _) => {}
    }
    for note in note.iter().chain(&more) {
        ui.note(note);
    }
    let release = Release::parse(&repo);
    let doc = SaeListing {
        schema_version: SCHEMA_VERSION,
        release: repo.clone(),
        revision: catalog.commit.clone(),
        model: args.release.is_none().then(|| args.model.clone()),
        site: release.as_ref().map(|r| r.site),
        neuronpedia_model: release.as_ref().map(Release::neuronpedia_model),
        saes: rows(&catalog, release.as_ref(), args.layer, width.as_deref()),
    };
    let mut out = stdout();
    if args.json {
        output::json::write_json(&mut out, &doc)?;
    } else {
        output::list_saes::write_list_saes_table(&mut out, &doc)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
