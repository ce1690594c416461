//! Benchmark of the `features` data path on a synthetic model of Gemma-2-2B width (2304 hidden,
//! 9216 FFN, 8 heads of 256, 4 KV heads), a few layers, and a 16k-wide SAE: tokens/s and where the
//! time goes (forward, SAE encode+decode, metrics). Run: `cargo bench --bench features`.
//!
//! Then greedy generation with the KV cache on the whole synthetic model: tokens/s.
//!
//! Env: `GEMSCOPE_BENCH_LAYERS` (default 4), `GEMSCOPE_BENCH_ITERS` (default 5),
//! `GEMSCOPE_BENCH_NEW_TOKENS` (default 8).

use candle_core::{DType, Device, Tensor};
use gemscope::generate::{self, GenerateOptions, Sampling};
use gemscope::hub::ModelFiles;
use gemscope::model::{self, HookPoint, NoHook, Parts, Site};
use gemscope::pipeline::{self, PromptInput};
use gemscope::sae::{JumpReluSae, SaeParts};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const HIDDEN: usize = 2304;
const FFN: usize = 9216;
const HEADS: usize = 8;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 256;
const VOCAB: usize = 8192;
const D_SAE: usize = 16384;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu).unwrap()
}

/// Writes a random Gemma-2-2B-shaped checkpoint with `layers` blocks into `dir`.
fn write_model(dir: &Path, layers: usize) {
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
        tensors.insert(
            format!("{p}.self_attn.q_proj.weight"),
            linear(HEADS * HEAD_DIM, HIDDEN),
        );
        tensors.insert(
            format!("{p}.self_attn.k_proj.weight"),
            linear(KV_HEADS * HEAD_DIM, HIDDEN),
        );
        tensors.insert(
            format!("{p}.self_attn.v_proj.weight"),
            linear(KV_HEADS * HEAD_DIM, HIDDEN),
        );
        tensors.insert(
            format!("{p}.self_attn.o_proj.weight"),
            linear(HIDDEN, HEADS * HEAD_DIM),
        );
        tensors.insert(format!("{p}.mlp.gate_proj.weight"), linear(FFN, HIDDEN));
        tensors.insert(format!("{p}.mlp.up_proj.weight"), linear(FFN, HIDDEN));
        tensors.insert(format!("{p}.mlp.down_proj.weight"), linear(HIDDEN, FFN));
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
fn write_sae(path: &Path) {
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

#[derive(Default)]
struct Timings {
    forward: Duration,
    encode: Duration,
    metrics: Duration,
    tokens: usize,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    let layers = env_usize("GEMSCOPE_BENCH_LAYERS", 4);
    let iters = env_usize("GEMSCOPE_BENCH_ITERS", 5);
    let dir = tempfile::tempdir().unwrap();
    eprintln!(
        "writing a {layers}-layer Gemma-2-2B-width checkpoint and a {D_SAE}-wide SAE to {}",
        dir.path().display()
    );
    write_model(dir.path(), layers);
    let sae_path = dir.path().join("sae.safetensors");
    write_sae(&sae_path);

    let device = Device::Cpu;
    let layer = layers - 1;
    let point = HookPoint {
        layer,
        site: Site::Res,
    };
    let started = Instant::now();
    let sae = JumpReluSae::load(&sae_path, HIDDEN, SaeParts::EncoderDecoder, &device).unwrap();
    let load_sae = started.elapsed();
    let files = ModelFiles::from_dir(dir.path()).unwrap();

    println!(
        "gemscope features benchmark: {layers} blocks of Gemma-2-2B width, hook at layer {layer} res, SAE {D_SAE} wide, CPU f32, {} threads",
        candle_core::utils::get_num_threads()
    );
    println!(
        "SAE load: {:.2} s (W_enc decoded into its transposed layout)",
        secs(load_sae)
    );
    // Streamed is how `features` runs (each block read from the mapped file when it runs, once
    // per prompt group); resident keeps the blocks in memory, which isolates the arithmetic.
    for (mode, parts) in [
        ("streamed", Parts::through_layer(layer)),
        (
            "resident",
            Parts {
                resident: true,
                ..Parts::through_layer(layer)
            },
        ),
    ] {
        let model = load_model(&files, parts, DType::F32, &device).unwrap();
        println!();
        println!("{mode} blocks");
        println!(
            "{:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "tokens", "tokens/s", "forward", "encode", "metrics", "total"
        );
        for len in [16usize, 64, 256] {
            let ids: Vec<u32> = std::iter::once(2)
                .chain((1..len).map(|i| (i * 7919 % (VOCAB - 4) + 4) as u32))
                .collect();
            let pieces: Vec<String> = ids.iter().map(|i| format!("t{i}")).collect();
            // Warm-up, then the timed iterations.
            pipeline::capture(&model, &ids, point).unwrap();
            let mut t = Timings::default();
            for _ in 0..iters {
                let start = Instant::now();
                let x = pipeline::capture(&model, &ids, point).unwrap();
                t.forward += start.elapsed();
                let start = Instant::now();
                let f = sae.encode(&x).unwrap();
                let x_hat = sae.decode(&f).unwrap();
                let _ = (f.to_vec2::<f32>().unwrap(), x_hat.to_vec2::<f32>().unwrap());
                let encode = start.elapsed();
                let start = Instant::now();
                let input = PromptInput {
                    index: 0,
                    text: "",
                    ids: &ids,
                    pieces: pieces.clone(),
                };
                pipeline::analyze(
                    input,
                    &x,
                    &pipeline::encode(&x, &sae).unwrap(),
                    sae.d_sae(),
                    point,
                    5,
                )
                .unwrap();
                // analyze encodes and decodes as above; what is left is the metrics' share.
                t.metrics += start.elapsed().saturating_sub(encode);
                t.encode += encode;
                t.tokens += len;
            }
            let per = |d: Duration| secs(d) / iters as f64 * 1e3;
            let total = t.forward + t.encode + t.metrics;
            println!(
                "{len:>7} {:>10.0} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1}ms",
                t.tokens as f64 / secs(total),
                per(t.forward),
                per(t.encode),
                per(t.metrics),
                per(total)
            );
        }
    }

    println!();
    // Why W_enc is transposed at load: the encode matmul with both operands contiguous along d_in.
    println!();
    let x = randn(&[64, HIDDEN], 1.0);
    let w_enc = randn(&[HIDDEN, D_SAE], 0.02);
    let w_enc_t = w_enc.t().unwrap().contiguous().unwrap();
    let time = |f: &dyn Fn() -> Tensor| {
        f();
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        secs(start.elapsed()) / iters as f64 * 1e3
    };
    let plain = time(&|| x.matmul(&w_enc).unwrap());
    let transposed = time(&|| x.matmul(&w_enc_t.t().unwrap()).unwrap());
    println!("encode matmul [64 x {HIDDEN}] @ W_enc: W_enc as stored [d_in, d_sae] {plain:.1} ms, transposed at load [d_sae, d_in] {transposed:.1} ms ({:.2}x)", plain / transposed);

    // Generation: greedy tokens with the KV cache, the whole model resident; the per-token
    // speed should barely depend on the prompt's length.
    println!();
    let full = load_model(&files, Parts::full(&files.config), DType::F32, &device).unwrap();
    let new_tokens = env_usize("GEMSCOPE_BENCH_NEW_TOKENS", 8);
    for len in [16usize, 256] {
        let ids: Vec<u32> = std::iter::once(2)
            .chain((1..len).map(|i| (i * 7919 % (VOCAB - 4) + 4) as u32))
            .collect();
        let options = GenerateOptions::new(new_tokens, Sampling::greedy(), Vec::new());
        let g = generate::generate(&full, &ids, &options, &mut NoHook, |_| Ok(())).unwrap();
        println!(
            "generate: prompt {len} tokens, {} new greedy tokens: prompt {:.2} s, {:.1} tokens/s after it",
            g.ids.len(),
            g.prefill_seconds,
            g.tokens_per_second().unwrap_or(0.0)
        );
    }
}

/// Maps the checkpoint's weight files for `parts` and builds the model, as a job does.
fn load_model(
    files: &gemscope::hub::ModelFiles,
    parts: Parts,
    dtype: DType,
    device: &candle_core::Device,
) -> anyhow::Result<gemscope::model::Gemma2> {
    let paths = files.weight_files(parts)?;
    model::load(&files.config, &paths, parts, dtype, device)
}
