//! The Gemma 2 `config.json`: read as the hub publishes it and as transformers 5 writes it, then validated.

use anyhow::{bail, ensure, Context};
use serde::Deserialize;
use std::path::Path;

/// `config.json` exactly as found on disk. Keys differ between the hub's checkpoints (written by
/// transformers 4: `torch_dtype`, `rope_theta`, `hidden_act`/`hidden_activation`) and files written
/// by transformers 5 (`dtype`, `rope_parameters`, `layer_types`), so most keys are optional here and
/// [`Config::from_raw`] settles them.
#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<RopeParameters>,
    pub rope_scaling: Option<serde_json::Value>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub hidden_activation: Option<String>,
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    pub max_position_embeddings: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
    pub pad_token_id: Option<u32>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub tie_word_embeddings: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
}

/// Whether a layer attends to the whole prefix or only to the last `sliding_window` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    Sliding,
    Global,
}

/// The MLP's activation. Gemma 2 ships `gelu_pytorch_tanh`; the others are accepted because
/// fine-tuned checkpoints sometimes rename it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluTanh,
    GeluErf,
}

/// A validated Gemma 2 configuration: every value the forward pass needs, with defaults resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub query_pre_attn_scalar: f64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: usize,
    pub layer_types: Vec<AttentionKind>,
    pub hidden_activation: Activation,
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: u32,
    /// `eos_token_id`, a number or a list of them in `config.json` (Gemma's `<eos>` is 1);
    /// empty when the config gives none.
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's own dtype name (`float32`, `bfloat16`, ...), if it says.
    pub checkpoint_dtype: Option<String>,
}

/// `eos_token_id` as a number, a list of numbers or null.
fn eos_ids(value: Option<&serde_json::Value>) -> anyhow::Result<Vec<u32>> {
    let as_id = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .with_context(|| format!("eos_token_id holds {v}, not a token id"))
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(ids)) => ids.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

