//! Command-line flags (clap derive): the top-level parser, the global flags, and the option groups
//! commands share (model, SAE, hook, prompts, output, generation). Each subcommand's own flags are
//! in [`args`]. Turning flags into a validated plan happens in [`crate::commands::Job`].

pub mod args;

pub use args::*;

use crate::model::Site;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "gemscope",
    version,
    about = "Inspect Gemma 2 through Gemma Scope sparse autoencoders"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes: how much to say on stderr.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct GlobalArgs {
    /// No notes and no progress bars on stderr (errors and failed gates are still printed).
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print how long each phase took (resolve, load, forward, encode, metrics, output) on stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per-token SAE features, L0, variance explained and MSE for one or more prompts.
    Features(FeaturesArgs),
    /// Reconstruction quality over prompts (L0, variance explained, spliced CE loss, KL) with gates for CI.
    Eval(EvalArgs),
    /// Write the hooked activations of one prompt to a float32 .npy file [tokens, width].
    Activations(ActivationsArgs),
    /// List the Gemma Scope SAEs a release holds (layers, widths, L0s, canonical).
    ListSaes(ListSaesArgs),
    /// Continue a prompt with the model (KV-cached; greedy or sampled), streaming the text.
    Generate(GenerateArgs),
    /// Continue a prompt with and without SAE features added to the residual stream, side by side.
    Steer(SteerArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish) to standard output.
    Completions(CompletionsArgs),
    /// Print the gemscope(1) man page (roff) to standard output, or every page into a directory.
    Man(ManArgs),
    /// Neuronpedia labels (explanations) of Gemma Scope features: `labels pull` caches them.
    Labels(LabelsArgs),
    /// Feature cards: labels, the tokens a feature promotes and suppresses, its nearest decoder directions.
    Explain(ExplainArgs),
    /// Find features by what their labels say (BM25 over the cached labels, or Neuronpedia's search).
    Search(SearchArgs),
    /// An HTML dashboard of a top-examples store: index, cards, shaded examples (offline, one file or pages).
    Dashboard(DashboardArgs),
    /// Rank the SAE features behind one output token: gradient x activation through the later blocks.
    Attribute(AttributeArgs),
    /// Every feature's max-activating documents over a corpus, into a store (sharded, resumable).
    TopExamples(TopExamplesArgs),
    /// Combine the partial stores of a sharded `top-examples` run, exactly.
    Merge(MergeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when this build has it and a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F16 => DType::F16,
        }
    }
}

/// Where the model comes from and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A Hugging Face repo id (downloaded into the Hugging Face cache; gated Gemma repos need
    /// HF_TOKEN), or a local directory with config.json, tokenizer.json and model.safetensors
    /// (or shards with model.safetensors.index.json).
    #[arg(long, value_name = "REPO|DIR", default_value = crate::hub::models::DEFAULT_MODEL)]
    pub model: String,
    /// Branch, tag or commit of the model repo.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// Use only the Hugging Face cache, never the network (as HF_HUB_OFFLINE=1 does).
    #[arg(long)]
    pub offline: bool,
    /// Where to run the forward pass.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Model weights and activations dtype (the SAE always runs in f32). Default: f32 on the CPU,
    /// where it is fastest; bf16 on a GPU, as Gemma 2 was trained and published.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

impl ModelArgs {
    /// The dtype `--dtype` names, else the default for where the job runs.
    pub fn dtype_on(&self, device: &Device) -> DType {
        match self.dtype {
            Some(dtype) => dtype.dtype(),
            None => default_dtype(device.is_cuda()),
        }
    }
}

