//! `gemscope explain`: feature cards (labels, logit effects, decoder neighbours, norms) from the
//! SAE, the checkpoint's embedding and final norm (no block is loaded), and the label cache.

use super::labels::client as neuronpedia_client;
use super::{Job, SaePlan};
use crate::card;
use crate::cli::ExplainArgs;
use crate::corpus;
use crate::hub;
use crate::labels::{self, cache, Labels};
use crate::model::weights::MappedWeights;
use crate::model::Parts;
use crate::output;
use crate::report::card::{ExplainReport, FeatureCard, LogitEffects, Neighbour, TokenEffect};
use crate::report::SCHEMA_VERSION;
use crate::sae::SaeParts;
use crate::tokenizer::PromptTokenizer;
use crate::ui::Ui;
use anyhow::{ensure, Context, Result};
use candle_core::Device;
use std::io::Write;
use std::process::ExitCode;

/// How much of a card to compute.
pub(crate) struct CardOptions {
    /// Promoted and suppressed tokens listed.
    pub tokens: usize,
    /// Decoder neighbours listed.
    pub neighbours: usize,
    /// Show Neuronpedia labels (from the cache, fetched when allowed).
    pub labels: bool,
    /// Also ask Neuronpedia's per-feature API for its density and max (one request a feature,
    /// cached): for a few cards, not for a dashboard of thousands.
    pub page_data: bool,
}

/// The feature cards of `features` (ids checked by the caller) of the SAE in `sae_plan`: labels,
/// logit effects, neighbours, norms and threshold. Reads the embedding and final norm from the
/// checkpoint (no block) and computes on the CPU in f32: a few matrix-vector products. Also
/// returns where the labels came from, when they did.
pub(crate) fn feature_cards(
    job: &Job,
    sae_plan: &SaePlan,
    tokenizer: &PromptTokenizer,
    features: &[usize],
    options: &CardOptions,
) -> Result<(Vec<FeatureCard>, Option<String>)> {
    let (d_in, d_sae, point) = (sae_plan.d_in, sae_plan.d_sae, sae_plan.point);

    // Only the embedding matrix and the final norm: no block.
    let parts = Parts {
        blocks: 0,
        head: true,
        resident: false,
    };
    let paths = job.ui.phase("resolve", || -> Result<_> {
        hub::fetch_weights(&job.client, &job.files, parts)?;
        job.files.weight_files(parts)
    })?;
    let weights = MappedWeights::open(&paths)
        .with_context(|| format!("cannot read the weights of {}", job.files.source))?;
    let norm_weight = card::final_norm_weight(&weights)?;
    ensure!(
        norm_weight.len() == d_in,
        "the final norm has {} weights, but the SAE reads {d_in} dimensions: logit effects need \
         an SAE that writes the residual stream (--site res or mlp)",
        norm_weight.len()
    );
    let sae = sae_plan.load(&job.ui, SaeParts::EncoderDecoder, &Device::Cpu)?;
    let (w_enc_t, b_enc, threshold) = sae.encoder_weights();
    let w_enc_t = w_enc_t.flatten_all()?.to_vec1::<f32>()?;
    let b_enc = b_enc.to_vec1::<f32>()?;
    let threshold = threshold.to_vec1::<f32>()?;
    let w_dec = sae
        .decoder_weights()
        .context("the SAE decoder was not loaded")?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let row = |m: &[f32], f: usize| -> Vec<f32> { m[f * d_in..(f + 1) * d_in].to_vec() };

    let directions: Vec<Vec<f32>> = features
        .iter()
        .map(|&f| card::through_final_norm(&row(&w_dec, f), &norm_weight))
        .collect();
    let effects = job
        .ui
        .phase("metrics", || card::logit_effects(&weights, &directions))?;

    // Labels and Neuronpedia's page data: notes, never errors.
    let neuronpedia = sae_plan.neuronpedia().filter(|_| options.labels);
    let mut labels: Option<Labels> = None;
    let mut source = None;
    if let Some(np) = neuronpedia {
        let np_client = neuronpedia_client(job.client.offline(), &job.ui)?;
        match cache::cache_dir() {
            Ok(dir) => {
                let (found, notes) =
                    labels::labels_for_display(&np_client, &dir, np, d_sae, point.layer);
                for note in notes {
                    job.ui.note(note);
                }
                labels = found;
                source = Some((np_client, dir));
            }
            Err(err) => job
                .ui
                .note(format!("labels are not shown: {}", crate::error_line(&err))),
        }
    }

    let token = |r: &card::Ranked| TokenEffect {
        id: r.id,
        token: tokenizer.piece(r.id),
        value: r.value,
    };
    let label_of = |f: u32| labels.as_ref().and_then(|l| l.label(f).map(str::to_string));
    let mut cards = Vec::with_capacity(features.len());
    for (&f, effect) in features.iter().zip(&effects) {
        let (positive, negative) = card::extremes(effect, options.tokens);
        let neighbours = card::neighbours(&w_dec, d_in, f, options.neighbours)
            .into_iter()
            .map(|r| Neighbour {
                feature: r.id,
                cosine: r.value,
                label: label_of(r.id),
            })
            .collect();
        let mut card = FeatureCard {
            feature: f as u32,
            label: label_of(f as u32),
            labels: labels
                .as_ref()
                .map(|l| l.labels(f as u32).to_vec())
                .unwrap_or_default(),
            threshold: threshold[f],
            encoder_norm: card::norm(&row(&w_enc_t, f)),
            decoder_norm: card::norm(&row(&w_dec, f)),
            encoder_bias: b_enc[f],
            logits: LogitEffects {
                positive: positive.iter().map(token).collect(),
                negative: negative.iter().map(token).collect(),
            },
            neighbours,
            neuronpedia_url: sae_plan.neuronpedia().map(|n| n.url(f as u32)),
            density: None,
            max_activation: None,
            tokens: None,
            active: None,
            histogram: None,
            examples: None,
        };
        if let (Some(np), Some((np_client, dir)), true) = (neuronpedia, &source, options.page_data)
        {
            let (info, note) = labels::feature_info(np_client, dir, np, f as u32);
            if let Some(note) = note {
                job.ui.note(note);
            }
            if let Some(info) = info {
                card.density = info.density;
                card.max_activation = info.max_activation;
                if card.labels.is_empty() && !info.labels.is_empty() {
                    card.label = info.labels.first().cloned();
                    card.labels = info.labels;
                }
            }
        }
        cards.push(card);
    }
    let labels_source = labels
        .as_ref()
        .filter(|l| !l.path().as_os_str().is_empty())
        .map(|l| l.path().display().to_string());
    Ok((cards, labels_source))
}

