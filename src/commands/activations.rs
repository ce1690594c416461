//! `gemscope activations`: the hooked activations of one prompt as a float32 `.npy` `[tokens, width]`.

use super::{check_layer, open_model};
use crate::cli::{select_device, HookArgs, ModelArgs};
use crate::hub;
use crate::model::{self, HookPoint, Parts};
use crate::pipeline;
use crate::tokenizer::PromptTokenizer;
use anyhow::{ensure, Context, Result};
use clap::Args;
use ndarray_npy::WriteNpyExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ActivationsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub hook: HookArgs,
    /// Output file (.npy, float32, shape [tokens, width], the BOS row first).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The prompt (BOS is prepended).
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
}

/// Writes `array` to `path` through a temporary file in the same directory, so a failure never
/// leaves a partial file that looks complete.
fn write_npy_atomically(path: &Path, array: &ndarray::Array2<f32>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    {
        let mut writer = std::io::BufWriter::new(tmp.as_file_mut());
        array
            .write_npy(&mut writer)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::flush(&mut writer)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(args: ActivationsArgs) -> Result<ExitCode> {
    ensure!(!args.prompt.is_empty(), "the prompt is empty");
    let device = select_device(args.model.device)?;
    let (client, files) = open_model(&args.model)?;
    let cfg = &files.config;
    check_layer(args.hook.layer, cfg)?;
    let point = HookPoint {
        layer: args.hook.layer,
        site: args.hook.site,
    };
    let tokenizer = PromptTokenizer::from_file(&files.tokenizer, cfg.bos_token_id)?;
    let ids = tokenizer.encode(&args.prompt)?;
    let parts = Parts::through_layer(point.layer);
    hub::fetch_weights(&client, &files, parts)?;
    let model = model::load(&files, parts, args.model.dtype.dtype(), &device)?;
    let x = pipeline::capture(&model, &ids, point)?;
    let (tokens, width) = x.dims2()?;
    let array =
        ndarray::Array2::from_shape_vec((tokens, width), x.flatten_all()?.to_vec1::<f32>()?)?;
    write_npy_atomically(&args.out, &array)?;
    eprintln!(
        "gemscope: wrote layer {} {} activations [{tokens}, {width}] to {}",
        point.layer,
        point.site,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
