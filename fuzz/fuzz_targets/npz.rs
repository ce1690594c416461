//! Fuzzes the npz/npy reader and the SAE loader on arbitrary bytes: errors are fine, panics and
//! unbounded allocations are not.
#![no_main]

use gemscope::npy::{self, NpzArchive};
use gemscope::sae::{self, JumpReluSae, SaeParts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The raw .npy decoders.
    let _ = npy::NpyHeader::parse(data);
    let _ = npy::decode_f32(data);
    let _ = npy::decode_f32_transposed(data, &mut |_, _| {});

    // The archive and the SAE built from it (the reader maps a file).
    let path = std::env::temp_dir().join(format!("gemscope-fuzz-{}.npz", std::process::id()));
    std::fs::write(&path, data).unwrap();
    if let Ok(archive) = NpzArchive::open(&path) {
        let names: Vec<String> = archive.names().map(str::to_string).collect();
        for name in &names {
            let _ = archive.header(name);
            let _ = archive.read_f32(name);
            let _ = archive.read_f32_transposed(name);
        }
    }
    if let Ok((d_in, _)) = sae::read_dims(&path) {
        if let Ok(sae) = JumpReluSae::load(&path, d_in, SaeParts::EncoderDecoder, &candle_core::Device::Cpu) {
            let x = candle_core::Tensor::ones((2, d_in), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            let f = sae.encode(&x).unwrap();
            sae.decode(&f).unwrap();
        }
    }
});