impl Config {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid model config {}", path.display()))
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).context("config.json is not valid JSON")?;
        if let Some(model_type) = value.get("model_type").and_then(|v| v.as_str()) {
            ensure!(
                model_type == "gemma2",
                "model_type is {model_type:?}, but gemscope runs Gemma 2 (\"gemma2\") only"
            );
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if field == "." {
                anyhow::anyhow!("{inner}")
            } else {
                anyhow::anyhow!("field {field}: {inner}")
            }
        })?;
        Self::from_raw(raw)
    }

    pub fn from_raw(raw: RawConfig) -> anyhow::Result<Self> {
        if raw.model_type.is_none() {
            let is_gemma2 = raw.architectures.iter().any(|a| a.starts_with("Gemma2"));
            ensure!(
                is_gemma2,
                "config.json names neither model_type \"gemma2\" nor a Gemma2 architecture"
            );
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        ensure!(raw.vocab_size > 0, "vocab_size is 0");
        ensure!(raw.hidden_size > 0, "hidden_size is 0");
        ensure!(raw.intermediate_size > 0, "intermediate_size is 0");
        ensure!(raw.num_hidden_layers > 0, "num_hidden_layers is 0");
        ensure!(heads > 0, "num_attention_heads is 0");
        ensure!(kv_heads > 0, "num_key_value_heads is 0");
        ensure!(
            heads.is_multiple_of(kv_heads),
            "num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})"
        );
        // Gemma2Config's own defaults for the keys a checkpoint may omit.
        let head_dim = raw.head_dim.unwrap_or(256);
        ensure!(
            head_dim > 0 && head_dim.is_multiple_of(2),
            "head_dim must be even and positive, got {head_dim}"
        );
        let query_pre_attn_scalar = raw.query_pre_attn_scalar.unwrap_or(256.0);
        ensure!(
            query_pre_attn_scalar.is_finite() && query_pre_attn_scalar > 0.0,
            "query_pre_attn_scalar must be positive, got {query_pre_attn_scalar}"
        );
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        ensure!(
            rms_norm_eps.is_finite() && rms_norm_eps >= 0.0,
            "rms_norm_eps must be >= 0"
        );
        for (name, cap) in [
            ("attn_logit_softcapping", raw.attn_logit_softcapping),
            ("final_logit_softcapping", raw.final_logit_softcapping),
        ] {
            if let Some(cap) = cap {
                ensure!(
                    cap.is_finite() && cap > 0.0,
                    "{name} must be positive, got {cap}"
                );
            }
        }

        let rope_theta = match (&raw.rope_parameters, raw.rope_theta) {
            (Some(params), _) => {
                if let Some(kind) = &params.rope_type {
                    ensure!(
                        kind == "default",
                        "rope_type {kind:?} is not supported (Gemma 2 uses \"default\")"
                    );
                }
                params.rope_theta.or(raw.rope_theta).unwrap_or(10_000.0)
            }
            (None, theta) => theta.unwrap_or(10_000.0),
        };
        if let Some(scaling) = &raw.rope_scaling {
            ensure!(
                scaling.is_null(),
                "rope_scaling is not supported for Gemma 2, found {scaling}"
            );
        }
        ensure!(
            rope_theta.is_finite() && rope_theta > 0.0,
            "rope_theta must be positive"
        );

        let sliding_window = raw.sliding_window.unwrap_or(4096);
        ensure!(sliding_window > 0, "sliding_window is 0");
        let layer_types = match raw.layer_types {
            Some(types) => {
                ensure!(
                    types.len() == raw.num_hidden_layers,
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    raw.num_hidden_layers
                );
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(AttentionKind::Sliding),
                        "full_attention" => Ok(AttentionKind::Global),
                        other => bail!("unknown layer type {other:?} in layer_types"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
            // Gemma 2 alternates, starting with a sliding-window layer at layer 0.
            None => (0..raw.num_hidden_layers)
                .map(|i| {
                    if i % 2 == 0 {
                        AttentionKind::Sliding
                    } else {
                        AttentionKind::Global
                    }
                })
                .collect(),
        };

        let activation_name = raw
            .hidden_activation
            .or(raw.hidden_act)
            .unwrap_or_else(|| "gelu_pytorch_tanh".to_string());
        let hidden_activation = match activation_name.as_str() {
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            other => bail!("hidden activation {other:?} is not supported"),
        };

        if raw.tie_word_embeddings == Some(false) {
            bail!("tie_word_embeddings is false, but Gemma 2 ties its LM head to the embeddings");
        }

        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            query_pre_attn_scalar,
            rms_norm_eps,
            rope_theta,
            attn_logit_softcapping: raw.attn_logit_softcapping,
            final_logit_softcapping: raw.final_logit_softcapping,
            sliding_window,
            layer_types,
            hidden_activation,
            attention_bias: raw.attention_bias,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(8192),
            bos_token_id: raw.bos_token_id.unwrap_or(2),
            eos_token_ids: eos_ids(raw.eos_token_id.as_ref())?,
            checkpoint_dtype: raw.dtype.or(raw.torch_dtype),
        })
    }

    /// Width of the `att` site: the heads' outputs concatenated, the input of `o_proj`.
    pub fn attention_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Bytes the weights of `parts` take in memory in `dtype`: every block and the embedding when
    /// resident, one block at a time when streamed (the embedding rows are read from the mapped
    /// file then).
    pub fn weight_bytes(&self, parts: super::Parts, dtype: candle_core::DType) -> u64 {
        let bytes = dtype.size_in_bytes() as u64;
        if parts.resident {
            let embedding = if parts.head {
                (self.vocab_size * self.hidden_size) as u64 * bytes
            } else {
                0
            };
            self.block_parameters() * parts.blocks as u64 * bytes + embedding
        } else {
            self.block_parameters() * bytes
        }
    }

    /// Number of weights in one decoder block.
    pub fn block_parameters(&self) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let q = self.attention_width() as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        2 * h * q + 2 * h * kv + 3 * h * i + 4 * h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_style() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
            "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "sliding_window": 4096, "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh", "torch_dtype": "float32",
            "max_position_embeddings": 8192, "bos_token_id": 2, "eos_token_id": 1
        })
    }

    #[test]
    fn hub_config_alternates_sliding_and_global_from_layer_zero() {
        let cfg = Config::from_json(&hub_style().to_string()).unwrap();
        assert_eq!(cfg.layer_types[0], AttentionKind::Sliding);
        assert_eq!(cfg.layer_types[1], AttentionKind::Global);
        assert_eq!(cfg.layer_types[24], AttentionKind::Sliding);
        assert_eq!(cfg.layer_types[25], AttentionKind::Global);
        assert_eq!(cfg.checkpoint_dtype.as_deref(), Some("float32"));
        assert_eq!(cfg.attention_width(), 2048);
    }

    #[test]
    fn transformers5_config_reads_rope_parameters_and_layer_types() {
        let mut v = hub_style();
        let obj = v.as_object_mut().unwrap();
        obj.remove("rope_theta");
        obj.remove("torch_dtype");
        obj.insert("dtype".into(), "bfloat16".into());
        obj.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 5000.0}),
        );
        let mut types = vec!["full_attention"; 26];
        types[3] = "sliding_attention";
        obj.insert("layer_types".into(), serde_json::json!(types));
        let cfg = Config::from_json(&v.to_string()).unwrap();
        assert_eq!(cfg.rope_theta, 5000.0);
        assert_eq!(cfg.checkpoint_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(cfg.layer_types[0], AttentionKind::Global);
        assert_eq!(cfg.layer_types[3], AttentionKind::Sliding);
    }

    #[test]
    fn rejects_other_models_and_absurd_values() {
        let mut v = hub_style();
        v["model_type"] = "llama".into();
        let err = format!("{:#}", Config::from_json(&v.to_string()).unwrap_err());
        assert!(err.contains("\"llama\""), "{err}");

        let mut v = hub_style();
        v["num_key_value_heads"] = 3.into();
        let err = format!("{:#}", Config::from_json(&v.to_string()).unwrap_err());
        assert!(err.contains("not a multiple"), "{err}");

        let mut v = hub_style();
        v["num_attention_heads"] = 0.into();
        assert!(Config::from_json(&v.to_string()).is_err());

        let mut v = hub_style();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = format!("{:#}", Config::from_json(&v.to_string()).unwrap_err());
        assert!(err.contains("hidden_size"), "{err}");
    }
}
