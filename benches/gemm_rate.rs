//! The GEMM rate gemscope's kernels reach on this machine at the shapes of one Gemma 2 block's
//! linear layers (q, k, v, o, gate, up, down), `x [rows, in] @ W[out, in]^T` exactly as
//! `model::gemma2::Linear` runs them, timed block by block (the median is the rate to quote: on a
//! shared VM single blocks vary by 1.5x): the compute half of the machine limit that
//! `benches/machine_limit.py` measures. Prints one JSON line per row count on stdout.
//!
//! Run: `cargo bench --bench gemm_rate -- [--rows 64,512] [--hidden 2304] [--ffn 9216]
//! [--q 2048] [--kv 1024] [--seconds 2]` (defaults: Gemma 2 2B).

use candle_core::{DType, Device, Tensor};
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
        let run_block = || {
            for (x, w) in inputs.iter().zip(&weights) {
                let y = x.matmul(&w.t().unwrap()).expect("matmul");
                std::hint::black_box(y);
            }
        };
        run_block(); // warm caches and gemm's thread pool
        let started = Instant::now();
        let mut times = Vec::new();
        while started.elapsed().as_secs_f64() < shape.seconds || times.len() < 3 {
            let t = Instant::now();
            run_block();
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "{{\"rows\": {rows}, \"gflops_median\": {:.2}, \"gflops_best\": {:.2}, \"gflops_mean\": {:.2}, \"blocks\": {}, \"threads\": {}}}",
            flops_per_block / median / 1e9,
            flops_per_block / times[0] / 1e9,
            flops_per_block / mean / 1e9,
            times.len(),
            candle_core::utils::get_num_threads()
        );
    }
}
