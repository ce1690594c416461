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
use gemscope::model::{HookPoint, NoHook, Parts, Site};
use gemscope::pipeline::{self, PromptInput};
use gemscope::sae::{JumpReluSae, SaeParts};
use std::time::{Duration, Instant};

mod synthetic;
use synthetic::*;

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
