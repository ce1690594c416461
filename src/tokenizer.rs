//! Turning prompts into token ids with the model's `tokenizer.json`, BOS first, and ids back into pieces.

use anyhow::{ensure, Context, Result};
use std::path::Path;

pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
}

impl PromptTokenizer {
    pub fn from_file(path: &Path, bos: u32) -> Result<Self> {
        ensure!(
            path.is_file(),
            "tokenizer file {} not found",
            path.display()
        );
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        Ok(Self { inner, bos })
    }

    /// Token ids of `text`, BOS first. The tokenizer's post-processor normally adds BOS (as
    /// `add_special_tokens` does in Python); a tokenizer.json without one gets it prepended here,
    /// as transformers' `add_bos_token` would.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot tokenize prompt")?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.first() != Some(&self.bos) {
            ids.insert(0, self.bos);
        }
        Ok(ids)
    }

    /// The id of a token spelled exactly `piece` (`<end_of_turn>`), if the vocabulary has it.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// The text of `ids` as the tokenizer's decoder spells it, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot decode the generated tokens")
    }

    /// The vocabulary's spelling of a token (`▁Golden`, `<0x0A>`, `<bos>`).
    pub fn piece(&self, id: u32) -> String {
        self.inner
            .id_to_token(id)
            .unwrap_or_else(|| format!("<id {id}>"))
    }
}
