//! Neuronpedia labels (explanations) of Gemma Scope features: pulling an SAE's export into
//! gemscope's cache as a compact index, looking labels up, and ranking them for `search`.
//!
//! Labels are a convenience: whoever shows them turns a failure here into a note, never into a
//! failed command (except `labels pull`, whose job it is).

pub mod api;
pub mod cache;
pub mod export;
pub mod search;

pub use api::{FeatureInfo, NeuronpediaClient, NeuronpediaOptions};

use crate::hub::Neuronpedia;
use anyhow::{Context, Result};
use cache::{read_sealed, sae_dir, write_sealed, Sealed};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The version of the index layout; a file of another version is fetched again.
const INDEX_VERSION: u32 = 1;

/// The number of features of a Gemma Scope width: `16k` = 2^14, ..., `1m` = 2^20.
pub fn width_features(width: &str) -> Option<usize> {
    let (digits, unit) = width.split_at(width.len().checked_sub(1)?);
    let n: usize = digits.parse().ok()?;
    let approx = match unit {
        "k" => n * 1_000,
        "m" => n * 1_000_000,
        _ => return None,
    };
    Some(approx.next_power_of_two())
}

/// The label index of one SAE as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    model_id: String,
    sae_id: String,
    /// Batches the listing named that could not be fetched: the index lacks their labels.
    missing_batches: Vec<u32>,
    /// Feature -> its explanations, in the export's order, without duplicates.
    features: BTreeMap<u32, Vec<String>>,
}

/// The labels of one SAE.
#[derive(Debug, Clone)]
pub struct Labels {
    index: IndexFile,
    path: PathBuf,
}

/// What the cache holds for an SAE.
#[derive(Debug)]
pub enum Cached {
    Missing,
    /// A damaged file, and how.
    Corrupt(String),
    Found(Labels),
}

/// Where an SAE's label index lives.
pub fn index_path(cache: &Path, np: &Neuronpedia) -> PathBuf {
    sae_dir(cache, &np.model, &np.sae_id).join("labels.idx")
}

impl Labels {
    /// The cached labels of `np`, reading only the index file.
    pub fn load(cache: &Path, np: &Neuronpedia) -> Result<Cached> {
        let path = index_path(cache, np);
        let body = match read_sealed(&path)? {
            Sealed::Missing => return Ok(Cached::Missing),
            Sealed::Corrupt(why) => return Ok(Cached::Corrupt(why)),
            Sealed::Body(body) => body,
        };
        let index: IndexFile = match serde_json::from_slice(&body) {
            Ok(index) => index,
            Err(e) => return Ok(Cached::Corrupt(format!("unreadable JSON ({e})"))),
        };
        if index.version != INDEX_VERSION || index.model_id != np.model || index.sae_id != np.sae_id
        {
            return Ok(Cached::Corrupt(format!(
                "an index of another SAE or version ({}/{} v{})",
                index.model_id, index.sae_id, index.version
            )));
        }
        Ok(Cached::Found(Self { index, path }))
    }

    /// Labels from explanations in order (tests and callers that build them in memory).
    pub fn from_explanations(
        np: &Neuronpedia,
        explanations: impl IntoIterator<Item = (u32, String)>,
    ) -> Self {
        let mut features: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (feature, text) in explanations {
            let list = features.entry(feature).or_default();
            if !list.contains(&text) {
                list.push(text);
            }
        }
        Self {
            index: IndexFile {
                version: INDEX_VERSION,
                model_id: np.model.clone(),
                sae_id: np.sae_id.clone(),
                missing_batches: Vec::new(),
                features,
            },
            path: PathBuf::new(),
        }
    }

    /// Writes the index into the cache (sealed, atomically), and remembers where.
    pub fn save(&mut self, cache: &Path) -> Result<()> {
        let np = Neuronpedia {
            model: self.index.model_id.clone(),
            sae_id: self.index.sae_id.clone(),
        };
        let path = index_path(cache, &np);
        let body = serde_json::to_vec(&self.index).expect("an index serializes");
        write_sealed(&path, &body)?;
        self.path = path;
        Ok(())
    }

    /// The first explanation of `feature`, in the export's order.
    pub fn label(&self, feature: u32) -> Option<&str> {
        self.labels(feature).first().map(String::as_str)
    }

