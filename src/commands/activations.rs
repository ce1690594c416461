//! `gemscope activations`: the hooked activations of one prompt as a float32 `.npy` `[tokens, width]`.

use super::Job;
use crate::cli::ActivationsArgs;
use crate::model::Parts;
use crate::pipeline;
use crate::ui::Ui;
use anyhow::{ensure, Result};
use ndarray_npy::WriteNpyExt;
use std::process::ExitCode;

pub fn run(args: ActivationsArgs, ui: Ui) -> Result<ExitCode> {
    ensure!(!args.prompt.is_empty(), "the prompt is empty");
    let job = Job::open(&args.model, ui)?;
    let point = job.hook_point(&args.hook)?;
    let ids = job.tokenizer()?.encode(&args.prompt)?;
    let parts = Parts::through_layer(point.layer);
    let model = job.load_model(parts, &job.memory_plan(parts))?;
    let ui = &job.ui;
    let x = ui.phase("forward", || pipeline::capture(&model, &ids, point))?;
    let (tokens, width) = x.dims2()?;
    let array =
        ndarray::Array2::from_shape_vec((tokens, width), x.flatten_all()?.to_vec1::<f32>()?)?;
    ui.phase("output", || {
        crate::system::write_file_atomically(&args.out, |w| {
            array.write_npy(w).map_err(std::io::Error::other)
        })
    })?;
    ui.note(format!(
        "wrote layer {} {} activations [{tokens}, {width}] to {}",
        point.layer,
        point.site,
        args.out.display()
    ));
    ui.report_phases();
    Ok(ExitCode::SUCCESS)
}
