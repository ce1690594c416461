//! The corpus job: records -> batches of `--batch-size` consecutive records -> this shard's
//! batches through the padded-batch forward pass of `eval`/`features` -> SAE encode (f32), one
//! document at a time -> the store. Checkpoints are written between batches and resumed.

use super::reader::{CorpusReader, Record, Skip};
use super::shard::Shard;
use super::store::{CorpusInfo, Progress, ShardSet, Store};
use crate::model::{Gemma2, HookPoint};
use crate::pipeline;
use crate::sae::{jumprelu, FeatureEncoder, JumpReluSae};
use crate::tokenizer::PromptTokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The SAE's encoder for every feature, or for the `--features` chosen, with their thresholds.
pub struct Encoder<'a> {
    source: EncoderSource<'a>,
    thresholds: Vec<f32>,
}

enum EncoderSource<'a> {
    All(&'a JumpReluSae),
    Some(FeatureEncoder),
}

impl<'a> Encoder<'a> {
    /// Every feature of `sae`.
    pub fn all(sae: &'a JumpReluSae) -> Result<Self> {
        Ok(Self {
            thresholds: sae.thresholds()?,
            source: EncoderSource::All(sae),
        })
    }

    /// Only `features` of `sae` (ids checked), in that order.
    pub fn some(sae: &JumpReluSae, features: &[usize]) -> Result<Self> {
        let encoder = sae.feature_encoder(features)?;
        Ok(Self {
            thresholds: encoder.thresholds()?,
            source: EncoderSource::Some(encoder),
        })
    }

    /// The feature activations `[tokens, features]` of `x`, row-major on the host: the
    /// pre-activations from the device, gated here in one pass (the same f32 as `encode`).
    fn encode(&self, x: &Tensor) -> Result<Vec<f32>> {
        let pre = match &self.source {
            EncoderSource::All(sae) => sae.pre_activations(x)?,
            EncoderSource::Some(encoder) => encoder.pre_activations(x)?,
        };
        let mut f = pre.flatten_all()?.to_vec1::<f32>()?;
        for row in f.chunks_exact_mut(self.thresholds.len()) {
            for (v, &threshold) in row.iter_mut().zip(&self.thresholds) {
                *v = jumprelu(*v, threshold);
            }
        }
        Ok(f)
    }
}

/// When to write the checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    pub path: PathBuf,
    /// Every this many batches of this shard; `None`: whenever `interval` has passed since the last.
    pub every: Option<u64>,
    pub interval: Duration,
}

/// Everything a corpus job needs besides the corpus and the store.
pub struct CorpusJob<'a> {
    pub model: &'a Gemma2,
    pub encoder: Encoder<'a>,
    pub point: HookPoint,
    pub tokenizer: &'a PromptTokenizer,
    pub max_tokens: usize,
    pub batch_size: usize,
    pub shard: Shard,
    pub checkpoint: Option<CheckpointPlan>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Runs the job over the corpus, adding this shard's documents to `store` (fresh, or resumed from
