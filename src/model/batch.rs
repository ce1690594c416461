//! Several prompts as one right-padded batch: the token tensor and the attention context that
//! keeps each prompt's real positions computing exactly what they would alone.

use super::{Gemma2, SequenceContext};
use anyhow::{ensure, Result};
use candle_core::Tensor;

/// Token ids `[prompts, longest]`, right-padded with token 0, and the masks that make padding
/// invisible: no real token attends to a padding key, so the pad value is irrelevant.
pub struct PaddedBatch {
    pub input: Tensor,
    /// Each prompt's real length (BOS included).
    pub lengths: Vec<usize>,
    pub ctx: SequenceContext,
}

impl PaddedBatch {
    /// Pads `prompts` (token ids, BOS first; none empty, none longer than the model's context).
    pub fn new(model: &Gemma2, prompts: &[Vec<u32>]) -> Result<Self> {
        let max = model.config().max_position_embeddings;
        ensure!(!prompts.is_empty(), "no prompt to run");
        for ids in prompts {
            ensure!(!ids.is_empty(), "no tokens to run");
            ensure!(
                ids.len() <= max,
                "the prompt has {} tokens, more than the model's context of {max}",
                ids.len()
            );
        }
        let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let padded: Vec<u32> = prompts
            .iter()
            .flat_map(|ids| {
                ids.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, longest - ids.len()))
            })
            .collect();
        let input = Tensor::from_vec(padded, (prompts.len(), longest), model.device())?;
        let ctx = SequenceContext::padded(model.config(), &lengths, model.dtype(), model.device())?;
        Ok(Self {
            input,
            lengths,
            ctx,
        })
    }

    /// The padded length: the longest prompt's.
    pub fn longest(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }
}
