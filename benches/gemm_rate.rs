//! The GEMM rate gemscope's kernels reach on this machine at the shapes of one Gemma 2 block's
//! linear layers (q, k, v, o, gate, up, down), `x [rows, in] @ W[out, in]^T` exactly as
//! `model::gemma2::Linear` runs them on an f32 CPU model (`model::in_place::product`, W read where
//! it lies), timed block by block (the median is the rate to quote: on a shared VM single blocks
//! vary by 1.5x): the compute half of the machine limit that `benches/machine_limit.py` measures.
//! candle's own matmul (gemm's threading) is timed beside it for comparison. Prints one JSON line
//! per row count on stdout.
//!
//! Run: `cargo bench --bench gemm_rate -- [--rows 64,512] [--hidden 2304] [--ffn 9216]
//! [--q 2048] [--kv 1024] [--seconds 2]` (defaults: Gemma 2 2B).

use candle_core::{DType, Device, Tensor};
use gemscope::model::in_place::product;
use std::time::Instant;

struct Shape {
    rows: Vec<usize>,
    hidden: usize,
    ffn: usize,
    q: usize,
    kv: usize,
    seconds: f64,
}

fn parse_args() -> Shape {
    let mut shape = Shape {
        rows: vec![64, 512],
        hidden: 2304,
        ffn: 9216,
        q: 2048,
        kv: 1024,
        seconds: 2.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        // cargo bench passes `--bench` to every bench target; it takes no value.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || -> usize { value.parse().unwrap_or_else(|_| panic!("{flag} {value}")) };
        match flag.as_str() {
            "--rows" => shape.rows = value.split(',').map(|r| r.parse().unwrap()).collect(),
            "--hidden" => shape.hidden = number(),
            "--ffn" => shape.ffn = number(),
            "--q" => shape.q = number(),
            "--kv" => shape.kv = number(),
            "--seconds" => shape.seconds = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    shape
}

fn random(rows: usize, cols: usize) -> Tensor {
    Tensor::randn(0f32, 1f32, (rows, cols), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .expect("a random tensor")
}

fn main() {
    let shape = parse_args();
    // (in, out) of q, k, v, o, gate, up, down, in the order a block runs them.
    let layers = [
        (shape.hidden, shape.q),
        (shape.hidden, shape.kv),
        (shape.hidden, shape.kv),
        (shape.q, shape.hidden),
        (shape.hidden, shape.ffn),
        (shape.hidden, shape.ffn),
        (shape.ffn, shape.hidden),
    ];
    let weights: Vec<Tensor> = layers.iter().map(|&(i, o)| random(o, i)).collect();
    for &rows in &shape.rows {
        let inputs: Vec<Tensor> = layers.iter().map(|&(i, _)| random(rows, i)).collect();
        let flops_per_block: f64 = layers
            .iter()
            .map(|&(i, o)| 2.0 * rows as f64 * i as f64 * o as f64)
            .sum();
        let host: Vec<(Vec<f32>, Vec<f32>)> = inputs
            .iter()
            .zip(&weights)
            .map(|(x, w)| (flat(x), flat(w)))
            .collect();
        let in_place_block = || {
            for ((x, w), (i, o)) in host.iter().zip(layers.iter()) {
                std::hint::black_box(product(x, rows, *i, w, (1, *i), *o));
            }
        };
        let candle_block = || {
            for (x, w) in inputs.iter().zip(&weights) {
                std::hint::black_box(x.matmul(&w.t().unwrap()).expect("matmul"));
            }
        };
        let in_place_times = time_blocks(&in_place_block, shape.seconds);
        let candle_times = time_blocks(&candle_block, shape.seconds);
        let rate = |t: f64| flops_per_block / t / 1e9;
        let median = |times: &[f64]| times[times.len() / 2];
        let mean = in_place_times.iter().sum::<f64>() / in_place_times.len() as f64;
        println!(
            "{{\"rows\": {rows}, \"gflops_median\": {:.2}, \"gflops_best\": {:.2}, \"gflops_mean\": {:.2}, \"blocks\": {}, \"candle_matmul_gflops_median\": {:.2}, \"threads\": {}}}",
            rate(median(&in_place_times)),
            rate(in_place_times[0]),
            rate(mean),
            in_place_times.len(),
            rate(median(&candle_times)),
            candle_core::utils::get_num_threads()
        );
    }
}

/// A tensor's values, row-major.
fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 values")
}

/// Block times in seconds, sorted, over at least `seconds` and 3 blocks, after one warm-up block.
fn time_blocks(run_block: &dyn Fn(), seconds: f64) -> Vec<f64> {
    run_block(); // warm caches and the thread pool
    let started = Instant::now();
    let mut times = Vec::new();
    while started.elapsed().as_secs_f64() < seconds || times.len() < 3 {
        let t = Instant::now();
        run_block();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times
}
