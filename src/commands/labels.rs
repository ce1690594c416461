//! `gemscope labels pull`: Neuronpedia's explanations of a release's SAEs into gemscope's cache;
//! and the `--layers` selection and Neuronpedia ids that `search` and `explain` share.

use crate::cli::{LabelSetArgs, LabelsAction, LabelsArgs, PullArgs};
use crate::hub::catalog::{default_release, normalize_width, Release};
use crate::hub::Neuronpedia;
use crate::labels::{self, cache, NeuronpediaClient, NeuronpediaOptions};
use crate::ui::Ui;
use anyhow::{bail, ensure, Context, Result};
use std::process::ExitCode;

/// Layers of a `--layers` value: `all`, `A-B` (inclusive), `A,B,C` or `N`, each below
/// `num_layers`; sorted, without repeats.
pub fn parse_layers(spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    let spec = spec.trim();
    let bad = || {
        anyhow::anyhow!(
            "--layers {spec:?} is not `all`, a range like 0-{} or a list like 3,7,20",
            num_layers - 1
        )
    };
    if spec.eq_ignore_ascii_case("all") {
        return Ok((0..num_layers).collect());
    }
    let mut layers = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: usize = a.parse().map_err(|_| bad())?;
        let b: usize = b.parse().map_err(|_| bad())?;
        ensure!(
            a <= b,
            "--layers {spec:?}: the range {a}-{b} runs backwards"
        );
        ensure!(
            b < num_layers,
            "--layers {spec:?}: layer {b} is out of range: the model has {num_layers} layers \
             (0..={})",
            num_layers - 1
        );
        layers.extend(a..=b);
    }
    layers.sort_unstable();
    layers.dedup();
    Ok(layers)
}

/// The number of layers of the Gemma 2 model a release was trained on.
fn release_layers(release: &Release) -> usize {
    match release.size.as_str() {
        "2b" => 26,
        "9b" => 42,
        _ => 46,
    }
}

/// The Neuronpedia ids of the chosen SAEs, with their layers, and the release's depth.
pub fn label_sets(args: &LabelSetArgs, ui: &Ui) -> Result<(Vec<(usize, Neuronpedia)>, usize)> {
    let (repo, note) = default_release(&args.model, args.site)?;
    if let Some(note) = note {
        ui.note(note);
    }
    let release = Release::parse(&repo).context("not a Gemma Scope release")?;
    let width = normalize_width(&args.width)?;
    let depth = release_layers(&release);
    let layers = match (&args.layers, args.layer) {
        (Some(spec), _) => parse_layers(spec, depth)?,
        (None, Some(layer)) => {
            ensure!(
                layer < depth,
                "--layer {layer} is out of range: the model has {depth} layers (0..={})",
                depth - 1
            );
            vec![layer]
        }
        (None, None) => bail!("say which SAEs: --layer N, or --layers all|A-B|A,B"),
    };
    Ok((
        layers
            .into_iter()
            .map(|layer| (layer, release.neuronpedia(layer, &width)))
            .collect(),
        depth,
    ))
}

/// The Neuronpedia client over the environment's settings; a progress bar only for a person
/// watching (not with `--quiet`).
pub fn client(offline: bool, ui: &Ui) -> Result<NeuronpediaClient> {
    let offline = offline
        || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
    let mut options = NeuronpediaOptions::from_env(offline)?;
    options.progress &= ui.interactive();
    options.notes = !ui.quiet();
    Ok(NeuronpediaClient::new(options))
}

pub fn run(args: LabelsArgs, ui: Ui) -> Result<ExitCode> {
    match args.action {
        LabelsAction::Pull(args) => pull(args, ui),
    }
}

fn pull(args: PullArgs, ui: Ui) -> Result<ExitCode> {
    let (sets, _) = label_sets(&args.set, &ui)?;
    let width = normalize_width(&args.set.width)?;
    let d_sae = labels::width_features(&width);
    let cache_dir = cache::cache_dir()?;
    let client = client(false, &ui)?;
    let mut failed = Vec::new();
    for (_, np) in &sets {
        let name = format!("{}/{}", np.model, np.sae_id);
        let summary = labels::pull(&client, &cache_dir, np, d_sae)
            .with_context(|| format!("cannot pull the labels of {name}"))?;
        for note in &summary.notes {
            ui.note(note);
        }
        ui.note(format!(
            "{name}: {} features, {} explanations from {} batches{} -> {}",
            summary.labels.len(),
            summary.explanations,
            summary.batches,
            if summary.reused > 0 {
                format!(" ({} reused from an interrupted pull)", summary.reused)
            } else {
                String::new()
            },
            summary.labels.path().display()
        ));
        if let Some(first) = summary.failures.first() {
            failed.push(format!(
                "{name}: {} of {} batches missing ({first})",
                summary.failures.len(),
                summary.batches
            ));
        }
    }
    if let Some(first) = failed.first() {
        bail!(
            "labels incomplete for {} SAE(s): {first}; the rest is cached, and running the \
             same pull again fetches only what is missing",
            failed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_specs() {
        assert_eq!(parse_layers("all", 3).unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_layers("0-2", 26).unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_layers("7, 3,3-4", 26).unwrap(), vec![3, 4, 7]);
        assert_eq!(parse_layers("20", 26).unwrap(), vec![20]);
        for bad in ["", "2-1", "0-26", "x", "1-", "-3", "1,,2"] {
            assert!(parse_layers(bad, 26).is_err(), "{bad}");
        }
    }
}
