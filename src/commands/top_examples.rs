//! `gemscope top-examples`: every feature's max-activating documents over a corpus, into a store
//! file (sharded, checkpointed, resumable); `gemscope merge` combines the shards' stores.

use super::Job;
use crate::cli::{MergeArgs, TopExamplesArgs};
use crate::corpus::run::{self, CheckpointPlan, Encoder};
use crate::corpus::{merge, CorpusFormat, CorpusReader, CorpusSpec, RunIdentity, Shard, Store};
use crate::model::Parts;
use crate::sae::SaeParts;
use crate::ui::Ui;
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The checkpoint written next to the store.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".checkpoint");
    PathBuf::from(name)
}

/// SHA-256 of a file, read in 1 MiB blocks.
fn file_sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::corpus::reader::hex(&hasher.finalize()))
}

pub fn run(args: TopExamplesArgs, ui: Ui) -> Result<ExitCode> {
    ensure!(args.top >= 1, "--top must be at least 1");
    ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    ensure!(
        args.max_tokens >= 2,
        "--max-tokens must be at least 2 (BOS and one token)"
    );
    if let Some(limit) = args.limit {
        ensure!(limit >= 1, "--limit must be at least 1");
    }
    let shard = match &args.shard {
        Some(spec) => Shard::parse(spec, |name| std::env::var(name).ok())?,
        None => Shard::WHOLE,
    };
    let format = args.format.resolve(&args.corpus);
    let field = match (format, &args.text_field, &args.text_column) {
        (CorpusFormat::Parquet, Some(_), _) => {
            bail!("--text-field is for JSONL corpora; a Parquet corpus takes --text-column")
        }
        (CorpusFormat::Jsonl, _, Some(_)) => {
            bail!("--text-column is for Parquet corpora; a JSONL corpus takes --text-field")
        }
        (CorpusFormat::Text, Some(_), _) | (CorpusFormat::Text, _, Some(_)) => bail!(
            "{} is read as plain text (one document per line); pass --format jsonl or parquet \
             to read a field",
            args.corpus.display()
        ),
        (_, Some(f), _) | (_, _, Some(f)) => f.clone(),
        _ => "text".to_string(),
    };
    let spec = CorpusSpec {
        path: args.corpus.clone(),
        format,
        field: field.clone(),
        limit: args.limit,
    };
    // The store is written at the end: a directory that is not there fails now, not after the run.
    let out_dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    ensure!(
        out_dir.is_dir(),
        "--out {}: the directory {} does not exist",
        args.out.display(),
        out_dir.display()
    );
    // Open the corpus first: a missing file or column fails before the model loads.
    let reader = CorpusReader::open(&spec)?;

    let job = Job::open(&args.model, ui)?;
    let cfg = job.config();
    let point = job.hook_point(&args.hook)?;
    ensure!(
        args.max_tokens <= cfg.max_position_embeddings,
        "--max-tokens {} is more than the model's context of {}",
        args.max_tokens,
        cfg.max_position_embeddings
    );
    let tokenizer = job.tokenizer()?;
    let sae_plan = job.sae(&args.sae, point)?;
    let d_sae = sae_plan.d_sae;
    let features = match &args.features {
        Some(list) => {
            let mut list = list.clone();
            list.sort_unstable();
            list.dedup();
            for &f in &list {
                sae_plan.check_feature("--features: feature", f as usize)?;
            }
            Some(list)
        }
        None => None,
    };
    let model_info = job.model_info();
    let identity = RunIdentity {
        model: job.files.source.clone(),
        model_revision: job.files.revision.clone(),
        model_config_sha256: crate::corpus::reader::hex(&Sha256::digest(
            format!("{:?}", job.files.config).as_bytes(),
        )),
        sae: sae_plan.info().source,
        sae_sha256: file_sha256(&sae_plan.resolved.path)?,
        d_sae,
        layer: point.layer,
        site: point.site.to_string(),
        dtype: model_info.dtype.clone(),
        device: model_info.device.clone(),
        corpus_format: format.name().to_string(),
        text_field: (format != CorpusFormat::Text).then(|| field.clone()),
        limit: args.limit,
        top: args.top,
        max_tokens: args.max_tokens,
        context: args.context,
        batch_size: args.batch_size,
        features: features.clone(),
    };
    let columns: Vec<u32> = features
        .clone()
        .unwrap_or_else(|| (0..d_sae as u32).collect());

    let parts = Parts::through_layer(point.layer);
    let mut plan = job.memory_plan(parts);
    sae_plan.add_to(&mut plan, SaeParts::EncoderOnly, false);
    let t = args.max_tokens as u64;
    let width = cfg.hidden_size.max(cfg.intermediate_size) as u64;
    plan.add(
        "activations",
        args.batch_size as u64 * t * width * 4 * 4
            + 2 * cfg.num_attention_heads as u64 * t * t * 4
            + 4 * t * columns.len() as u64 * 4,
    );
    let window = args
        .context
        .map_or(args.max_tokens, |c| (2 * c + 1).min(args.max_tokens));
    plan.add(
        "the examples store",
        Store::bound_bytes(columns.len(), args.top, window),
    );

    let checkpoint = checkpoint_path(&args.out);
    let store = resume_or_start(
        &job.ui,
        &checkpoint,
        &identity,
        &columns,
        shard,
        args.restart,
    )?;

    let model = job.load_model(parts, &plan)?;
    let sae = sae_plan.load(&job.ui, SaeParts::EncoderOnly, &job.device)?;
    let encoder = match &features {
        Some(list) => {
            let ids: Vec<usize> = list.iter().map(|&f| f as usize).collect();
            Encoder::some(&sae, &ids)?
        }
        None => Encoder::all(&sae)?,
    };
    let corpus_job = run::CorpusJob {
        model: &model,
        encoder,
        point,
        tokenizer: &tokenizer,
        max_tokens: args.max_tokens,
        batch_size: args.batch_size,
        shard,
        checkpoint: match args.checkpoint_every {
            Some(0) => None,
            every => Some(CheckpointPlan {
                path: checkpoint.clone(),
                every,
                interval: Duration::from_secs(300),
            }),
        },
        progress: job.ui.interactive(),
    };
    let store = job
        .ui
        .phase("forward", || run::collect(&corpus_job, reader, store))?;
    job.ui.phase("output", || store.save(&args.out))?;
    if checkpoint.exists() {
        std::fs::remove_file(&checkpoint)
            .with_context(|| format!("cannot remove {}", checkpoint.display()))?;
    }
    let skipped: u64 = store.header.skipped.values().sum();
    let reasons: Vec<String> = store
        .header
        .skipped
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    let shard_note = if shard.count > 1 {
        format!(" (shard {}/{})", shard.index, shard.count)
    } else {
        String::new()
    };
    job.ui.note(format!(
        "wrote {}{shard_note}: {} documents, {} tokens, {} features{}",
        args.out.display(),
        store.header.documents,
        store.header.tokens,
        store.features.len(),
        if skipped > 0 {
            format!("; skipped {skipped} documents ({})", reasons.join(", "))
        } else {
            String::new()
        }
    ));
    job.note_disk_reads(&model);
    job.ui.report_phases();
    Ok(ExitCode::SUCCESS)
}

