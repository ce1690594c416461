//! The synthetic Gemma-2-2B-width checkpoint and 16k SAE the Rust benches run on (2304 hidden,
//! 9216 FFN, 8 heads of 256, 4 KV heads, an 8192-token vocabulary, random f32 weights).

#![allow(dead_code)] // each bench uses its own part of this module

use candle_core::{DType, Device, Tensor};
use gemscope::hub::ModelFiles;
use gemscope::model::{self, Gemma2, Parts};
use std::collections::HashMap;
use std::path::Path;

pub const HIDDEN: usize = 2304;
pub const FFN: usize = 9216;
pub const HEADS: usize = 8;
pub const KV_HEADS: usize = 4;
pub const HEAD_DIM: usize = 256;
pub const VOCAB: usize = 8192;
pub const D_SAE: usize = 16384;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu).unwrap()
}

/// Writes `config.json` and `model.safetensors` of a random checkpoint with `layers` blocks.
pub fn write_model(dir: &Path, layers: usize) {
    let config = serde_json::json!({
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "bos_token_id": 2,
        "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert(
        "model.embed_tokens.weight".into(),
        randn(&[VOCAB, HIDDEN], 0.02),
    );
    tensors.insert("model.norm.weight".into(), randn(&[HIDDEN], 0.1));
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let linear = |out: usize, inp: usize| randn(&[out, inp], (inp as f64).powf(-0.5));
        for (name, out, inp) in [
            ("self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN),
            ("self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN),
            ("self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN),
            ("self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM),
            ("mlp.gate_proj", FFN, HIDDEN),
            ("mlp.up_proj", FFN, HIDDEN),
            ("mlp.down_proj", HIDDEN, FFN),
        ] {
            tensors.insert(format!("{p}.{name}.weight"), linear(out, inp));
        }
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            tensors.insert(format!("{p}.{norm}.weight"), randn(&[HIDDEN], 0.1));
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

/// Writes a random 16k-wide JumpReLU SAE (safetensors, Gemma Scope tensor names).
pub fn write_sae(path: &Path) {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert(
        "W_enc".into(),
        randn(&[HIDDEN, D_SAE], (HIDDEN as f64).powf(-0.5)),
    );
    tensors.insert(
        "W_dec".into(),
        randn(&[D_SAE, HIDDEN], (D_SAE as f64).powf(-0.5)),
    );
    tensors.insert("b_enc".into(), randn(&[D_SAE], 0.01));
    tensors.insert("b_dec".into(), randn(&[HIDDEN], 0.01));
    tensors.insert(
        "threshold".into(),
        (randn(&[D_SAE], 0.1).abs().unwrap() + 0.5).unwrap(),
    );
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Maps the checkpoint's weight files for `parts` and builds the model, as a job does.
pub fn load_model(
    files: &ModelFiles,
    parts: Parts,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<Gemma2> {
    let paths = files.weight_files(parts)?;
    model::load(&files.config, &paths, parts, dtype, device)
}