/// f32 on the CPU (bf16 has no fast kernels there and only converts), bf16 on a GPU.
pub fn default_dtype(on_gpu: bool) -> DType {
    if on_gpu {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Which SAE to read the activations with.
#[derive(Debug, Clone, Args)]
pub struct SaeArgs {
    /// A local params.npz (or .safetensors with the same tensor names), a hub path REPO/PATH to
    /// an SAE folder or file, or a release repo such as google/gemma-scope-2b-pt-res. Default:
    /// the Gemma Scope release for the model and site.
    #[arg(long, value_name = "FILE|REPO[/PATH]")]
    pub sae: Option<String>,
    /// SAE width within a release: 16k, 32k, 65k, 131k, 262k, 524k or 1m.
    #[arg(long, value_name = "WIDTH", default_value = "16k")]
    pub width: String,
    /// The release's average_l0_N folder: N, or canonical (the one closest to 100, as SAELens picks).
    #[arg(long, value_name = "N|canonical", default_value = "canonical")]
    pub l0: crate::hub::L0Choice,
}

/// Which activation to read.
#[derive(Debug, Clone, Args)]
pub struct HookArgs {
    /// Zero-indexed decoder layer to hook.
    #[arg(long, value_name = "N")]
    pub layer: usize,
    /// Site within the layer: res (block output), mlp (MLP output), att (heads concatenated, the input of o_proj).
    #[arg(long, value_enum, default_value_t = Site::Res)]
    pub site: Site,
}

#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// Prompts to run (BOS is prepended to each).
    #[arg(value_name = "PROMPT")]
    pub prompts: Vec<String>,
    /// Read prompts from a file, one per line, or JSONL with a "text" field; `-` reads standard
    /// input. Blank lines are skipped.
    #[arg(long, value_name = "FILE")]
    pub prompts_file: Option<PathBuf>,
}

impl PromptArgs {
    /// The prompts from the arguments, then from the file; at least one, none empty.
    pub fn collect(&self) -> Result<Vec<String>> {
        let mut prompts = Vec::new();
        for (i, p) in self.prompts.iter().enumerate() {
            ensure!(!p.is_empty(), "prompt {} is empty", i + 1);
            prompts.push(p.clone());
        }
        if let Some(path) = &self.prompts_file {
            let (name, bytes) = if path.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut bytes)
                    .context("cannot read prompts from standard input")?;
                ("standard input".to_string(), bytes)
            } else {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read prompts file {}", path.display()))?;
                (path.display().to_string(), bytes)
            };
            let from_file =
                parse_prompt_lines(&bytes).with_context(|| format!("bad prompts in {name}"))?;
            ensure!(!from_file.is_empty(), "{name} holds no prompts");
            prompts.extend(from_file);
        }
        ensure!(
            !prompts.is_empty(),
            "no prompt given: pass prompts as arguments or use --prompts-file"
        );
        Ok(prompts)
    }
}

/// The prompts of a prompts file: one per non-blank line (`\n` or `\r\n` endings), or, when the
/// first non-blank line is a JSON object with a string `text`, one JSON object per line (JSONL,
/// as datasets are exported) whose `text` is the prompt. Blank prompts are skipped in both forms.
pub fn parse_prompt_lines(bytes: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        anyhow::anyhow!("invalid UTF-8 on line {line} (byte {})", e.valid_up_to())
    })?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let is_jsonl = lines
        .first()
        .is_some_and(|(_, first)| json_text(first).is_some());
    if !is_jsonl {
        return Ok(lines.into_iter().map(|(_, l)| l.to_string()).collect());
    }
    lines
        .into_iter()
        .map(|(i, line)| {
            json_text(line).with_context(|| {
                format!("line {} is not a JSON object with a string \"text\"", i + 1)
            })
        })
        .filter(|text| !matches!(text, Ok(t) if t.trim().is_empty()))
        .collect()
}

fn json_text(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get("text")?.as_str().map(str::to_string)
}

/// The prompt and how to continue it (`generate`, `steer`).
#[derive(Debug, Clone, Args)]
pub struct GenerationArgs {
    /// The prompt to continue (BOS is prepended).
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
    /// Wrap the prompt in the Gemma chat template (for -it models): `<start_of_turn>user\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n`.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate (generation also stops at <eos> and <end_of_turn>).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy (the highest logit, ties to the lowest id).
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: draw from the smallest set of likeliest tokens holding this much probability.
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
}