/// Reads a store's header and checks it holds this SAE's layer, site and width, so examples of
/// another SAE are never shown as this one's.
pub(crate) fn check_store(
    path: &std::path::Path,
    sae_plan: &SaePlan,
) -> Result<corpus::store::StoreHeader> {
    let header = corpus::store::read_store_header(path)?;
    let id = &header.identity;
    let point = sae_plan.point;
    ensure!(
        id.layer == point.layer && id.site == point.site.name() && id.d_sae == sae_plan.d_sae,
        "{} holds layer {} {} of a {}-feature SAE, not layer {} {} of this {}-feature SAE",
        path.display(),
        id.layer,
        id.site,
        id.d_sae,
        point.layer,
        point.site,
        sae_plan.d_sae
    );
    ensure!(
        header.shards.is_none() && header.progress.is_none(),
        "{} is a partial store (a shard or a checkpoint): merge the shards first",
        path.display()
    );
    Ok(header)
}

pub fn run(args: ExplainArgs, ui: Ui) -> Result<ExitCode> {
    ensure!(args.tokens >= 1, "--tokens must be at least 1");
    let job = Job::open(&args.model, ui)?;
    let point = job.hook_point(&args.hook)?;
    let sae_plan = job.sae(&args.sae, point)?;
    for &f in &args.features {
        sae_plan.check_feature("feature", f)?;
    }
    let options = CardOptions {
        tokens: args.tokens,
        neighbours: args.neighbours,
        labels: !args.no_labels,
        page_data: !args.no_labels,
    };
    // The store first: a mismatched one fails before any weight is read.
    let store_header = args
        .examples
        .as_deref()
        .map(|path| check_store(path, &sae_plan))
        .transpose()?;
    let tokenizer = job.tokenizer()?;
    let (mut cards, labels_source) =
        feature_cards(&job, &sae_plan, &tokenizer, &args.features, &options)?;
    if let (Some(path), Some(_)) = (&args.examples, &store_header) {
        for card in &mut cards {
            let Some(mut found) = corpus::store::read_feature(path, card.feature)? else {
                job.ui.note(format!(
                    "feature {} is not in {} (it was run with --features)",
                    card.feature,
                    path.display()
                ));
                continue;
            };
            found.spell(|id| tokenizer.piece(id));
            card.density = Some(found.density);
            card.max_activation = Some(found.max_activation as f64);
            card.tokens = Some(found.tokens);
            card.active = Some(found.active);
            card.histogram = Some(found.histogram);
            card.examples = Some(found.examples);
        }
    }

    let report = ExplainReport {
        schema_version: SCHEMA_VERSION,
        gemscope_version: env!("CARGO_PKG_VERSION"),
        model: job.model_info(),
        sae: sae_plan.info(),
        hook: point,
        labels_source,
        features: cards,
    };
    let mut out = super::stdout();
    job.ui.phase("output", || -> Result<()> {
        if args.json {
            output::json::write_json(&mut out, &report)?;
        } else {
            output::card::write_cards(&mut out, &report, job.ui.style(args.color))?;
        }
        out.flush()?;
        Ok(())
    })?;
    job.ui.report_phases();
    Ok(ExitCode::SUCCESS)
}
