//! Benchmark of `features --layers` against one `features --layer` run per layer, on a synthetic
//! Gemma-2-2B-width checkpoint (2304 hidden, 9216 FFN, streamed f32 blocks) with a 16k SAE per
//! layer loaded one at a time; and of loading a 16k SAE's label index. Run:
//! `cargo bench --bench layers` (env `GEMSCOPE_BENCH_LAYERS`, default 6; `GEMSCOPE_BENCH_TOKENS`,
//! default 32).

use candle_core::{DType, Device, Tensor};
use gemscope::hub::{ModelFiles, Neuronpedia};
use gemscope::labels::{Cached, Labels};
use gemscope::model::{HookPoint, Parts, Site};
use gemscope::pipeline;
use gemscope::sae::{JumpReluSae, SaeParts};
use std::path::Path;
use std::time::Instant;

mod synthetic;
use synthetic::*;

/// Encodes (and decodes) `x` with the SAE loaded from `path`, dropping it after: what
/// `features` does per layer.
fn read_with_sae(path: &Path, x: &Tensor) -> f64 {
    let sae = JumpReluSae::load(path, HIDDEN, SaeParts::EncoderDecoder, &Device::Cpu).unwrap();
    let encoded = pipeline::encode(x, &sae).unwrap();
    encoded.f.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
}

fn main() {
    let layers = env_usize("GEMSCOPE_BENCH_LAYERS", 6);
    let tokens = env_usize("GEMSCOPE_BENCH_TOKENS", 32);
    let dir = tempfile::tempdir().unwrap();
    eprintln!(
        "writing a {layers}-layer Gemma-2-2B-width checkpoint and a {D_SAE}-wide SAE to {}",
        dir.path().display()
    );
    write_model(dir.path(), layers);
    write_sae(&dir.path().join("sae.safetensors"));
    let files = ModelFiles::from_dir(dir.path()).unwrap();
    let sae_path = dir.path().join("sae.safetensors");
    let ids: Vec<u32> = std::iter::once(2)
        .chain((1..tokens).map(|i| (i * 7919 % (VOCAB - 4) + 4) as u32))
        .collect();
    let prompts = vec![ids];
    let points: Vec<HookPoint> = (0..layers)
        .map(|layer| HookPoint {
            layer,
            site: Site::Res,
        })
        .collect();
    let parts = Parts::through_layer(layers - 1);
    let model = load_model(&files, parts, DType::F32, &Device::Cpu).unwrap();
    println!(
        "gemscope features --layers benchmark: {layers} streamed blocks of Gemma-2-2B width, \
         {tokens} tokens, a {D_SAE}-wide SAE per layer, CPU f32, {} threads",
        candle_core::utils::get_num_threads()
    );
    // Warm the page cache so both ways read the blocks from memory.
    pipeline::capture_points(&model, &prompts, &points).unwrap();

    let start = Instant::now();
    let all = pipeline::capture_points(&model, &prompts, &points).unwrap();
    let forward_once = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut check_once = 0.0;
    for acts in &all {
        check_once += read_with_sae(&sae_path, &acts[0]);
    }
    let saes_once = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut forward_each = 0.0;
    let mut check_each = 0.0;
    for &point in &points {
        let t = Instant::now();
        let x = pipeline::capture_many(&model, &prompts, point)
            .unwrap()
            .remove(0);
        forward_each += t.elapsed().as_secs_f64();
        check_each += read_with_sae(&sae_path, &x);
    }
    let total_each = start.elapsed().as_secs_f64();
    assert_eq!(
        check_once, check_each,
        "both ways must read the same activations"
    );
    println!(
        "one pass, {layers} layers: forward {forward_once:.2} s + SAEs {saes_once:.2} s = {:.2} s",
        forward_once + saes_once
    );
    println!(
        "{layers} runs of one layer: forward {forward_each:.2} s + SAEs {:.2} s = {total_each:.2} s \
         ({:.1}x the forward time; the blocks run {} times instead of {layers})",
        total_each - forward_each,
        forward_each / forward_once,
        layers * (layers + 1) / 2
    );

    // The label index of a 16k SAE with two explanations per feature.
    let cache = tempfile::tempdir().unwrap();
    let np = Neuronpedia {
        model: "gemma-2-2b".into(),
        sae_id: "20-gemmascope-res-16k".into(),
    };
    let mut labels = Labels::from_explanations(
        &np,
        (0..D_SAE as u32).flat_map(|f| {
            [
                (
                    f,
                    format!("feature {f}: references to things of kind {}", f % 97),
                ),
                (
                    f,
                    format!("tokens about topic {} in code and prose", f % 31),
                ),
            ]
        }),
    );
    labels.save(cache.path()).unwrap();
    let size = std::fs::metadata(labels.path()).unwrap().len();
    let start = Instant::now();
    let iters = 10;
    for _ in 0..iters {
        let Cached::Found(loaded) = Labels::load(cache.path(), &np).unwrap() else {
            panic!("the index did not load");
        };
        assert_eq!(loaded.len(), D_SAE);
    }
    println!(
        "label index of a {D_SAE}-feature SAE (2 explanations each): {:.2} MB, loads in {:.1} ms",
        size as f64 / 1e6,
        start.elapsed().as_secs_f64() * 1e3 / iters as f64
    );
}
