//! One module per subcommand, each wiring flags to the library pieces and writing the result.

pub mod activations;
pub mod eval;
pub mod features;
pub mod generate;
pub mod list_saes;
pub mod steer;

use crate::cli::{device_name, dtype_name, HookArgs, ModelArgs, SaeArgs};
use crate::hub::{self, HubClient, HubOptions, ModelFiles, ResolvedSae, SaeRequest};
use crate::model::{Config, HookPoint, Site};
use crate::report::{ModelInfo, NeuronpediaInfo, SaeInfo};
use crate::tokenizer::PromptTokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};

/// The report's description of the model and where it ran.
pub fn model_info(files: &ModelFiles, device: &Device, dtype: DType) -> ModelInfo {
    ModelInfo {
        source: files.source.clone(),
        revision: files.revision.clone(),
        num_layers: files.config.num_hidden_layers,
        hidden_size: files.config.hidden_size,
        device: device_name(device).to_string(),
        dtype: dtype_name(dtype).to_string(),
    }
}

/// The hook point `--layer`/`--site` name, with the layer checked against the model's depth.
pub fn hook_point(args: &HookArgs, cfg: &Config) -> Result<HookPoint> {
    check_layer(args.layer, cfg)?;
    Ok(HookPoint {
        layer: args.layer,
        site: args.site,
    })
}

/// Each prompt's token ids (BOS first), cut to `max_tokens` if given, checked to hold a token
/// after BOS and to fit the model's context. Runs before anything large is loaded, so a bad
/// prompt fails fast.
pub fn encode_prompts(
    tokenizer: &PromptTokenizer,
    prompts: &[String],
    cfg: &Config,
    max_tokens: Option<usize>,
) -> Result<Vec<Vec<u32>>> {
    let limit = cfg.max_position_embeddings;
    prompts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut ids = tokenizer
                .encode(text)
                .with_context(|| format!("prompt {}", i + 1))?;
            if let Some(max) = max_tokens {
                ids.truncate(max);
            }
            ensure!(
                ids.len() <= limit,
                "prompt {} has {} tokens (BOS included), more than the model's context of {limit}",
                i + 1,
                ids.len()
            );
            ensure!(ids.len() >= 2, "prompt {} has no token after BOS", i + 1);
            Ok(ids)
        })
        .collect()
}

/// Checks `--layer` against the model's depth.
pub fn check_layer(layer: usize, cfg: &Config) -> Result<()> {
    let n = cfg.num_hidden_layers;
    ensure!(
        layer < n,
        "--layer {layer} is out of range: the model has {n} layers (0..={})",
        n - 1
    );
    Ok(())
}

/// Width of the activation at `site`: the hidden size for `res` and `mlp`, heads x head_dim for `att`.
pub fn site_width(cfg: &Config, site: Site) -> usize {
    match site {
        Site::Res | Site::Mlp => cfg.hidden_size,
        Site::Att => cfg.attention_width(),
    }
}

/// Fails unless an SAE's input width is the width of the hooked site, naming the site that would fit.
pub fn check_sae_width(d_in: usize, site: Site, cfg: &Config) -> Result<()> {
    let width = site_width(cfg, site);
    if d_in == width {
        return Ok(());
    }
    let fits: Vec<&str> = [Site::Res, Site::Mlp, Site::Att]
        .into_iter()
        .filter(|&s| site_width(cfg, s) == d_in)
        .map(Site::name)
        .collect();
    let hint = if fits.is_empty() {
        "no site of this model has that width".to_string()
    } else {
        format!("it fits --site {}", fits.join(" or --site "))
    };
    bail!("the SAE reads activations of width {d_in}, but site {site} has width {width}: {hint}");
}

/// The hub client (network and cache settings from the environment and `--offline`) and the
/// model's config and tokenizer, local or downloaded; weights are fetched later, once the job
/// knows which blocks it needs.
pub fn open_model(args: &ModelArgs) -> Result<(HubClient, ModelFiles)> {
    let client = HubClient::new(HubOptions::from_env(args.offline)?)?;
    let files = hub::resolve_model(&client, &args.model, &args.revision)?;
    Ok((client, files))
}

/// Finds (and downloads, if needed) the SAE for `point`, printing the resolver's notes on stderr.
pub fn resolve_sae(
    client: &HubClient,
    args: &SaeArgs,
    files: &ModelFiles,
    point: HookPoint,
) -> Result<ResolvedSae> {
    let request = SaeRequest {
        sae: args.sae.clone(),
        width: args.width.clone(),
        l0: args.l0,
        model_id: files.source.clone(),
        layer: point.layer,
        site: point.site,
    };
    let resolved = hub::resolve_sae(client, &request)?;
    for note in &resolved.notes {
        eprintln!("gemscope: note: {note}");
    }
    Ok(resolved)
}

/// The report's description of an SAE.
pub fn sae_info(resolved: &ResolvedSae, d_in: usize, d_sae: usize) -> SaeInfo {
    let file = resolved.path.display().to_string();
    let source = match (&resolved.repo, &resolved.path_in_repo) {
        (Some(repo), Some(path)) => format!("{repo}/{path}"),
        _ => file.clone(),
    };
    SaeInfo {
        source,
        file,
        repo: resolved.repo.clone(),
        path: resolved.path_in_repo.clone(),
        revision: resolved.revision.clone(),
        width: resolved.width.clone(),
        l0: resolved.l0,
        d_in,
        d_sae,
        neuronpedia: resolved.neuronpedia.as_ref().map(NeuronpediaInfo::from),
    }
}