/// a checkpoint: then its `progress` says where to pick up). Returns the finished store.
pub fn collect(job: &CorpusJob<'_>, mut reader: CorpusReader, mut store: Store) -> Result<Store> {
    ensure!(job.batch_size >= 1, "--batch-size must be at least 1");
    let batch_size = job.batch_size as u64;
    let resume = store.header.progress.take();
    let start_batch = resume.as_ref().map_or(0, |p| p.next_batch);
    let bar = progress_bar(job.progress, reader.size_hint);
    let started = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut batches_done = 0u64;
    let mut tokens_done = 0u64;
    let mut current: Vec<Record> = Vec::new();
    // Reasons over the whole corpus (not only this shard), for the error when nothing is usable.
    let mut all_skips: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut any_document = false;
    loop {
        let record = reader.next_record()?;
        // Once the records the checkpoint read have been read again, they must hash the same.
        if let Some(p) = resume.as_ref().filter(|p| p.records == reader.records()) {
            if reader.hasher().hex() != p.sha256 {
                bail!(
                    "the corpus is not the one the checkpoint was made on (its first {} records \
                     differ): rerun with --restart to start afresh",
                    p.records
                );
            }
        }
        let Some(record) = record else { break };
        match &record.text {
            Ok(_) => any_document = true,
            Err(skip) => *all_skips.entry(skip.reason()).or_insert(0) += 1,
        }
        let batch = record.index / batch_size;
        let last_of_batch = (record.index + 1).is_multiple_of(batch_size);
        let mine = batch >= start_batch && job.shard.owns(batch);
        if mine {
            current.push(record);
        }
        if !last_of_batch {
            continue;
        }
        bar.set_position(reader.records());
        if mine {
            tokens_done += run_batch(job, &mut store, std::mem::take(&mut current))
                .with_context(|| format!("batch {batch}"))?;
            batches_done += 1;
            bar.set_message(rate(tokens_done, started));
            let due = match job.checkpoint.as_ref().and_then(|c| c.every) {
                Some(n) => batches_done.is_multiple_of(n),
                None => job
                    .checkpoint
                    .as_ref()
                    .is_some_and(|c| last_checkpoint.elapsed() >= c.interval),
            };
            if let (true, Some(plan)) = (due, &job.checkpoint) {
                store.header.progress = Some(Progress {
                    next_batch: batch + 1,
                    records: reader.records(),
                    sha256: reader.hasher().hex(),
                });
                store
                    .save(&plan.path)
                    .context("cannot write the checkpoint")?;
                store.header.progress = None;
                last_checkpoint = Instant::now();
            }
        }
    }
    // The last, partial batch.
    if !current.is_empty() {
        let batch = current[0].index / batch_size;
        run_batch(job, &mut store, current).with_context(|| format!("batch {batch}"))?;
    }
    bar.finish_and_clear();
    if let Some(p) = &resume {
        ensure!(
            reader.records() >= p.records,
            "the corpus is shorter than when the checkpoint was made ({} records, the checkpoint \
             read {}): rerun with --restart to start afresh",
            reader.records(),
            p.records
        );
    }
    ensure!(reader.records() > 0, "the corpus is empty");
    if !any_document {
        let reasons: Vec<String> = all_skips
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        bail!(
            "no record of the corpus is a usable document ({} records: {})",
            reader.records(),
            reasons.join(", ")
        );
    }
    store.header.corpus = Some(CorpusInfo {
        records: reader.records(),
        sha256: reader.hasher().hex(),
    });
    store.header.shards = (job.shard.count > 1).then(|| ShardSet {
        count: job.shard.count,
        parts: vec![job.shard.index],
    });
    Ok(store)
}

/// Tokenizes one batch's documents, runs them as one padded batch, and adds each to the store.
/// Returns the tokens run.
fn run_batch(job: &CorpusJob<'_>, store: &mut Store, records: Vec<Record>) -> Result<u64> {
    let mut documents: Vec<(u64, Arc<[u32]>)> = Vec::with_capacity(records.len());
    for record in records {
        let text = match record.text {
            Ok(text) => text,
            Err(skip) => {
                store.skip(skip.reason());
                continue;
            }
        };
        match job.tokenizer.encode(&text) {
            Ok(mut ids) if ids.len() >= 2 => {
                ids.truncate(job.max_tokens);
                documents.push((record.index, ids.into()));
            }
            Ok(_) => store.skip(Skip::Empty.reason()),
            Err(_) => store.skip(Skip::Tokenizer.reason()),
        }
    }
    if documents.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Vec<u32>> = documents.iter().map(|(_, ids)| ids.to_vec()).collect();
    let activations = pipeline::capture_many(job.model, &ids, job.point)?;
    let mut tokens = 0;
    for ((document, ids), x) in documents.iter().zip(activations) {
        let f = job.encoder.encode(&x)?;
        if let Some(bad) = f.iter().position(|v| !v.is_finite()) {
            let width = f.len() / ids.len();
            bail!(
                "document {document}: the SAE activation is not finite at token {}; the model \
                 overflowed (try --dtype f32)",
                bad / width
            );
        }
        store.add_document(*document, ids, &f);
        tokens += ids.len() as u64;
    }
    Ok(tokens)
}

fn progress_bar(show: bool, len: Option<u64>) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let template = match len {
        Some(_) => "{spinner} top-examples [{bar:30}] {pos}/{len} documents, {msg}, ETA {eta}",
        None => "{spinner} top-examples {pos} documents, {msg}",
    };
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.with_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    )
}

fn rate(tokens: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    format!("{:.0} tokens/s", tokens as f64 / secs)
}
