//! The one job every model command builds on: the shared option groups turned into a validated
//! plan once (device, dtype, model files, hook point, SAE and its dimensions, memory), then the
//! model and SAE opened from it. A command adds only its own logic on top.

use crate::cli::{dtype_name, select_device, GenerationArgs, HookArgs, ModelArgs, SaeArgs};
use crate::hub::{self, HubClient, HubOptions, ModelFiles, ResolvedSae, SaeRequest};
use crate::labels::{Labels, PendingLabels};
use crate::model::{self, Config, Gemma2, HookPoint, Parts, Site};
use crate::report::{ModelInfo, Neuronpedia, NeuronpediaInfo, PromptInfo, SaeInfo};
use crate::sae::{self, JumpReluSae, SaeParts};
use crate::system::MemoryPlan;
use crate::tokenizer::PromptTokenizer;
use crate::ui::Ui;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};

/// A model command's plan: where it runs, the model's files, and the hub client that fetches
/// more of them (weights, SAEs) once the command knows what it needs.
pub struct Job {
    pub ui: Ui,
    pub client: HubClient,
    pub files: ModelFiles,
    pub device: Device,
    pub dtype: DType,
}

impl Job {
    /// Device, dtype, the hub client (network and cache from the environment and `--offline`),
    /// and the model's config and tokenizer, local or downloaded. No weights yet.
    pub fn open(args: &ModelArgs, ui: Ui) -> Result<Self> {
        let device = select_device(args.device)?;
        let dtype = args.dtype_on(&device);
        let (client, files) = ui.phase("resolve", || -> Result<_> {
            let mut options = HubOptions::from_env(args.offline)?;
            options.progress &= !ui.quiet();
            let client = HubClient::new(options)?;
            let files = hub::resolve_model(&client, &args.model, &args.revision)?;
            Ok((client, files))
        })?;
        Ok(Self {
            ui,
            client,
            files,
            device,
            dtype,
        })
    }

    pub fn config(&self) -> &Config {
        &self.files.config
    }

    pub fn tokenizer(&self) -> Result<PromptTokenizer> {
        PromptTokenizer::from_file(&self.files.tokenizer, self.config().bos_token_id)
    }

    /// The hook point `--layer`/`--site` name, with the layer checked against the model's depth.
    pub fn hook_point(&self, args: &HookArgs) -> Result<HookPoint> {
        self.point(args.layer, args.site)
    }

    /// `layer` and `site` as a hook point, the layer checked against the model's depth.
    pub fn point(&self, layer: usize, site: Site) -> Result<HookPoint> {
        let n = self.config().num_hidden_layers;
        ensure!(
            layer < n,
            "--layer {layer} is out of range: the model has {n} layers (0..={})",
            n - 1
        );
        Ok(HookPoint { layer, site })
    }

