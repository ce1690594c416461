//! `gemscope list-saes`: the SAEs a Gemma Scope release holds (layers, widths, average L0s and
//! which is canonical), from the release's file listing on the hub or cached on disk.

use crate::hub::models::DEFAULT_MODEL;
use crate::hub::saes::{default_release, load_catalog, normalize_width, Catalog, Release};
use crate::hub::{HubClient, HubOptions};
use crate::model::Site;
use crate::output;
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ListSaesArgs {
    /// Model whose Gemma Scope release to list: a hub id (google/gemma-2-9b) or a directory named
    /// after one.
    #[arg(long, value_name = "ID", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// List this release repo instead of the model's (e.g. google/gemma-scope-2b-pt-mlp).
    #[arg(long, value_name = "REPO", conflicts_with_all = ["model", "site"])]
    pub release: Option<String>,
    /// Only this zero-indexed layer.
    #[arg(long, value_name = "N")]
    pub layer: Option<usize>,
    /// Site whose release to list: res, mlp or att.
    #[arg(long, value_enum, default_value_t = Site::Res)]
    pub site: Site,
    /// Only this width (16k, 65k, 1m, ...).
    #[arg(long, value_name = "WIDTH")]
    pub width: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Use only the local cache, as HF_HUB_OFFLINE=1 does.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Serialize)]
struct Listing<'a> {
    schema_version: u32,
    release: &'a str,
    /// The commit the listing describes.
    revision: &'a str,
    /// The model named with --model; absent with --release.
    model: Option<&'a str>,
    site: Option<Site>,
    /// The Neuronpedia model id, for a Gemma Scope release.
    neuronpedia_model: Option<String>,
    saes: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    layer: usize,
    width: String,
    l0: u32,
    canonical: bool,
    path: String,
    /// Neuronpedia's SAE id, for the canonical SAE of a Gemma Scope release.
    neuronpedia_id: Option<String>,
}

fn rows(
    catalog: &Catalog,
    release: Option<&Release>,
    layer: Option<usize>,
    width: Option<&str>,
) -> Vec<Row> {
    catalog
        .entries
        .iter()
        .filter(|e| layer.is_none_or(|l| e.layer == l) && width.is_none_or(|w| e.width == w))
        .map(|e| {
            let canonical = catalog.canonical_l0(e.layer, &e.width) == Some(e.l0);
            Row {
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

fn write_table(w: &mut dyn Write, doc: &Listing) -> std::io::Result<()> {
    let short = &doc.revision[..doc.revision.len().min(12)];
    let about = match (&doc.site, &doc.neuronpedia_model) {
        (Some(site), Some(model)) => format!(" (site {site}, trained on {model})"),
        _ => String::new(),
    };
    writeln!(
        w,
        "{} at {short}: {} SAEs{about}",
        doc.release,
        doc.saes.len()
    )?;
    // One line per layer and width.
    let mut lines: Vec<(String, String, String, String)> = Vec::new();
    for row in &doc.saes {
        let l0 = format!("{}{}", row.l0, if row.canonical { "*" } else { "" });
        match lines.last_mut() {
            Some(last) if last.0 == row.layer.to_string() && last.1 == row.width => {
                last.2.push_str("  ");
                last.2.push_str(&l0);
            }
            _ => lines.push((row.layer.to_string(), row.width.clone(), l0, String::new())),
        }
        if let (Some(id), Some(model)) = (&row.neuronpedia_id, &doc.neuronpedia_model) {
            lines.last_mut().expect("just pushed").3 = format!("{model}/{id}");
        }
    }
    let head = ("layer", "width", "average L0 (* canonical)", "neuronpedia");
    let w0 = lines
        .iter()
        .map(|l| l.0.len())
        .max()
        .unwrap_or(0)
        .max(head.0.len());
    let w1 = lines
        .iter()
        .map(|l| l.1.len())
        .max()
        .unwrap_or(0)
        .max(head.1.len());
    let w2 = lines
        .iter()
        .map(|l| l.2.len())
        .max()
        .unwrap_or(0)
        .max(head.2.len());
    let show_np = lines.iter().any(|l| !l.3.is_empty());
    let mut print = |a: &str, b: &str, c: &str, d: &str| {
        let line = format!("{a:>w0$}  {b:<w1$}  {c:<w2$}  {d}");
        let line = if show_np {
            line.trim_end()
        } else {
            line[..line.len() - d.len()].trim_end()
        };
        writeln!(w, "{line}")
    };
    print(head.0, head.1, head.2, head.3)?;
    for l in &lines {
        print(&l.0, &l.1, &l.2, &l.3)?;
    }
    Ok(())
}

pub fn run(args: ListSaesArgs) -> Result<ExitCode> {
    let client = HubClient::new(HubOptions::from_env(args.offline)?)?;
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
        eprintln!("note: {note}");
    }
    let release = Release::parse(&repo);
    let doc = Listing {
        schema_version: 1,
        release: &repo,
        revision: &catalog.commit,
        model: args.release.is_none().then_some(args.model.as_str()),
        site: release.as_ref().map(|r| r.site),
        neuronpedia_model: release.as_ref().map(Release::neuronpedia_model),
        saes: rows(&catalog, release.as_ref(), args.layer, width.as_deref()),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.json {
        output::write_json(&mut out, &doc)?;
    } else {
        write_table(&mut out, &doc)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
