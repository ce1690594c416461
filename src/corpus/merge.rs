//! Merging partial stores (shards of one run) into one, exactly: counts add, top lists combine in
//! the store's total order, so merging is associative and a complete merge is byte-identical to
//! the unsharded run. Parts of different runs, duplicate shards and (unless allowed) missing
//! shards are refused.

use super::store::{read_store_header, RunIdentity, ShardSet, Store, StoreHeader};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the user calls a field of [`RunIdentity`], for the refusal message.
fn label(field: &str) -> &str {
    match field {
        "model" | "model_revision" | "model_config_sha256" => "model",
        "sae" | "sae_sha256" | "d_sae" => "SAE",
        "layer" => "--layer",
        "site" => "--site",
        "dtype" => "--dtype",
        "device" => "device",
        "corpus_format" => "corpus format",
        "text_field" => "--text-field/--text-column",
        "limit" => "--limit",
        "top" => "--top",
        "max_tokens" => "--max-tokens",
        "context" => "--context",
        "batch_size" => "--batch-size",
        "features" => "--features",
        other => other,
    }
}

/// The first field in which two runs differ, as `label: a vs b`.
fn difference(a: &RunIdentity, b: &RunIdentity) -> Option<String> {
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) =
        (serde_json::to_value(a).ok()?, serde_json::to_value(b).ok()?)
    else {
        return None;
    };
    a.iter().find_map(|(key, va)| {
        let vb = b.get(key)?;
        (va != vb).then(|| format!("{} ({va} vs {vb})", label(key)))
    })
}

/// Checks that the parts' headers belong to one run and hold each shard at most once (every
/// shard, unless `allow_partial`); returns the merged store's shard set (`None`: complete).
pub fn check_parts(
    parts: &[(PathBuf, &StoreHeader)],
    allow_partial: bool,
) -> Result<Option<ShardSet>> {
    ensure!(!parts.is_empty(), "nothing to merge");
    let mut owner: BTreeMap<u32, PathBuf> = BTreeMap::new();
    let (first_path, first) = &parts[0];
    let mut count = None;
    for (path, header) in parts {
        let name = path.display();
        if header.progress.is_some() {
            bail!("{name} is the checkpoint of an unfinished run, not a store");
        }
        if let Some(diff) = difference(&first.identity, &header.identity) {
            bail!(
                "cannot merge {name} with {}: they were made with a different {diff}",
                first_path.display()
            );
        }
        if header.corpus != first.corpus {
            let hash = |c: &Option<super::store::CorpusInfo>| {
                c.as_ref()
                    .map(|c| format!("{} records, sha256 {}", c.records, c.sha256))
                    .unwrap_or_default()
            };
            bail!(
                "cannot merge {name} with {}: they read different corpora ({} vs {})",
                first_path.display(),
                hash(&header.corpus),
                hash(&first.corpus)
            );
        }
        let Some(shards) = &header.shards else {
            bail!(
                "{name} is already a complete store (every shard is in it); there is nothing \
                 to merge it with"
            );
        };
        match count {
            None => count = Some(shards.count),
            Some(n) if n != shards.count => bail!(
                "cannot merge {name} with {}: they split the run into different shard counts \
                 ({} vs {n})",
                first_path.display(),
                shards.count
            ),
            Some(_) => {}
        }
        for &k in &shards.parts {
            if let Some(other) = owner.insert(k, path.clone()) {
                bail!(
                    "shard {k} of {} is in both {} and {name}",
                    shards.count,
                    other.display()
                );
            }
        }
    }
    let count = count.context("no shard information")?;
    let missing: Vec<String> = (0..count)
        .filter(|k| !owner.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    if !allow_partial {
        bail!(
            "shard{} {} of {count} {} missing (pass --allow-partial to merge the others)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        );
    }
    Ok(Some(ShardSet {
        count,
        parts: owner.into_keys().collect(),
    }))
}

/// Merges stores held in memory (paths for the messages).
pub fn merge(parts: Vec<(PathBuf, Store)>, allow_partial: bool) -> Result<Store> {
    let headers: Vec<(PathBuf, &StoreHeader)> =
        parts.iter().map(|(p, s)| (p.clone(), &s.header)).collect();
    let shards = check_parts(&headers, allow_partial)?;
    let mut parts = parts.into_iter();
    let (_, mut merged) = parts.next().expect("checked non-empty");
    for (path, store) in parts {
        merged
            .absorb(store)
            .with_context(|| format!("cannot merge {}", path.display()))?;
    }
    merged.header.shards = shards;
    Ok(merged)
}

/// Merges store files: every header is checked first, then the parts are read one at a time,
/// so memory holds two stores whatever their number.
pub fn merge_files(paths: &[PathBuf], allow_partial: bool) -> Result<Store> {
    let headers = paths
        .iter()
        .map(|p| Ok((p.clone(), read_store_header(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<(PathBuf, &StoreHeader)> = headers.iter().map(|(p, h)| (p.clone(), h)).collect();
    let shards = check_parts(&refs, allow_partial)?;
    let mut merged = Store::open(&paths[0])?;
    for path in &paths[1..] {
        let part = Store::open(path)?;
        ensure!(
            part.header
                == headers
                    .iter()
                    .find(|(p, _)| p == path)
                    .expect("read above")
                    .1,
            "{} changed while merging",
            path.display()
        );
        merged
            .absorb(part)
            .with_context(|| format!("cannot merge {}", path.display()))?;
    }
    merged.header.shards = shards;
    Ok(merged)
}
