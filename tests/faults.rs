//! Bad input and faults: every broken model, tokenizer, checkpoint, SAE and prompt gives one clear
//! `gemscope: ...` line on stderr, exit 2, nothing on stdout, never a panic.

use crate::util::{assert_fails_with, fixture, json_of, run, stderr};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A copy of the tiny fixture model in a temp dir, to break one file of.
fn tiny_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny").join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn sae_l1() -> String {
    fixture("tiny/sae_res_L1.npz").display().to_string()
}

/// `gemscope features` on model `dir` with SAE `sae` at layer 1.
fn features_on(dir: &Path, sae: &str) -> std::process::Output {
    run(&[
        "features",
        "--model",
        dir.to_str().unwrap(),
        "--sae",
        sae,
        "--layer",
        "1",
        "--device",
        "cpu",
        "--json",
        "hello",
    ])
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// A change to config.json.
type ConfigEdit = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn broken_configs() {
    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_fails_with(
        &features_on(dir.path(), &sae_l1()),
        "cannot read model config",
    );

    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert_fails_with(
        &features_on(dir.path(), &sae_l1()),
        "config.json is not valid JSON",
    );

    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|v| v["model_type"] = "llama".into()),
            "model_type is \"llama\"",
        ),
        (
            Box::new(|v| drop(v.as_object_mut().unwrap().remove("hidden_size"))),
            "hidden_size",
        ),
        (
            Box::new(|v| v["num_attention_heads"] = 0.into()),
            "num_attention_heads is 0",
        ),
        (
            Box::new(|v| v["num_key_value_heads"] = 3.into()),
            "not a multiple of num_key_value_heads",
        ),
        (Box::new(|v| v["hidden_size"] = "big".into()), "hidden_size"),
        (
            Box::new(|v| v["layer_types"] = serde_json::json!(["full_attention"])),
            "layer_types has 1 entries for 4 layers",
        ),
        (
            Box::new(|v| v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0})),
            "rope_scaling is not supported",
        ),
    ];
    for (edit, needle) in cases {
        let dir = tiny_copy();
        edit_config(dir.path(), edit);
        assert_fails_with(&features_on(dir.path(), &sae_l1()), needle);
    }
}

#[test]
fn broken_tokenizers() {
    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_fails_with(
        &features_on(dir.path(), &sae_l1()),
        "tokenizer.json not found",
    );
    std::fs::write(
        dir.path().join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": 7}",
    )
    .unwrap();
    assert_fails_with(&features_on(dir.path(), &sae_l1()), "cannot read tokenizer");
}

/// Rewrites the tiny checkpoint's safetensors header with `edit`, keeping the data.
fn edit_safetensors_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = header.to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn broken_safetensors() {
    let invalid = "is not a valid safetensors file";
    let dir = tiny_copy();
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_fails_with(&features_on(dir.path(), &sae_l1()), invalid);

    let dir = tiny_copy();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert_fails_with(&features_on(dir.path(), &sae_l1()), invalid);

    let dir = tiny_copy();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..16].copy_from_slice(b"not json");
    std::fs::write(&path, &bytes).unwrap();
    assert_fails_with(&features_on(dir.path(), &sae_l1()), invalid);

    // Offsets beyond the data, and two tensors sharing bytes.
    let dir = tiny_copy();
    edit_safetensors_header(dir.path(), |h| {
        h["model.norm.weight"]["data_offsets"] = serde_json::json!([0, 1u64 << 40])
    });
    assert_fails_with(&features_on(dir.path(), &sae_l1()), invalid);
    let dir = tiny_copy();
    edit_safetensors_header(dir.path(), |h| {
        let first = h["model.layers.0.input_layernorm.weight"]["data_offsets"].clone();
        h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] = first;
    });
    assert_fails_with(&features_on(dir.path(), &sae_l1()), invalid);

    // A tensor with the wrong shape, the wrong dtype, or missing: named in the error.
    let dir = tiny_copy();
    edit_safetensors_header(dir.path(), |h| {
        let t = &mut h["model.layers.1.mlp.up_proj.weight"];
        let shape = t["shape"].as_array().unwrap().clone();
        t["shape"] = serde_json::json!([shape[1], shape[0]]);
    });
    assert_fails_with(
        &features_on(dir.path(), &sae_l1()),
        "tensor model.layers.1.mlp.up_proj.weight has shape [64, 160], expected [160, 64]",
    );
    let dir = tiny_copy();
    edit_safetensors_header(dir.path(), |h| {
        let t = &mut h["model.layers.0.input_layernorm.weight"];
        t["dtype"] = "I32".into();
    });
    assert_fails_with(
        &features_on(dir.path(), &sae_l1()),
        "model.layers.0.input_layernorm.weight has dtype I32",
    );
    let dir = tiny_copy();
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    tensors
        .remove("model.layers.1.self_attn.k_proj.weight")
        .unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    assert_fails_with(
        &features_on(dir.path(), &sae_l1()),
        "tensor model.layers.1.self_attn.k_proj.weight is missing",
    );
}

