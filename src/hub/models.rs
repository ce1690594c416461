//! A model named by a local directory or a hub repo id: its config, tokenizer and shard index
//! first ([`resolve_model`]), then only the weight files a job needs ([`fetch_weights`]).

use super::client::{is_repo_id, HubClient, HubError};
use super::{needed_shards, read_shard_index, ModelFiles, Weights};
use crate::model::{Config, Parts};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The model gemscope runs when none is named.
pub const DEFAULT_MODEL: &str = "google/gemma-2-2b";

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// `spec` is a local directory (used as is, with no network and no cache) or a hub repo id at
/// `revision` (branch, tag or commit). From the hub this downloads `config.json`, `tokenizer.json`
/// and, for a sharded checkpoint, `model.safetensors.index.json`, but no weights; the result has
/// `source` = the repo id and `revision` = `Some(commit)`, and every later file comes from that
/// same commit.
pub fn resolve_model(client: &HubClient, spec: &str, revision: &str) -> Result<ModelFiles> {
    let dir = Path::new(spec);
    if dir.is_dir() {
        return ModelFiles::from_dir(dir);
    }
    let looks_local = spec.starts_with(['.', '/', '~']) || spec.contains('\\') || dir.is_absolute();
    if looks_local || !is_repo_id(spec) {
        bail!(
            "model directory {spec} not found (and it is not a Hugging Face repo id like \
             {DEFAULT_MODEL})"
        );
    }
    let repo = spec;
    let (config_path, commit) = client.fetch(repo, revision, CONFIG)?;
    let config = Config::from_file(&config_path)?;
    let (tokenizer, _) = client.fetch(repo, &commit, TOKENIZER)?;
    let snapshot = client.repo_cache(repo).snapshot_dir(&commit);

    // transformers writes model.safetensors for small checkpoints and the index with shards for
    // large ones. Offline, what the cache holds decides.
    let cached_single = client.cached(repo, &commit, SINGLE).is_some();
    let index = if client.offline() && client.cached(repo, &commit, INDEX).is_none() {
        if !cached_single && !client.repo_cache(repo).known_missing(&commit, INDEX) {
            return Err(HubError::NotCached(format!(
                "neither {SINGLE} nor {INDEX} of {repo} (commit {commit}) is in the Hugging Face \
                 cache {}, and offline mode is on (HF_HUB_OFFLINE or --offline): run once with \
                 network access",
                client.options().cache_dir.display()
            ))
            .into());
        }
        None
    } else {
        client.fetch_optional(repo, &commit, INDEX)?
    };
    let weights = match index {
        Some((index_path, _)) => Weights::Sharded {
            dir: snapshot,
            weight_map: read_shard_index(&index_path)?,
        },
        None => Weights::Single(snapshot.join(SINGLE)),
    };
    Ok(ModelFiles {
        source: repo.to_string(),
        revision: Some(commit),
        config,
        tokenizer,
        weights,
    })
}

/// The weight files holding `parts`, downloaded into the cache when `files` comes from the hub
/// (for a sharded checkpoint only the shards with a needed tensor, see
/// [`tensor_needed`](super::tensor_needed)); for a local directory, its files as
/// [`ModelFiles::weight_files`] lists them. After this, `files.weight_files(parts)` names the
/// same, existing paths.
pub fn fetch_weights(client: &HubClient, files: &ModelFiles, parts: Parts) -> Result<Vec<PathBuf>> {
    let Some(commit) = &files.revision else {
        return files.weight_files(parts);
    };
    let repo = &files.source;
    match &files.weights {
        Weights::Single(_) => Ok(vec![client.fetch(repo, commit, SINGLE)?.0]),
        Weights::Sharded { weight_map, .. } => needed_shards(weight_map, parts)?
            .into_iter()
            .map(|shard| Ok(client.fetch(repo, commit, shard)?.0))
            .collect(),
    }
}
