//! Gemma 2: its configuration, the hooked forward pass, and loading a checkpoint onto a device.

pub mod config;
pub mod gemma2;
pub mod hook;

pub use config::{AttentionKind, Config};
pub use gemma2::{Gemma2, Parts, SequenceContext};
pub use hook::{Capture, Hook, HookPoint, NoHook, Site};

use crate::hub::ModelFiles;
use anyhow::{Context, Result};
use candle_core::{DType, Device};

/// Loads `parts` of the checkpoint in `files`, memory-mapped, converting weights to `dtype`.
pub fn load(files: &ModelFiles, parts: Parts, dtype: DType, device: &Device) -> Result<Gemma2> {
    let paths = files.weight_files(parts)?;
    // Safety: the weight files are mapped read-only and gemscope never writes to them.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&paths, dtype, device) }
        .with_context(|| format!("cannot read the weights of {}", files.source))?;
    Gemma2::new(&files.config, parts, vb)
        .with_context(|| format!("cannot load the weights of {}", files.source))
}