    /// Each prompt's token ids (BOS first), cut to `max_tokens` if given, checked to hold a token
    /// after BOS and to fit the model's context. Runs before anything large is loaded, so a bad
    /// prompt fails fast.
    pub fn encode_prompts(
        &self,
        tokenizer: &PromptTokenizer,
        prompts: &[String],
        max_tokens: Option<usize>,
    ) -> Result<Vec<Vec<u32>>> {
        let limit = self.config().max_position_embeddings;
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

    /// Finds (and downloads, if needed) the SAE for `point`, reads its dimensions from the file
    /// header and checks them against the site; the resolver's remarks become notes.
    pub fn sae(&self, args: &SaeArgs, point: HookPoint) -> Result<SaePlan> {
        let resolved = self.ui.phase("resolve", || {
            hub::resolve_sae(
                &self.client,
                &SaeRequest {
                    sae: args.sae.clone(),
                    width: args.width.clone(),
                    l0: args.l0,
                    model_id: self.files.source.clone(),
                    layer: point.layer,
                    site: point.site,
                },
            )
        })?;
        for note in &resolved.notes {
            self.ui.note(note);
        }
        let (d_in, d_sae) = sae::read_dims(&resolved.path)?;
        check_sae_width(d_in, point.site, self.config())?;
        Ok(SaePlan {
            resolved,
            point,
            d_in,
            d_sae,
        })
    }

    /// A memory plan that starts with the weights of `parts` in the job's dtype.
    pub fn memory_plan(&self, parts: Parts) -> MemoryPlan {
        let cfg = self.config();
        let dtype = dtype_name(self.dtype);
        let mut plan = MemoryPlan::default();
        let bytes = cfg.weight_bytes(parts, self.dtype);
        let what = if !parts.resident {
            format!("one block in {dtype}")
        } else if parts.blocks == cfg.num_hidden_layers && parts.head {
            format!("the whole model in {dtype}")
        } else {
            format!("{} blocks in {dtype}", parts.blocks)
        };
        plan.add(what, bytes);
        if self.dtype == DType::F32 {
            plan.saving("--dtype bf16", bytes / 2);
        }
        plan
    }

    /// Checks `plan` against the memory available, fetches the weight files holding `parts`
    /// (only the shards a job needs), and maps them.
    pub fn load_model(&self, parts: Parts, plan: &MemoryPlan) -> Result<Gemma2> {
        plan.check_available()?;
        let paths = self.ui.phase("resolve", || {
            hub::fetch_weights(&self.client, &self.files, parts)?;
            self.files.weight_files(parts)
        })?;
        self.ui.phase("load", || {
            model::load(self.config(), &paths, parts, self.dtype, &self.device)
                .with_context(|| format!("cannot load the weights of {}", self.files.source))
        })
    }

    /// With `--verbose`, what the run read from disk because it was not in the page cache, and
    /// how long the reader took beside compute: on a cold run, whether the disk was the limit.
    pub fn note_disk_reads(&self, model: &Gemma2) {
        let (bytes, took) = model.disk_reads();
        if bytes > 0 {
            self.ui.detail(format!(
                "read {} of weights from disk (not in the page cache) in {:.3} s, {:.2} GB/s, beside compute",
                crate::system::gib(bytes),
                took.as_secs_f64(),
                bytes as f64 / took.as_secs_f64().max(1e-9) / 1e9
            ));
        }
    }

    /// The prompt of `generate`/`steer` tokenized (through the chat template with `--chat`), and
    /// the tokens that stop generation: the config's `eos_token_id` (else the vocabulary's
    /// `<eos>`), and `<end_of_turn>` when the vocabulary has it. Without those special tokens in
    /// the vocabulary, the template's markers are tokenized as ordinary text.
    pub fn generation_prompt(
        &self,
        args: &GenerationArgs,
    ) -> Result<(PromptTokenizer, PromptInfo)> {
        let cfg = self.config();
        let tokenizer = self.tokenizer()?;
        let prompt_text = args.prompt_text();
        let prompt_ids = tokenizer.encode(&prompt_text)?;
        let context = cfg.max_position_embeddings;
        ensure!(
            prompt_ids.len() + args.max_new_tokens <= context,
            "the prompt's {} tokens (BOS included) and --max-new-tokens {} exceed the model's context of {context}",
            prompt_ids.len(),
            args.max_new_tokens
        );
        let mut stop_ids = cfg.eos_token_ids.clone();
        if stop_ids.is_empty() {
            stop_ids.extend(tokenizer.token_id("<eos>"));
        }
        if let Some(id) = tokenizer.token_id("<end_of_turn>") {
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
        let info = PromptInfo {
            prompt: args.prompt.clone(),
            chat: args.chat,
            prompt_text,
            prompt_ids,
            stop_ids,
        };
        Ok((tokenizer, info))
    }

    /// Starts reading the SAE's Neuronpedia labels on a thread beside the computation (pulling
    /// them when missing and the network is allowed), unless `wanted` is false or Neuronpedia
    /// does not host the SAE.
    pub fn pending_labels(&self, sae: &SaePlan, wanted: bool) -> PendingLabels {
        PendingLabels::start_if(
            sae.neuronpedia().filter(|_| wanted),
            sae.d_sae,
            sae.point.layer,
            self.client.offline(),
            self.ui.quiet(),
        )
    }

    /// The labels of a pending read, its notes printed (a failed fetch is a note, never an error).
    pub fn finish_labels(&self, pending: PendingLabels) -> Option<Labels> {
        let (labels, notes) = pending.finish();
        for note in notes {
            self.ui.note(note);
        }
        labels
    }

    /// The report's description of the model and where it ran.
    pub fn model_info(&self) -> ModelInfo {
        ModelInfo {
            source: self.files.source.clone(),
            revision: self.files.revision.clone(),
            num_layers: self.config().num_hidden_layers,
            hidden_size: self.config().hidden_size,
            device: device_name(&self.device).to_string(),
            dtype: dtype_name(self.dtype).to_string(),
        }
    }
}

/// The SAE a job reads a hook point with: resolved to a file, its dimensions known and checked,
/// not yet loaded.
pub struct SaePlan {
    pub resolved: ResolvedSae,
    pub point: HookPoint,
    pub d_in: usize,
    pub d_sae: usize,
}

impl SaePlan {
    /// Fails unless `feature` exists; `flag` names it for the message (`--feature`).
    pub fn check_feature(&self, flag: &str, feature: usize) -> Result<()> {
        JumpReluSae::check_feature(self.d_sae, feature, flag)
    }

    /// Adds the SAE's parameters to `plan` (the decoder as its own line, with `--encode-only`
    /// as the saving when the command offers it).
    pub fn add_to(&self, plan: &mut MemoryPlan, parts: SaeParts, offer_encode_only: bool) {
        let encoder = JumpReluSae::param_bytes(self.d_in, self.d_sae, SaeParts::EncoderOnly);
        let all = JumpReluSae::param_bytes(self.d_in, self.d_sae, parts);
        if offer_encode_only {
            plan.add("SAE encoder", encoder);
            if all > encoder {
                plan.add("SAE decoder", all - encoder);
                plan.saving("--encode-only", all - encoder);
            }
        } else {
            plan.add("SAE", all);
        }
    }

    pub fn load(&self, ui: &Ui, parts: SaeParts, device: &Device) -> Result<JumpReluSae> {
        ui.phase("load", || self.read(parts, device))
    }

    /// The SAE's parameters read from its file (no phase timing: for any thread).
    fn read(&self, parts: SaeParts, device: &Device) -> Result<JumpReluSae> {
        JumpReluSae::load(&self.resolved.path, self.d_in, parts, device)
    }

    /// Loads the SAE on a thread while `work` (the first forward pass) runs on this one, and
    /// returns both. The load is mostly first touches of 300 MB of fresh memory (a 16k SAE of 2B
    /// width), slow and variable on a VM (0.13-0.9 s measured), and the blocks do not need it;
    /// the `load` phase counts only the wait left after `work`.
    pub fn load_beside<T>(
        &self,
        ui: &Ui,
        parts: SaeParts,
        device: &Device,
        work: impl FnOnce() -> T,
    ) -> (Result<JumpReluSae>, T) {
        std::thread::scope(|scope| {
            let loading = scope.spawn(|| self.read(parts, device));
            let done = work();
            let sae = ui.phase("load", || loading.join()).unwrap_or_else(|panic| {
                std::panic::resume_unwind(panic);
            });
            (sae, done)
        })
    }

    pub fn neuronpedia(&self) -> Option<&Neuronpedia> {
        self.resolved.neuronpedia.as_ref()
    }

    /// The report's description of the SAE.
    pub fn info(&self) -> SaeInfo {
        let resolved = &self.resolved;
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
            d_in: self.d_in,
            d_sae: self.d_sae,
            neuronpedia: resolved.neuronpedia.as_ref().map(NeuronpediaInfo::from),
        }
    }
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

pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