    /// Every explanation of `feature`.
    pub fn labels(&self, feature: u32) -> &[String] {
        self.index
            .features
            .get(&feature)
            .map_or(&[], |v| v.as_slice())
    }

    /// Features with at least one label, ascending, with their labels.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[String])> {
        self.index.features.iter().map(|(&f, l)| (f, l.as_slice()))
    }

    /// Number of labelled features.
    pub fn len(&self) -> usize {
        self.index.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.features.is_empty()
    }

    /// Export batches the index lacks because they could not be fetched.
    pub fn missing_batches(&self) -> &[u32] {
        &self.index.missing_batches
    }

    pub fn sae_id(&self) -> &str {
        &self.index.sae_id
    }

    /// The index file it was read from (empty for labels built in memory).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What `pull` did.
#[derive(Debug)]
pub struct PullSummary {
    pub labels: Labels,
    pub batches: usize,
    /// Batches parsed in an earlier, interrupted run and reused.
    pub reused: usize,
    pub explanations: usize,
    /// Remarks for stderr (skipped lines, duplicates).
    pub notes: Vec<String>,
    /// Batches that could not be fetched, with why; the index was written without them.
    pub failures: Vec<String>,
}

/// Downloads the explanation export of `np` into the cache and writes its label index. Batches
/// finished earlier are reused; a failed batch leaves the others in place, is named in
/// `failures`, and is tried again by the next pull. `d_sae` bounds the feature ids kept.
pub fn pull(
    client: &NeuronpediaClient,
    cache: &Path,
    np: &Neuronpedia,
    d_sae: Option<usize>,
) -> Result<PullSummary> {
    let name = format!("{}/{}", np.model, np.sae_id);
    anyhow::ensure!(
        !client.options().offline,
        "the labels of {name} are not cached and offline mode is on: run `gemscope labels pull` \
         with network access"
    );
    let prefix = format!("v1/{}/{}/explanations/", np.model, np.sae_id);
    let mut listed: Vec<(u32, export::ListedObject)> = client
        .list(&prefix)?
        .into_iter()
        .filter_map(|o| export::batch_number(&o.key).map(|n| (n, o)))
        .collect();
    listed.sort_by_key(|(n, _)| *n);
    anyhow::ensure!(
        !listed.is_empty(),
        "Neuronpedia's export has no explanations for {name} (nothing under {prefix} at {})",
        client.options().datasets_url
    );

    let dir = sae_dir(cache, &np.model, &np.sae_id);
    let batches_dir = dir.join("batches");
    let total: u64 = listed.iter().map(|(_, o)| o.size).sum();
    let bar = if client.options().progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template"),
        );
        bar.set_message(format!("labels {name}"));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let mut missing = Vec::new();
    let mut reused = 0;
    let mut all: Vec<(u32, String)> = Vec::new();
    for (n, object) in &listed {
        let parsed_path = batches_dir.join(format!("batch-{n}.idx"));
        let file = format!("batch-{n}.jsonl.gz");
        if let Sealed::Body(body) = read_sealed(&parsed_path)? {
            if let Ok(batch) = serde_json::from_slice::<export::ParsedBatch>(&body) {
                bar.inc(object.size);
                reused += 1;
                all.extend(batch.explanations);
                continue;
            }
        }
        let part = batches_dir.join(format!("{file}.part"));
        if let Err(e) = client.download(&object.key, object.size, &part, &bar) {
            missing.push(*n);
            failures.push(match e {
                api::DownloadError::NotFound(message) => message,
                api::DownloadError::Other(err) => crate::error_line(&err),
            });
            continue;
        }
        let parsed = std::fs::File::open(&part)
            .with_context(|| format!("cannot read {}", part.display()))
            .and_then(|f| export::parse_batch(std::io::BufReader::new(f), d_sae));
        let _ = std::fs::remove_file(&part);
        let batch = match parsed {
            Ok(batch) => batch,
            Err(err) => {
                missing.push(*n);
                failures.push(format!("{file} is damaged ({})", crate::error_line(&err)));
                continue;
            }
        };
        if batch.not_json > 0 {
            notes.push(format!(
                "{name} {file}: skipped {} line(s) that are not an explanation in JSON",
                batch.not_json
            ));
        }
        if batch.out_of_range > 0 {
            notes.push(format!(
                "{name} {file}: skipped {} explanation(s) of features the SAE does not have \
                 (it has {})",
                batch.out_of_range,
                d_sae.map_or("fewer".to_string(), |d| d.to_string())
            ));
        }
        let body = serde_json::to_vec(&batch).expect("a batch serializes");
        write_sealed(&parsed_path, &body)?;
        all.extend(batch.explanations);
    }
    bar.finish_and_clear();

    let explanations = all.len();
    let mut labels = Labels::from_explanations(np, all);
    let kept: usize = labels.iter().map(|(_, l)| l.len()).sum();
    if kept < explanations {
        notes.push(format!(
            "{name}: dropped {} duplicate explanation(s)",
            explanations - kept
        ));
    }
    labels.index.missing_batches = missing;
    labels.save(cache)?;
    if failures.is_empty() {
        // The index holds everything: the parsed batches are no longer needed.
        let _ = std::fs::remove_dir_all(&batches_dir);
    }
    Ok(PullSummary {
        labels,
        batches: listed.len(),
        reused,
        explanations: kept,
        notes,
        failures,
    })
}

