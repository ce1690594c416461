//! `gemscope activations`: the hooked activations of one prompt as a float32 `.npy` `[tokens, width]`.

use super::{hook_point, open_model};
use crate::cli::{select_device, HookArgs, ModelArgs};
use crate::hub;
use crate::model::{self, Parts};
use crate::output;
use crate::pipeline;
use crate::tokenizer::PromptTokenizer;
use anyhow::{ensure, Result};
use clap::Args;
use ndarray_npy::WriteNpyExt;
use std::path::PathBuf;
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

pub fn run(args: ActivationsArgs) -> Result<ExitCode> {
    ensure!(!args.prompt.is_empty(), "the prompt is empty");
    let device = select_device(args.model.device)?;
    let (client, files) = open_model(&args.model)?;
    let cfg = &files.config;
    let point = hook_point(&args.hook, cfg)?;
    let tokenizer = PromptTokenizer::from_file(&files.tokenizer, cfg.bos_token_id)?;
    let ids = tokenizer.encode(&args.prompt)?;
    let parts = Parts::through_layer(point.layer);
    hub::fetch_weights(&client, &files, parts)?;
    let model = model::load(&files, parts, args.model.dtype.dtype(), &device)?;
    let x = pipeline::capture(&model, &ids, point)?;
    let (tokens, width) = x.dims2()?;
    let array =
        ndarray::Array2::from_shape_vec((tokens, width), x.flatten_all()?.to_vec1::<f32>()?)?;
    output::write_file_atomically(&args.out, |w| {
        array.write_npy(w).map_err(std::io::Error::other)
    })?;
    eprintln!(
        "gemscope: wrote layer {} {} activations [{tokens}, {width}] to {}",
        point.layer,
        point.site,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
