//! Fuzzes the model loading path: config.json and a safetensors file (the input split at its
//! first NUL byte), then the first block run on two tokens.
#![no_main]

use gemscope::hub::ModelFiles;
use gemscope::model::{self, HookPoint, Parts, Site};
use gemscope::pipeline;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (config, weights) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let dir = std::env::temp_dir().join(format!("gemscope-fuzz-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    let Ok(files) = ModelFiles::from_dir(&dir) else { return };
    // Keep each run small: the fuzzer explores the parsers, not the arithmetic of huge models.
    if files.config.block_parameters() > 1 << 20 || files.config.vocab_size > 1 << 16 {
        return;
    }
    for parts in [Parts::through_layer(0), Parts::full(&files.config)] {
        let Ok(model) = model::load(&files, parts, candle_core::DType::F32, &candle_core::Device::Cpu) else { continue };
        let ids = [files.config.bos_token_id, 1];
        let _ = pipeline::capture(&model, &ids, HookPoint { layer: 0, site: Site::Res });
    }
});