/// The labels to show next to an SAE's features: the cached index, else (when the network is
/// allowed) a fresh pull of the export. Never fails: what went wrong comes back as notes for
/// stderr, and `None` means no labels.
pub fn labels_for_display(
    client: &NeuronpediaClient,
    cache: &Path,
    np: &Neuronpedia,
    d_sae: usize,
    layer: usize,
) -> (Option<Labels>, Vec<String>) {
    let name = format!("{}/{}", np.model, np.sae_id);
    let mut notes = Vec::new();
    match Labels::load(cache, np) {
        Ok(Cached::Found(labels)) => return (Some(labels), notes),
        Ok(Cached::Missing) => {}
        Ok(Cached::Corrupt(why)) => notes.push(format!(
            "the cached labels of {name} are damaged ({why}){}",
            if client.options().offline {
                ": not shown"
            } else {
                ": fetching them again"
            }
        )),
        Err(err) => {
            notes.push(format!(
                "cannot read the cached labels of {name}: {}",
                crate::error_line(&err)
            ));
            return (None, notes);
        }
    }
    if client.options().offline {
        if notes.is_empty() {
            notes.push(format!(
                "labels of {name} are not cached; run `gemscope labels pull --layer {layer}` \
                 with network access to show them"
            ));
        }
        return (None, notes);
    }
    match pull(client, cache, np, Some(d_sae)) {
        Ok(summary) => {
            notes.extend(summary.notes);
            if let Some(first) = summary.failures.first() {
                notes.push(format!(
                    "some labels of {name} could not be fetched ({} batch(es): {first}); \
                     `gemscope labels pull --layer {layer}` tries again",
                    summary.failures.len()
                ));
            }
            (Some(summary.labels), notes)
        }
        Err(err) => {
            notes.push(format!(
                "labels of {name} are not shown: {}",
                crate::error_line(&err)
            ));
            (None, notes)
        }
    }
}

/// Labels being read (or fetched) on another thread while the numbers are computed, so a slow
/// network never delays them.
pub struct PendingLabels(Option<std::thread::JoinHandle<(Option<Labels>, Vec<String>)>>);

impl PendingLabels {
    /// No labels wanted (`--no-labels`, or an SAE Neuronpedia does not host).
    pub fn none() -> Self {
        Self(None)
    }

    /// Starts reading the labels of `np` from the cache, pulling them when missing and the
    /// network is allowed (`offline` false).
    pub fn start(np: Neuronpedia, d_sae: usize, layer: usize, offline: bool, quiet: bool) -> Self {
        Self(Some(std::thread::spawn(move || {
            let mut options = match NeuronpediaOptions::from_env(offline) {
                Ok(options) => options,
                Err(err) => return (None, vec![crate::error_line(&err)]),
            };
            // A second bar beside the job's would garble stderr.
            options.progress = false;
            options.notes = !quiet;
            let client = NeuronpediaClient::new(options);
            match cache::cache_dir() {
                Ok(dir) => labels_for_display(&client, &dir, &np, d_sae, layer),
                Err(err) => (
                    None,
                    vec![format!("labels are not shown: {}", crate::error_line(&err))],
                ),
            }
        })))
    }

    /// [`PendingLabels::start`] for an SAE Neuronpedia hosts (`Some`), else none.
    pub fn start_if(
        np: Option<&Neuronpedia>,
        d_sae: usize,
        layer: usize,
        offline: bool,
        quiet: bool,
    ) -> Self {
        match np {
            Some(np) => Self::start(np.clone(), d_sae, layer, offline, quiet),
            None => Self::none(),
        }
    }

