//! Gemma 2: its configuration, the hooked forward pass, and loading a checkpoint onto a device.

pub mod config;
pub mod gemma2;
pub mod hook;
pub mod weights;

pub use config::{AttentionKind, Config};
pub use gemma2::{Gemma2, KvCache, Parts, SequenceContext};
pub use hook::{Capture, Hook, HookPoint, NoHook, Site};

use crate::hub::ModelFiles;
use anyhow::{Context, Result};
use candle_core::{DType, Device};

/// Maps the weight files holding `parts` of the checkpoint in `files`; blocks are converted to
/// `dtype` on `device` when built (at once if resident, else as they run).
pub fn load(files: &ModelFiles, parts: Parts, dtype: DType, device: &Device) -> Result<Gemma2> {
    let paths = files.weight_files(parts)?;
    let weights = weights::MappedWeights::open(&paths)
        .with_context(|| format!("cannot read the weights of {}", files.source))?;
    Gemma2::new(
        &files.config,
        parts,
        std::sync::Arc::new(weights),
        dtype,
        device,
    )
    .with_context(|| format!("cannot load the weights of {}", files.source))
}