/// An `.npy` member: header for `descr`, `fortran` and `shape`, then `data`.
fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let fortran = if fortran { "True" } else { "False" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
            .into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The fixture SAE's arrays as (name, shape, values).
fn fixture_sae() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let npz = gemscope::npy::NpzArchive::open(&fixture("tiny/sae_res_L1.npz")).unwrap();
    ["W_enc", "W_dec", "threshold", "b_enc", "b_dec"]
        .iter()
        .map(|name| {
            let a = npz.read_f32(name).unwrap();
            (name.to_string(), a.shape, a.data)
        })
        .collect()
}

/// Writes an npz with `members` (name without `.npy`, bytes), stored or deflated.
fn write_npz(path: &Path, members: &[(String, Vec<u8>)], deflate: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// The fixture SAE rewritten with `change` applied to its members.
fn sae_variant(
    dir: &Path,
    file: &str,
    deflate: bool,
    change: impl Fn(&str, &[usize], &[f32]) -> Option<Vec<u8>>,
) -> PathBuf {
    let members: Vec<(String, Vec<u8>)> = fixture_sae()
        .iter()
        .filter_map(|(name, shape, data)| {
            let bytes = change(name, shape, data)?;
            Some((name.clone(), bytes))
        })
        .collect();
    let path = dir.join(file);
    write_npz(&path, &members, deflate);
    path
}

fn same(_: &str, shape: &[usize], data: &[f32]) -> Option<Vec<u8>> {
    Some(npy("<f4", false, shape, &f32_bytes(data)))
}

#[test]
fn npz_formats_numpy_writes_are_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny");
    let reference = json_of(&features_on(&tiny, &sae_l1()));
    let variants = [
        sae_variant(dir.path(), "compressed.npz", true, same),
        sae_variant(dir.path(), "f64.npz", false, |_, shape, data| {
            let wide: Vec<u8> = data
                .iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect();
            Some(npy("<f8", false, shape, &wide))
        }),
        sae_variant(
            dir.path(),
            "fortran.npz",
            false,
            |_, shape, data| match shape {
                [rows, cols] => {
                    let col_major: Vec<f32> = (0..*cols)
                        .flat_map(|c| (0..*rows).map(move |r| data[r * cols + c]))
                        .collect();
                    Some(npy("<f4", true, shape, &f32_bytes(&col_major)))
                }
                _ => Some(npy("<f4", false, shape, &f32_bytes(data))),
            },
        ),
    ];
    for path in variants {
        let doc = json_of(&features_on(&tiny, path.to_str().unwrap()));
        assert_eq!(
            doc["prompts"][0]["tokens"],
            reference["prompts"][0]["tokens"],
            "{}",
            path.display()
        );
        let ve = doc["prompts"][0]["variance_explained"].as_f64().unwrap();
        let want = reference["prompts"][0]["variance_explained"]
            .as_f64()
            .unwrap();
        assert!(
            (ve - want).abs() < 1e-5,
            "{}: {ve} vs {want}",
            path.display()
        );
    }
}