impl GenerationArgs {
    /// The sampling settings, checked.
    pub fn sampling(&self) -> Result<crate::report::Sampling> {
        ensure!(
            self.max_new_tokens >= 1,
            "--max-new-tokens must be at least 1"
        );
        ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "--temperature must be 0 (greedy) or positive, not {}",
            self.temperature
        );
        ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1], not {}",
            self.top_p
        );
        ensure!(!self.prompt.is_empty(), "the prompt is empty");
        Ok(crate::report::Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        })
    }

    /// The text the tokenizer reads: the prompt, or the chat template around it.
    pub fn prompt_text(&self) -> String {
        if self.chat {
            crate::generate::chat_prompt(&self.prompt)
        } else {
            self.prompt.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    /// Colour when standard output is a terminal and NO_COLOR is not set.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print one JSON document (the schema is in the README).
    #[arg(long, conflicts_with = "jsonl")]
    pub json: bool,
    /// Print one JSON object per prompt per line, as each prompt finishes.
    #[arg(long)]
    pub jsonl: bool,
    /// Colour in the human table. NO_COLOR, when set, always turns it off.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

impl ColorArg {
    /// Whether to colour stdout: as asked, `auto` meaning a terminal; NO_COLOR always wins.
    /// Read once, when the plan is made ([`crate::ui::Ui::style`]).
    pub fn enabled(self) -> bool {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        match self {
            _ if no_color => false,
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto => std::io::stdout().is_terminal(),
        }
    }
}

/// The device the user asked for, or an error that says how to get it.
pub fn select_device(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "--device cuda: this gemscope was built without CUDA; rebuild it with \
                     `cargo install --path . --features cuda` (needs the CUDA toolkit)"
                );
            }
            Device::new_cuda(0).context("--device cuda: cannot open CUDA device 0")
        }
        DeviceArg::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                if let Ok(device) = Device::new_cuda(0) {
                    return Ok(device);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_defaults_to_f32_on_the_cpu_and_bf16_on_a_gpu_unless_named() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["gemscope", "generate", "--device", "cpu", "hi"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Generate(args) => args.model,
                _ => unreachable!(),
            }
        };
        assert_eq!(parse(&[]).dtype_on(&Device::Cpu), DType::F32);
        assert_eq!(
            parse(&["--dtype", "bf16"]).dtype_on(&Device::Cpu),
            DType::BF16
        );
        assert_eq!(default_dtype(true), DType::BF16);
        assert_eq!(default_dtype(false), DType::F32);
    }

    #[test]
    fn prompt_lines_skip_blanks_and_strip_crlf() {
        let lines = parse_prompt_lines(b"one\r\n\n  \ntwo\n").unwrap();
        assert_eq!(lines, vec!["one", "two"]);
        let jsonl =
            parse_prompt_lines(b"{\"text\": \"a b\", \"id\": 1}\n\n{\"text\": \"c\\nd\"}\n")
                .unwrap();
        assert_eq!(jsonl, vec!["a b", "c\nd"]);
        let err = parse_prompt_lines(b"{\"text\": \"a\"}\nplain\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        // Found by `cargo fuzz run prompts`: a blank JSONL text is skipped, as a blank line is.
        assert_eq!(
            parse_prompt_lines(b"{\"text\": \"\"}\n{\"text\": \"x\"}\n").unwrap(),
            vec!["x"]
        );
        assert!(parse_prompt_lines(b"{\"text\": \"  \"}\n")
            .unwrap()
            .is_empty());
        // A text prompt that merely looks like code stays text.
        assert_eq!(parse_prompt_lines(b"{ x: 1 }\n").unwrap(), vec!["{ x: 1 }"]);
        let err = parse_prompt_lines(b"ok\n\xff\xfe").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn flags_parse() {
        Cli::command_for_test();
    }

    impl Cli {
        fn command_for_test() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
