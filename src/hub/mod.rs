//! Finding a model's files (config, tokenizer and only the weight shards a job needs), locally or on the Hugging Face Hub.

pub mod cache;
pub mod catalog;
pub mod client;
pub mod models;
pub mod options;
pub mod saes;

pub use client::{HubClient, HubError, HubOptions};
pub use models::{fetch_weights, resolve_model};
pub use saes::{resolve_sae, L0Choice, Neuronpedia, ResolvedSae, SaeRequest};

use crate::model::{Config, Parts};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A model's weights: one safetensors file, or shards listed by `model.safetensors.index.json`.
#[derive(Debug, Clone)]
pub enum Weights {
    Single(PathBuf),
    Sharded {
        dir: PathBuf,
        weight_map: BTreeMap<String, String>,
    },
}

/// The files of one Gemma 2 checkpoint, with its parsed config.
///
/// From the hub ([`resolve_model`]), `source` is the repo id, `revision` the commit, and the
/// weight paths point into the cache's snapshot, where [`fetch_weights`] downloads them.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named (a directory or a hub repo id), for reports.
    pub source: String,
    /// The hub commit the files come from; `None` for a local directory. `Some` means `source`
    /// is a hub repo id.
    pub revision: Option<String>,
    pub config: Config,
    pub tokenizer: PathBuf,
    pub weights: Weights,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Whether a checkpoint tensor is among the parts a job loads.
pub fn tensor_needed(name: &str, parts: Parts) -> bool {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let layer = rest.split('.').next().and_then(|n| n.parse::<usize>().ok());
        return layer.is_some_and(|l| l < parts.blocks);
    }
    name.starts_with("model.embed_tokens.") || (parts.head && name.starts_with("model.norm."))
}

/// Reads `model.safetensors.index.json`, refusing shard names that leave its directory.
pub fn read_shard_index(index_path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(index_path)
        .with_context(|| format!("cannot read {}", index_path.display()))?;
    let index: ShardIndex = serde_json::from_str(&text)
        .with_context(|| format!("invalid shard index {}", index_path.display()))?;
    for shard in index.weight_map.values() {
        ensure!(
            !shard.is_empty()
                && !shard.contains('/')
                && !shard.contains('\\')
                && !shard.starts_with('.'),
            "shard index {} names a file outside the model directory: {shard:?}",
            index_path.display()
        );
    }
    Ok(index.weight_map)
}

/// The shard files (names from the index's `weight_map`) holding a tensor of `parts`.
pub fn needed_shards(
    weight_map: &BTreeMap<String, String>,
    parts: Parts,
) -> Result<BTreeSet<&str>> {
    let shards: BTreeSet<&str> = weight_map
        .iter()
        .filter(|(name, _)| tensor_needed(name, parts))
        .map(|(_, shard)| shard.as_str())
        .collect();
    ensure!(
        !shards.is_empty(),
        "the shard index lists none of the tensors needed"
    );
    Ok(shards)
}

impl ModelFiles {
    /// A local directory laid out like a hub snapshot: `config.json`, `tokenizer.json` and
    /// `model.safetensors` or `model.safetensors.index.json` with its shards.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        ensure!(dir.is_dir(), "model directory {} not found", dir.display());
        let config = Config::from_file(&dir.join("config.json"))?;
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let weights = if index_path.is_file() {
            Weights::Sharded {
                dir: dir.to_path_buf(),
                weight_map: read_shard_index(&index_path)?,
            }
        } else if single.is_file() {
            Weights::Single(single)
        } else {
            bail!(
                "{} holds neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            );
        };
        Ok(Self {
            source: dir.display().to_string(),
            revision: None,
            config,
            tokenizer: dir.join("tokenizer.json"),
            weights,
        })
    }

    /// The safetensors files holding the tensors of `parts`: for a sharded checkpoint, only the
    /// shards that hold something the job loads.
    pub fn weight_files(&self, parts: Parts) -> Result<Vec<PathBuf>> {
        match &self.weights {
            Weights::Single(path) => Ok(vec![path.clone()]),
            Weights::Sharded { dir, weight_map } => {
                let shards = needed_shards(weight_map, parts)?;
                let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
                for file in &files {
                    ensure!(file.is_file(), "weight shard {} not found", file.display());
                }
                Ok(files)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_tensors_follow_the_parts() {
        let through_1 = Parts::through_layer(1);
        assert!(tensor_needed("model.embed_tokens.weight", through_1));
        assert!(tensor_needed(
            "model.layers.1.mlp.up_proj.weight",
            through_1
        ));
        assert!(!tensor_needed(
            "model.layers.2.mlp.up_proj.weight",
            through_1
        ));
        assert!(!tensor_needed(
            "model.layers.10.mlp.up_proj.weight",
            through_1
        ));
        assert!(!tensor_needed("model.norm.weight", through_1));
        assert!(tensor_needed(
            "model.norm.weight",
            Parts {
                head: true,
                ..through_1
            }
        ));
    }
}