#[test]
fn broken_npz_files() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny");
    let fails = |path: &Path, needle: &str| {
        assert_fails_with(&features_on(&tiny, path.to_str().unwrap()), needle)
    };

    let not_zip = dir.path().join("not-zip.npz");
    std::fs::write(&not_zip, b"this is not a zip archive at all").unwrap();
    fails(&not_zip, "is not a valid .npz (zip) archive");

    let truncated = dir.path().join("truncated.npz");
    let bytes = std::fs::read(fixture("tiny/sae_res_L1.npz")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails(&truncated, "is not a valid .npz (zip) archive");

    let mut members: Vec<(String, Vec<u8>)> = fixture_sae()
        .iter()
        .map(|(n, s, d)| (n.clone(), npy("<f4", false, s, &f32_bytes(d))))
        .collect();
    members.push(("notes.txt".into(), b"hello".to_vec()));
    let extra = dir.path().join("extra.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&extra).unwrap());
    for (name, data) in &members {
        let file = if name.ends_with(".txt") {
            name.clone()
        } else {
            format!("{name}.npy")
        };
        zip.start_file(
            file,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
    fails(&extra, "member \"notes.txt\" is not a .npy array");

    let pickle = sae_variant(dir.path(), "pickle.npz", false, |name, shape, data| {
        Some(if name == "threshold" {
            npy("|O", false, shape, &[0x80, 0x04, 0x95])
        } else {
            same(name, shape, data)?
        })
    });
    fails(&pickle, "object arrays are refused");

    let ints = sae_variant(dir.path(), "ints.npz", false, |name, shape, data| {
        Some(if name == "b_enc" {
            npy("<i4", false, shape, &vec![0u8; data.len() * 4])
        } else {
            same(name, shape, data)?
        })
    });
    fails(&ints, "integer array where float32 weights were expected");

    let wrong_shape = sae_variant(dir.path(), "shape.npz", false, |name, shape, data| {
        Some(if name == "b_dec" {
            npy("<f4", false, &[shape[0] - 1], &f32_bytes(&data[1..]))
        } else {
            same(name, shape, data)?
        })
    });
    fails(
        &wrong_shape,
        "SAE array b_dec has shape [63], expected [64]",
    );

    let missing = sae_variant(dir.path(), "missing.npz", false, |name, shape, data| {
        if name == "threshold" {
            None
        } else {
            same(name, shape, data)
        }
    });
    fails(&missing, "has no array \"threshold\"");

    let nan = sae_variant(dir.path(), "nan.npz", false, |name, shape, data| {
        let mut data = data.to_vec();
        if name == "W_dec" {
            data[17] = f32::NAN;
        }
        same(name, shape, &data)
    });
    fails(
        &nan,
        "SAE array W_dec holds a non-finite value (NaN) at flat index 17",
    );

    let short = sae_variant(dir.path(), "short.npz", false, |name, shape, data| {
        let bytes = f32_bytes(data);
        Some(if name == "W_enc" {
            npy("<f4", false, shape, &bytes[..bytes.len() - 4])
        } else {
            same(name, shape, data)?
        })
    });
    fails(&short, "array data is truncated");
}

#[test]
fn an_sae_declaring_absurd_sizes_is_refused_before_allocating() {
    // W_enc claims 2^40 features: the memory check refuses before any array is read.
    let dir = tempfile::tempdir().unwrap();
    let bomb = sae_variant(dir.path(), "huge.npz", false, |name, shape, data| {
        Some(if name == "W_enc" {
            npy("<f4", false, &[shape[0], 1 << 40], &f32_bytes(data))
        } else {
            same(name, shape, data)?
        })
    });
    let out = features_on(&fixture("tiny"), bomb.to_str().unwrap());
    assert_fails_with(&out, "this job needs about");
    assert!(
        stderr(&out).contains("of memory is available"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn activations_that_overflow_are_reported_with_the_layer_not_printed() {
    // Embeddings scaled past f16's range: the f16 run overflows at the first block.
    let dir = tiny_copy();
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let embed = tensors.remove("model.embed_tokens.weight").unwrap();
    tensors.insert("model.embed_tokens.weight".into(), (embed * 1e4).unwrap());
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let out = run(&[
        "features",
        "--model",
        dir.path().to_str().unwrap(),
        "--sae",
        &sae_l1(),
        "--layer",
        "1",
        "--dtype",
        "f16",
        "--json",
        "hello",
    ]);
    assert_fails_with(&out, "is not finite");
    assert!(stderr(&out).contains("layer 1 res"), "{}", stderr(&out));
}

#[test]
fn inputs_the_fuzzers_found_are_errors_not_panics() {
    // Each file under tests/fixtures/fuzz once crashed a `cargo fuzz` target (fuzz/).
    let dir = fixture("fuzz");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("npz-") {
            let out = features_on(&fixture("tiny"), path.to_str().unwrap());
            assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
            assert!(
                !stderr(&out).contains("panicked"),
                "{name}: {}",
                stderr(&out)
            );
        }
    }
}