/// The store to fill: the checkpoint's when one is there for this very run, else a fresh one.
fn resume_or_start(
    ui: &Ui,
    checkpoint: &Path,
    identity: &RunIdentity,
    columns: &[u32],
    shard: Shard,
    restart: bool,
) -> Result<Store> {
    let fresh = || Store::new(identity.clone(), columns.to_vec());
    if restart {
        if checkpoint.exists() {
            std::fs::remove_file(checkpoint)
                .with_context(|| format!("cannot remove {}", checkpoint.display()))?;
        }
        return Ok(fresh());
    }
    if !checkpoint.exists() {
        return Ok(fresh());
    }
    let store = Store::open(checkpoint).map_err(|e| {
        anyhow::anyhow!(
            "the checkpoint {} is corrupt ({}): rerun with --restart to start afresh",
            checkpoint.display(),
            crate::error_line(&e)
        )
    })?;
    let shards = (shard.count > 1).then_some(shard.count);
    let same_shard = match (&store.header.shards, shards) {
        (None, None) => true,
        (Some(s), Some(n)) => s.count == n && s.parts == [shard.index],
        _ => false,
    };
    let Some(progress) = &store.header.progress else {
        bail!(
            "{} is not a checkpoint: rerun with --restart to start afresh",
            checkpoint.display()
        );
    };
    if store.header.identity != *identity || !same_shard || store.features != columns {
        bail!(
            "the checkpoint {} was made by a different command (model, SAE, corpus options or \
             shard): rerun with --restart to start afresh",
            checkpoint.display()
        );
    }
    ui.note(format!(
        "resuming from {} at batch {} ({} documents done)",
        checkpoint.display(),
        progress.next_batch,
        store.header.documents
    ));
    Ok(store)
}

pub fn run_merge(args: MergeArgs, ui: Ui) -> Result<ExitCode> {
    let merged = merge::merge_files(&args.parts, args.allow_partial)?;
    merged.save(&args.out)?;
    match &merged.header.shards {
        None => ui.note(format!(
            "wrote {}: complete, {} documents",
            args.out.display(),
            merged.header.documents
        )),
        Some(s) => ui.note(format!(
            "wrote {}: shards {:?} of {} ({} documents)",
            args.out.display(),
            s.parts,
            s.count,
            merged.header.documents
        )),
    }
    Ok(ExitCode::SUCCESS)
}
