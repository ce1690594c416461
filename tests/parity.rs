//! Numerical parity with transformers' Gemma 2 and the Gemma Scope JumpReLU formula, on the tiny fixtures.

use crate::util::{assert_close, assert_close_f64, Reference};
use candle_core::{DType, Device, Tensor};
use gemscope::hub::ModelFiles;
use gemscope::model::{Gemma2, HookPoint, Parts, Site};
use gemscope::pipeline::{self, PromptInput};
use gemscope::sae::{JumpReluSae, SaeParts};
use gemscope::tokenizer::PromptTokenizer;
use std::collections::HashMap;

const F32_TOLERANCE: f32 = 1e-4;
const FIXTURES: [&str; 2] = ["tiny", "tiny-sharded"];

fn load(
    name: &str,
    parts: impl FnOnce(&gemscope::model::Config) -> Parts,
    dtype: DType,
) -> (ModelFiles, Gemma2) {
    let files = ModelFiles::from_dir(&crate::util::fixture(name)).unwrap();
    let parts = parts(&files.config);
    let model = crate::util::load_model(&files, parts, dtype, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (files, model)
}

/// Runs the whole model, keeping every site of every layer, and returns them with the logits.
fn run_all_sites(model: &Gemma2, ids: &[u32]) -> (HashMap<HookPoint, Tensor>, Tensor) {
    let mut seen = HashMap::new();
    let mut hook = |point: HookPoint, t: &Tensor| -> candle_core::Result<Option<Tensor>> {
        seen.insert(point, t.squeeze(0)?.to_dtype(DType::F32)?);
        Ok(None)
    };
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .forward(&input, &mut hook)
        .unwrap()
        .squeeze(0)
        .unwrap();
    (seen, logits.to_dtype(DType::F32).unwrap())
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn tokenizer_matches_python_ids_and_pieces() {
    for name in FIXTURES {
        let reference = Reference::load(name);
        let files = ModelFiles::from_dir(&reference.dir).unwrap();
        let tokenizer =
            PromptTokenizer::from_file(&files.tokenizer, files.config.bos_token_id).unwrap();
        for (i, (text, ids)) in reference.prompts().iter().enumerate() {
            assert_eq!(
                &tokenizer.encode(text).unwrap(),
                ids,
                "{name} prompt {i}: {text:?}"
            );
            let pieces: Vec<String> = ids.iter().map(|&id| tokenizer.piece(id)).collect();
            let expected: Vec<String> =
                serde_json::from_value(reference.json["prompts"][i]["pieces"].clone()).unwrap();
            assert_eq!(pieces, expected, "{name} prompt {i}");
        }
    }
}

#[test]
fn fixtures_cover_the_cases_that_matter() {
    // The parity tests below prove little unless the prompts exercise these paths.
    for name in FIXTURES {
        let reference = Reference::load(name);
        let cfg = ModelFiles::from_dir(&reference.dir).unwrap().config;
        let lengths: Vec<usize> = reference
            .prompts()
            .iter()
            .map(|(_, ids)| ids.len())
            .collect();
        assert!(
            lengths.iter().any(|&n| n > cfg.sliding_window),
            "{name}: a prompt longer than the sliding window"
        );
        assert!(
            lengths.contains(&2),
            "{name}: a one-token prompt (plus BOS)"
        );
        assert!(
            reference.prompts().iter().any(|(t, _)| !t.is_ascii()),
            "{name}: non-ASCII text"
        );
        assert_ne!(
            cfg.head_dim * cfg.num_attention_heads,
            cfg.hidden_size,
            "{name}: att width differs from hidden"
        );
        assert_ne!(
            cfg.query_pre_attn_scalar, cfg.head_dim as f64,
            "{name}: scale differs from head_dim^-0.5"
        );
    }
}

#[test]
fn every_site_of_every_layer_and_the_logits_match_transformers() {
    for name in FIXTURES {
        let reference = Reference::load(name);
        let (files, model) = load(name, Parts::full, DType::F32);
        let layers = files.config.num_hidden_layers;
        for (i, (_, ids)) in reference.prompts().iter().enumerate() {
            let (seen, logits) = run_all_sites(&model, ids);
            for layer in 0..layers {
                for site in [Site::Res, Site::Mlp, Site::Att] {
                    let key = format!("p{i}_{site}_L{layer}");
                    let (shape, expected) = reference.array(&key);
                    let actual = &seen[&HookPoint { layer, site }];
                    assert_eq!(actual.dims(), &shape[..], "{name} {key} shape");
                    assert_close(
                        &format!("{name} {key}"),
                        &flat(actual),
                        &expected,
                        F32_TOLERANCE,
                    );
                }
            }
            let (_, expected) = reference.array(&format!("p{i}_logits"));
            assert_close(
                &format!("{name} p{i} logits"),
                &flat(&logits),
                &expected,
                F32_TOLERANCE,
            );
        }
    }
}

#[test]
fn early_exit_loads_and_runs_only_the_blocks_it_needs() {
    let reference = Reference::load("tiny-sharded");
    let files = ModelFiles::from_dir(&reference.dir).unwrap();
    let all_shards = files.weight_files(Parts::full(&files.config)).unwrap();
    let first_shards = files.weight_files(Parts::through_layer(0)).unwrap();
    assert!(
        first_shards.len() < all_shards.len(),
        "layer 0 needs fewer shards ({first_shards:?}) than the whole model"
    );

    for layer in 0..files.config.num_hidden_layers {
        let (_, model) = load("tiny-sharded", |_| Parts::through_layer(layer), DType::F32);
        assert_eq!(model.loaded_blocks(), layer + 1);
        for (i, (_, ids)) in reference.prompts().iter().enumerate() {
            let x = pipeline::capture(
                &model,
                ids,
                HookPoint {
                    layer,
                    site: Site::Res,
                },
            )
            .unwrap();
            let (_, expected) = reference.array(&format!("p{i}_res_L{layer}"));
            assert_close(
                &format!("p{i} res L{layer} (early exit)"),
                &flat(&x),
                &expected,
                F32_TOLERANCE,
            );
        }
        if layer + 1 < files.config.num_hidden_layers {
            let deeper = pipeline::capture(
                &model,
                &[2, 5],
                HookPoint {
                    layer: layer + 1,
                    site: Site::Res,
                },
            );
            assert!(deeper.is_err(), "layer {} must not be loaded", layer + 1);
        }
    }
}

fn sae_path(reference: &Reference, entry: &serde_json::Value) -> std::path::PathBuf {
    reference.dir.join(entry["file"].as_str().unwrap())
}

fn site_of(entry: &serde_json::Value) -> Site {
    match entry["site"].as_str().unwrap() {
        "res" => Site::Res,
        "mlp" => Site::Mlp,
        "att" => Site::Att,
        other => panic!("unknown site {other}"),
    }
}

#[test]
fn sae_activations_reconstructions_and_statistics_match_the_reference() {
    for name in FIXTURES {
        let reference = Reference::load(name);
        let files = ModelFiles::from_dir(&reference.dir).unwrap();
        let tokenizer =
            PromptTokenizer::from_file(&files.tokenizer, files.config.bos_token_id).unwrap();
        for (sae_name, entry) in reference.saes() {
            let point = HookPoint {
                layer: entry["layer"].as_u64().unwrap() as usize,
                site: site_of(&entry),
            };
            let d_in = entry["d_in"].as_u64().unwrap() as usize;
            let sae = JumpReluSae::load(
                &sae_path(&reference, &entry),
                d_in,
                SaeParts::EncoderDecoder,
                &Device::Cpu,
            )
            .unwrap();
            let (_, model) = load(name, |_| Parts::through_layer(point.layer), DType::F32);
            for (i, (text, ids)) in reference.prompts().iter().enumerate() {
                let what = format!("{name} {sae_name} p{i}");
                let x = pipeline::capture(&model, ids, point).unwrap();
                let f = sae.encode(&x).unwrap();
                let (_, acts) = reference.array(&format!("p{i}_sae_{sae_name}_acts"));
                assert_close(&format!("{what} acts"), &flat(&f), &acts, F32_TOLERANCE);
                let (_, recon) = reference.array(&format!("p{i}_sae_{sae_name}_recon"));
                assert_close(
                    &format!("{what} recon"),
                    &flat(&sae.decode(&f).unwrap()),
                    &recon,
                    F32_TOLERANCE,
                );

                let top_k = 5;
                let pieces = ids.iter().map(|&id| tokenizer.piece(id)).collect();
                let report = pipeline::analyze(
                    PromptInput {
                        index: i,
                        text,
                        ids,
                        pieces,
                    },
                    &x,
                    &pipeline::encode(&x, &sae).unwrap(),
                    sae.d_sae(),
                    point,
                    top_k,
                )
                .unwrap();
                let expected = &entry["prompts"][i];
                for (t, token) in report.tokens.iter().enumerate() {
                    assert_eq!(
                        token.l0 as u64,
                        expected["l0"][t].as_u64().unwrap(),
                        "{what} token {t} L0"
                    );
                    let want = expected["top_features"][t].as_array().unwrap();
                    assert_eq!(
                        token.top_features.len(),
                        want.len(),
                        "{what} token {t} top-k length"
                    );
                    for (got, want) in token.top_features.iter().zip(want) {
                        assert_eq!(
                            got.feature as u64,
                            want[0].as_u64().unwrap(),
                            "{what} token {t} top-k ids"
                        );
                        assert_close_f64(
                            &format!("{what} token {t}"),
                            got.activation as f64,
                            want[1].as_f64().unwrap(),
                            1e-4,
                        );
                    }
                }
                assert_close_f64(
                    &format!("{what} mean_l0"),
                    report.mean_l0,
                    expected["mean_l0"].as_f64().unwrap(),
                    1e-6,
                );
                assert_close_f64(
                    &format!("{what} mse"),
                    report.mse.unwrap(),
                    expected["mse"].as_f64().unwrap(),
                    1e-4,
                );
                let ve = report.variance_explained.unwrap();
                assert_close_f64(
                    &format!("{what} variance explained"),
                    ve,
                    expected["variance_explained"].as_f64().unwrap(),
                    1e-4,
                );
                let aggregate = expected["aggregate"].as_array().unwrap();
                for (got, want) in report.top_features.iter().zip(aggregate) {
                    assert_eq!(
                        got.stats.feature as u64,
                        want["feature"].as_u64().unwrap(),
                        "{what} aggregate ids"
                    );
                    assert_close_f64(
                        &format!("{what} aggregate sum"),
                        got.stats.activation_sum as f64,
                        want["sum"].as_f64().unwrap(),
                        1e-4,
                    );
                    assert_close_f64(
                        &format!("{what} aggregate max"),
                        got.stats.activation_max as f64,
                        want["max"].as_f64().unwrap(),
                        1e-4,
                    );
                    assert_eq!(
                        got.stats.active_tokens as u64,
                        want["count"].as_u64().unwrap(),
                        "{what} aggregate count"
                    );
                }
            }
        }
    }
}

#[test]
fn safetensors_sae_is_the_same_sae_as_its_npz() {
    let dir = crate::util::fixture("tiny");
    let npz = JumpReluSae::load(
        &dir.join("sae_res_L1.npz"),
        64,
        SaeParts::EncoderDecoder,
        &Device::Cpu,
    )
    .unwrap();
    let st = JumpReluSae::load(
        &dir.join("sae_res_L1.safetensors"),
        64,
        SaeParts::EncoderDecoder,
        &Device::Cpu,
    )
    .unwrap();
    let x = Tensor::randn(0f32, 3.0, (7, 64), &Device::Cpu).unwrap();
    let (a, b) = (npz.encode(&x).unwrap(), st.encode(&x).unwrap());
    assert_eq!(flat(&a), flat(&b));
    assert_eq!(
        flat(&npz.decode(&a).unwrap()),
        flat(&st.decode(&b).unwrap())
    );
}

#[test]
fn bf16_and_f16_runs_track_the_f32_reference() {
    // Narrow dtypes cannot match to 1e-4; they must stay close, and must really run narrow.
    let reference = Reference::load("tiny");
    let (_, ids) = &reference.prompts()[0];
    let (_, expected) = reference.array("p0_res_L3");
    for dtype in [DType::BF16, DType::F16] {
        let (_, model) = load("tiny", |_| Parts::through_layer(3), dtype);
        assert_eq!(model.dtype(), dtype);
        let x = flat(
            &pipeline::capture(
                &model,
                ids,
                HookPoint {
                    layer: 3,
                    site: Site::Res,
                },
            )
            .unwrap(),
        );
        let err = crate::util::relative_error(&x, &expected);
        assert!(err < 5e-2, "{dtype:?}: relative error {err}");
        assert!(
            err > 1e-6,
            "{dtype:?} gave f32-exact results: the dtype was not applied"
        );
    }
}

#[test]
fn hub_style_config_without_layer_types_gives_the_same_model() {
    // The hub's Gemma 2 configs (written by transformers 4.42) have no `layer_types`: the
    // alternation must come from the layer index, sliding-window on even layers.
    let reference = Reference::load("tiny");
    let dir = tempfile::tempdir().unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(reference.dir.join(file), dir.path().join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.dir.join("config.json")).unwrap())
            .unwrap();
    let obj = config.as_object_mut().unwrap();
    assert!(
        obj.remove("layer_types").is_some(),
        "the fixture config should carry layer_types"
    );
    let dtype = obj
        .remove("dtype")
        .or_else(|| obj.remove("torch_dtype"))
        .unwrap();
    obj.insert("torch_dtype".into(), dtype);
    obj.insert("hidden_act".into(), "gelu_pytorch_tanh".into());
    obj.insert("cache_implementation".into(), "hybrid".into());
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();

    let files = ModelFiles::from_dir(dir.path()).unwrap();
    let model =
        crate::util::load_model(&files, Parts::full(&files.config), DType::F32, &Device::Cpu)
            .unwrap();
    let (i, (_, ids)) = reference
        .prompts()
        .into_iter()
        .enumerate()
        .find(|(_, (_, ids))| ids.len() > 8)
        .unwrap();
    let (seen, _) = run_all_sites(&model, &ids);
    for layer in 0..files.config.num_hidden_layers {
        let (_, expected) = reference.array(&format!("p{i}_res_L{layer}"));
        assert_close(
            &format!("hub-style config, res L{layer}"),
            &flat(
                &seen[&HookPoint {
                    layer,
                    site: Site::Res,
                }],
            ),
            &expected,
            F32_TOLERANCE,
        );
    }
}

#[test]
fn a_padded_batch_of_prompts_matches_each_prompt_alone() {
    // `features` runs a group of prompts as one right-padded batch; every prompt must come out as
    // transformers computes it alone, across sliding-window layers shorter than the longest prompt.
    for name in FIXTURES {
        let reference = Reference::load(name);
        let files = ModelFiles::from_dir(&reference.dir).unwrap();
        let prompts: Vec<Vec<u32>> = reference
            .prompts()
            .into_iter()
            .map(|(_, ids)| ids)
            .collect();
        let last = files.config.num_hidden_layers - 1;
        let (_, model) = load(name, |_| Parts::through_layer(last), DType::F32);
        for layer in [0, last] {
            for site in [Site::Res, Site::Mlp, Site::Att] {
                let batch =
                    pipeline::capture_many(&model, &prompts, HookPoint { layer, site }).unwrap();
                for (i, x) in batch.iter().enumerate() {
                    let (shape, expected) = reference.array(&format!("p{i}_{site}_L{layer}"));
                    assert_eq!(x.dims(), &shape[..]);
                    assert_close(
                        &format!("{name} batched p{i} {site} L{layer}"),
                        &flat(x),
                        &expected,
                        F32_TOLERANCE,
                    );
                }
            }
        }
    }
}

#[test]
fn a_bf16_checkpoint_stays_bf16_on_disk_and_computes_in_f32() {
    // Hub checkpoints are often bf16: gemscope maps them as they are and converts a block to the
    // compute dtype (f32 by default) only while it runs.
    let reference = Reference::load("tiny");
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(reference.dir.join(file), dir.path().join(file)).unwrap();
    }
    let tensors =
        candle_core::safetensors::load(reference.dir.join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let bf16: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&bf16, dir.path().join("model.safetensors")).unwrap();
    let original = std::fs::metadata(reference.dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(
        std::fs::metadata(dir.path().join("model.safetensors"))
            .unwrap()
            .len()
            < original * 6 / 10
    );

    let files = ModelFiles::from_dir(dir.path()).unwrap();
    let model =
        crate::util::load_model(&files, Parts::through_layer(3), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.dtype(), DType::F32);
    let (_, ids) = &reference.prompts()[1];
    let x = flat(
        &pipeline::capture(
            &model,
            ids,
            HookPoint {
                layer: 3,
                site: Site::Res,
            },
        )
        .unwrap(),
    );
    let (_, expected) = reference.array("p1_res_L3");
    // bf16 weights (8 bits of mantissa) computed in f32: close to the f32 model, not equal to it.
    let err = crate::util::relative_error(&x, &expected);
    assert!(err < 5e-2 && err > 1e-6, "relative error {err}");
}

/// Drops `path`'s pages from the page cache (written back first), as after a reboot.
#[cfg(target_os = "linux")]
fn evict_from_page_cache(path: &std::path::Path) {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // Safety: advice on an open file descriptor; it changes no contents.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed");
}

/// An f32 model on the CPU reads every linear weight and the tied LM head in place from the
/// mapped file (no copy); other dtypes read converted copies. Both give the reference's numbers
/// (the other parity tests); this checks that the fast path is the one taken.
#[test]
fn f32_cpu_weights_are_read_in_place() {
    let reference = Reference::load("tiny");
    let files = ModelFiles::from_dir(&reference.dir).unwrap();
    for (dtype, in_place) in [(DType::F32, 7), (DType::BF16, 0)] {
        let model =
            crate::util::load_model(&files, Parts::full(&files.config), dtype, &Device::Cpu)
                .unwrap();
        let block = model.block(0).unwrap();
        assert_eq!(block.linear_layers_in_place(), in_place, "{dtype:?}");
        assert_eq!(model.head_reads_in_place(), in_place > 0, "{dtype:?}");
    }
}

/// Streamed blocks that are not in the page cache are pulled from disk by a reader thread while
/// the block before them computes: the results are the reference's all the same.
#[cfg(target_os = "linux")]
#[test]
fn blocks_read_ahead_from_disk_match_the_reference() {
    let reference = Reference::load("tiny-sharded");
    // Under the target directory, which is on disk (a tmpfs /tmp could not drop its pages).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for entry in std::fs::read_dir(&reference.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let files = ModelFiles::from_dir(dir.path()).unwrap();
    let last = files.config.num_hidden_layers - 1;
    let shards = files.weight_files(Parts::through_layer(last)).unwrap();
    let block_names = |layer: usize| -> Vec<String> {
        ["self_attn.q_proj.weight", "mlp.down_proj.weight"]
            .iter()
            .map(|t| format!("model.layers.{layer}.{t}"))
            .collect()
    };
    // Opening reads each shard's header (and the kernel reads ahead past it), so the pages are
    // dropped after the model and a second view for the check are open.
    let model =
        crate::util::load_model(&files, Parts::through_layer(last), DType::F32, &Device::Cpu)
            .unwrap();
    let weights = gemscope::model::weights::MappedWeights::open(&shards).unwrap();
    let names = block_names(last);
    for (i, (_, ids)) in reference.prompts().iter().enumerate() {
        shards.iter().for_each(|s| evict_from_page_cache(s));
        assert!(
            !weights
                .uncached(names.iter().map(String::as_str))
                .is_empty(),
            "the test needs block {last} out of the page cache"
        );
        let point = HookPoint {
            layer: last,
            site: Site::Res,
        };
        let x = pipeline::capture(&model, ids, point).unwrap();
        let (_, expected) = reference.array(&format!("p{i}_res_L{last}"));
        assert_close(
            &format!("p{i} res L{last} (read ahead from disk)"),
            &flat(&x),
            &expected,
            F32_TOLERANCE,
        );
        assert!(weights
            .uncached(names.iter().map(String::as_str))
            .is_empty());
        assert!(
            model.blocks_read_ahead() > 0,
            "no block was read ahead: the reader thread was not exercised"
        );
    }
}
