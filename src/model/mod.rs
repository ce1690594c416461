//! Gemma 2: its configuration, the hooked forward pass, and loading a checkpoint onto a device.

pub mod batch;
pub mod config;
pub mod differentiable;
pub mod gemma2;
pub mod hook;
pub mod in_place;
pub mod weights;

pub use batch::PaddedBatch;
pub use config::{AttentionKind, Config};
pub use gemma2::{Gemma2, KvCache, Parts, SequenceContext};
pub use hook::{Capture, Hook, HookPoint, MultiCapture, NoHook, Site};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use std::path::PathBuf;

/// Maps the safetensors files `weight_files` (which must hold every tensor of `parts`); blocks
/// are converted to `dtype` on `device` when built (at once if resident, else as they run). The
/// model knows nothing of where the files came from, as candle's `Model::new(cfg, vb)`.
pub fn load(
    cfg: &Config,
    weight_files: &[PathBuf],
    parts: Parts,
    dtype: DType,
    device: &Device,
) -> Result<Gemma2> {
    let weights = weights::MappedWeights::open(weight_files).context("cannot read the weights")?;
    Gemma2::new(cfg, parts, std::sync::Arc::new(weights), dtype, device)
        .context("cannot load the weights")
}
