//! Hook points inside the Gemma 2 forward pass and the `Hook` trait that reads or rewrites them.

use candle_core::{Result, Tensor};

/// A place in a decoder block where Gemma Scope SAEs were trained.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Site {
    /// The residual stream after the block: the output of `model.layers[L]`.
    Res,
    /// The MLP output after `post_feedforward_layernorm`: what the MLP adds to the residual.
    Mlp,
    /// The attention heads' outputs concatenated head-major: the input of `o_proj` (SAELens `hook_z`).
    Att,
}

impl Site {
    pub fn name(self) -> &'static str {
        match self {
            Site::Res => "res",
            Site::Mlp => "mlp",
            Site::Att => "att",
        }
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One site of one zero-indexed layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct HookPoint {
    pub layer: usize,
    pub site: Site,
}

/// Called at every hook point, in forward order, with the activation `[batch, seq, width]`.
/// Returning `Some(t)` replaces the activation for everything downstream: steering returns
/// `x + v`, splicing returns an SAE reconstruction; reading returns `None`.
pub trait Hook {
    fn visit(&mut self, point: HookPoint, activation: &Tensor) -> Result<Option<Tensor>>;
}

impl<F> Hook for F
where
    F: FnMut(HookPoint, &Tensor) -> Result<Option<Tensor>>,
{
    fn visit(&mut self, point: HookPoint, activation: &Tensor) -> Result<Option<Tensor>> {
        self(point, activation)
    }
}

/// A hook that reads nothing and changes nothing.
pub struct NoHook;

impl Hook for NoHook {
    fn visit(&mut self, _: HookPoint, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Keeps a copy of the activation at one hook point.
#[derive(Debug)]
pub struct Capture {
    pub point: HookPoint,
    pub value: Option<Tensor>,
}

impl Capture {
    pub fn new(point: HookPoint) -> Self {
        Self { point, value: None }
    }
}

impl Hook for Capture {
    fn visit(&mut self, point: HookPoint, activation: &Tensor) -> Result<Option<Tensor>> {
        if point == self.point {
            self.value = Some(activation.clone());
        }
        Ok(None)
    }
}

/// Keeps a copy of the activation at each of several hook points (one forward pass reads them
/// all: `features --layers`).
#[derive(Debug)]
pub struct MultiCapture {
    pub points: Vec<HookPoint>,
    /// The activation of `points[i]`, once the pass has reached it.
    pub values: Vec<Option<Tensor>>,
}

impl MultiCapture {
    pub fn new(points: Vec<HookPoint>) -> Self {
        let values = vec![None; points.len()];
        Self { points, values }
    }
}

impl Hook for MultiCapture {
    fn visit(&mut self, point: HookPoint, activation: &Tensor) -> Result<Option<Tensor>> {
        if let Some(i) = self.points.iter().position(|&p| p == point) {
            self.values[i] = Some(activation.clone());
        }
        Ok(None)
    }
}
