//! One module per subcommand, each wiring flags to the library pieces and writing the result.

pub mod activations;
pub mod features;
pub mod list_saes;

use crate::model::{Config, Site};
use anyhow::{ensure, Result};

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