    /// The labels, and the notes for stderr.
    pub fn finish(self) -> (Option<Labels>, Vec<String>) {
        match self.0 {
            None => (None, Vec::new()),
            Some(handle) => handle.join().unwrap_or_else(|_| {
                (
                    None,
                    vec!["labels are not shown: the label reader failed".into()],
                )
            }),
        }
    }
}

/// Where the per-feature API's answer is cached.
fn feature_path(cache: &Path, np: &Neuronpedia, feature: u32) -> PathBuf {
    sae_dir(cache, &np.model, &np.sae_id)
        .join("features")
        .join(format!("{feature}.json"))
}

/// Neuronpedia's page data for one feature (density, max activation, explanations): cached, else
/// fetched from the per-feature API when the network is allowed. Failures come back as a note.
pub fn feature_info(
    client: &NeuronpediaClient,
    cache: &Path,
    np: &Neuronpedia,
    feature: u32,
) -> (Option<FeatureInfo>, Option<String>) {
    let path = feature_path(cache, np, feature);
    let mut note = None;
    match read_sealed(&path) {
        Ok(Sealed::Body(body)) => {
            if let Ok(info) = serde_json::from_slice(&body) {
                return (Some(info), None);
            }
            note = Some("unreadable JSON".to_string());
        }
        Ok(Sealed::Corrupt(why)) => note = Some(why),
        _ => {}
    }
    let damaged = note.map(|why| {
        format!(
            "the cached Neuronpedia data of feature {feature} of {}/{} was damaged ({why})",
            np.model, np.sae_id
        )
    });
    if client.options().offline {
        return (None, damaged);
    }
    match client.feature(&np.model, &np.sae_id, feature) {
        Ok(info) => {
            let body = serde_json::to_vec(&info).expect("feature info serializes");
            let note = write_sealed(&path, &body)
                .err()
                .map(|e| crate::error_line(&e))
                .or(damaged.map(|d| format!("{d}: fetched again")));
            (Some(info), note)
        }
        Err(err) => (
            None,
            Some(format!(
                "Neuronpedia's data for feature {feature} is not shown: {}",
                crate::error_line(&err)
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np() -> Neuronpedia {
        Neuronpedia {
            model: "gemma-2-2b".into(),
            sae_id: "20-gemmascope-res-16k".into(),
        }
    }

    #[test]
    fn widths_count_features_as_powers_of_two() {
        assert_eq!(width_features("16k"), Some(16384));
        assert_eq!(width_features("65k"), Some(65536));
        assert_eq!(width_features("131k"), Some(131072));
        assert_eq!(width_features("1m"), Some(1 << 20));
        assert_eq!(width_features("16"), None);
        assert_eq!(width_features(""), None);
    }

    #[test]
    fn labels_keep_export_order_without_duplicates_and_survive_the_cache() {
        let labels = Labels::from_explanations(
            &np(),
            [
                (10004, "time travel".to_string()),
                (3, "dogs".to_string()),
                (10004, "the future".to_string()),
                (10004, "time travel".to_string()),
            ],
        );
        assert_eq!(labels.label(10004), Some("time travel"));
        assert_eq!(labels.labels(10004), ["time travel", "the future"]);
        assert_eq!(labels.label(5), None);
        assert_eq!(labels.len(), 2);

        let dir = tempfile::tempdir().unwrap();
        let path = index_path(dir.path(), &np());
        write_sealed(&path, &serde_json::to_vec(&labels.index).unwrap()).unwrap();
        let Cached::Found(loaded) = Labels::load(dir.path(), &np()).unwrap() else {
            panic!("not loaded");
        };
        assert_eq!(loaded.labels(10004), labels.labels(10004));
        let other = Neuronpedia {
            sae_id: "19-gemmascope-res-16k".into(),
            ..np()
        };
        assert!(matches!(
            Labels::load(dir.path(), &other).unwrap(),
            Cached::Missing
        ));
        // The right file under another SAE's name is refused, not shown.
        let moved = index_path(dir.path(), &other);
        std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
        std::fs::copy(&path, &moved).unwrap();
        assert!(matches!(
            Labels::load(dir.path(), &other).unwrap(),
            Cached::Corrupt(_)
        ));
    }
}
