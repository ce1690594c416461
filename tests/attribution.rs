//! `gemscope attribute` against torch autograd in float64 (`tests/fixtures/attribution.py`), a
//! finite-difference check in f64, and the failure contract for bad targets and positions.

use crate::util::{assert_fails_with, fixture, fixture_arg, json_of, run, stdout};
use candle_core::{DType, Device, Tensor};
use gemscope::attribution::{self, LaterBlocks, Metric, Request};
use gemscope::hub::ModelFiles;
use gemscope::model::{HookPoint, Parts, Site};
use gemscope::npy::NpzArchive;
use gemscope::sae::{JumpReluSae, SaeParts};
use serde_json::Value;
use std::collections::HashMap;

fn reference() -> (Value, NpzArchive) {
    let dir = fixture("tiny");
    let json = std::fs::read_to_string(dir.join("attribution_reference.json")).unwrap();
    let arrays = NpzArchive::open(&dir.join("attribution_reference.npz")).unwrap();
    (serde_json::from_str(&json).unwrap(), arrays)
}

fn prompt_text(index: usize) -> String {
    let json = std::fs::read_to_string(fixture("tiny").join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&json).unwrap();
    reference["prompts"][index]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

fn attribute(extra: &[&str]) -> std::process::Output {
    let model = fixture_arg("tiny");
    let mut args = vec!["attribute", "--model", &model, "--device", "cpu"];
    args.extend_from_slice(extra);
    run(&args)
}

/// The reference rows `(position, feature, attribution)`, ranked.
fn reference_rows(arrays: &NpzArchive, case: &str) -> Vec<(usize, u32, f64)> {
    let a = arrays.read_f32(&format!("attr_{case}")).unwrap();
    a.data
        .chunks(3)
        .map(|r| (r[0] as usize, r[1] as u32, r[2] as f64))
        .collect()
}

fn max_abs(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0f64, |m, v| m.max(v.abs()))
}

#[test]
fn attributions_match_float64_autograd() {
    let (reference, arrays) = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let sae = fixture_arg(&format!("tiny/sae_{}.npz", case["sae"].as_str().unwrap()));
        let layer = case["layer"].to_string();
        let position = case["position"].as_u64().unwrap() as usize;
        let target = case["target"].as_u64().unwrap() as u32;
        let metric = case["metric"].as_str().unwrap();
        let prompt = prompt_text(case["prompt"].as_u64().unwrap() as usize);
        let (position_arg, target_arg) = (position.to_string(), target.to_string());
        let mut args = vec![
            "--sae",
            &sae,
            "--layer",
            &layer,
            "--site",
            case["site"].as_str().unwrap(),
            "--metric",
            metric,
            "--json",
            "--all",
            "--ablate",
            "3",
        ];
        if case["explicit_position"].as_bool().unwrap() {
            args.extend(["--position", &position_arg]);
        }
        if case["explicit_target"].as_bool().unwrap() {
            args.extend(["--target-id", &target_arg]);
        }
        args.push(&prompt);
        let doc = json_of(&attribute(&args));

        assert_eq!(doc["target"]["id"], target, "{name}");
        assert_eq!(doc["target"]["position"], position, "{name}");
        assert_eq!(doc["metric"], metric, "{name}");
        let value = doc["metric_value"].as_f64().unwrap();
        let expected = case["metric_value"].as_f64().unwrap();
        assert!(
            (value - expected).abs() <= 1e-5 * expected.abs(),
            "{name}: metric {value} vs {expected}"
        );
        let p = doc["target"]["probability"].as_f64().unwrap();
        let p_ref = case["probability"].as_f64().unwrap();
        assert!(
            (p - p_ref).abs() <= 1e-5 * p_ref,
            "{name}: p {p} vs {p_ref}"
        );

        // Every active feature, each within 1e-4 of the largest attribution.
        let rows = reference_rows(&arrays, name);
        assert_eq!(rows.len() as u64, case["active"].as_u64().unwrap());
        let got: Vec<(usize, u32, f64, f64)> = doc["attributions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["position"].as_u64().unwrap() as usize,
                    a["feature"].as_u64().unwrap() as u32,
                    a["attribution"].as_f64().unwrap(),
                    a["activation"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got.len(), rows.len(), "{name}: active features");
        assert_eq!(doc["active_features"], rows.len());
        let scale = max_abs(rows.iter().map(|r| r.2));
        assert!((scale - case["max_abs_attribution"].as_f64().unwrap()).abs() < 1e-6 * scale);
        let by_key: HashMap<(usize, u32), f64> = rows.iter().map(|r| ((r.0, r.1), r.2)).collect();
        let mut worst = 0f64;
        for (pos, feature, a, activation) in &got {
            let expected = by_key
                .get(&(*pos, *feature))
                .unwrap_or_else(|| panic!("{name}: feature {feature} at {pos} is not active"));
            worst = worst.max((a - expected).abs() / scale);
            assert!(*activation > 0.0 && *pos >= 1 && *pos <= position);
        }
        assert!(
            worst <= 1e-4,
            "{name}: attribution error {worst:.2e} of the largest"
        );
        if std::env::var_os("GEMSCOPE_PARITY_REPORT").is_some() {
            eprintln!("parity {worst:.3e} attribution {name}");
        }
        // The ranking: wherever the reference has a gap wider than the tolerance, the same
        // entries come before it.
        for i in 0..rows.len() - 1 {
            if rows[i].2.abs() - rows[i + 1].2.abs() > 2e-4 * scale {
                let mut want: Vec<(usize, u32)> = rows[..=i].iter().map(|r| (r.0, r.1)).collect();
                let mut have: Vec<(usize, u32)> = got[..=i].iter().map(|r| (r.0, r.1)).collect();
                want.sort();
                have.sort();
                assert_eq!(have, want, "{name}: the top {} differ", i + 1);
            }
        }

        // Summed per feature.
        let mut sums: HashMap<u32, f64> = HashMap::new();
        for r in &rows {
            *sums.entry(r.1).or_default() += r.2;
        }
        let features = doc["features"].as_array().unwrap();
        assert_eq!(features.len(), sums.len(), "{name}");
        let sum_scale = max_abs(sums.values().copied());
        for f in features {
            let id = f["feature"].as_u64().unwrap() as u32;
            let s = f["attribution_sum"].as_f64().unwrap();
            assert!(
                (s - sums[&id]).abs() <= 1e-4 * sum_scale,
                "{name}: feature {id}"
            );
        }
        assert_eq!(
            features[0]["attribution_sum"].as_f64().unwrap().abs(),
            max_abs(
                features
                    .iter()
                    .map(|f| f["attribution_sum"].as_f64().unwrap())
            )
        );

        // The error term, per position, BOS first.
        let error: Vec<f64> = doc["error_attribution"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let error_ref: Vec<f64> = case["error_attribution"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(error.len(), error_ref.len(), "{name}: one per token");
        assert_eq!(error[0], 0.0);
        let error_scale = max_abs(error_ref.iter().copied());
        for (t, (e, r)) in error.iter().zip(&error_ref).enumerate() {
            assert!(
                (e - r).abs() <= 1e-4 * error_scale,
                "{name}: error attribution at {t}: {e} vs {r}"
            );
            if t > position {
                assert_eq!(*e, 0.0);
            }
        }
        let share = doc["error_share"].as_f64().unwrap();
        let error_abs: f64 = error_ref.iter().map(|e| e.abs()).sum();
        let feature_abs: f64 = rows.iter().map(|r| r.2.abs()).sum();
        let share_ref = error_abs / (error_abs + feature_abs);
        assert!(
            (share - share_ref).abs() <= 1e-4 * share_ref,
            "{name}: share"
        );

        // Ablations: the top three, exact effect beside the estimate.
        let ablation = doc["ablation"].as_array().unwrap();
        let ablation_ref = case["ablation"].as_array().unwrap();
        assert_eq!(ablation.len(), 3);
        for (a, r) in ablation.iter().zip(ablation_ref) {
            assert_eq!(a["position"], r["position"], "{name}");
            assert_eq!(a["feature"], r["feature"], "{name}");
            let (effect, effect_ref) =
                (a["effect"].as_f64().unwrap(), r["effect"].as_f64().unwrap());
            assert!(
                (effect - effect_ref).abs() <= 1e-4 * effect_ref.abs().max(scale),
                "{name}: effect {effect} vs {effect_ref}"
            );
            let estimate = a["estimate"].as_f64().unwrap();
            let attribution = by_key[&(
                a["position"].as_u64().unwrap() as usize,
                a["feature"].as_u64().unwrap() as u32,
            )];
            assert!((estimate + attribution).abs() <= 1e-4 * scale, "{name}");
        }
    }
}

#[test]
fn top_k_limits_the_lists_and_the_view_shows_target_table_and_shading() {
    let sae = fixture_arg("tiny/sae_res_L1.npz");
    let prompt = prompt_text(0);
    let doc = json_of(&attribute(&[
        "--sae", &sae, "--layer", "1", "--json", "--top-k", "4", &prompt,
    ]));
    assert_eq!(doc["attributions"].as_array().unwrap().len(), 4);
    assert_eq!(doc["features"].as_array().unwrap().len(), 4);
    assert_eq!(doc["top_k"], 4);
    assert_eq!(doc["metric"], "prob");
    assert!(doc.get("ablation").is_none());
    assert_eq!(doc["target"]["explicit"], false);
    let tokens = doc["tokens"].as_array().unwrap();
    assert_eq!(
        doc["error_attribution"].as_array().unwrap().len(),
        tokens.len()
    );
    assert_eq!(
        doc["token_attribution"].as_array().unwrap().len(),
        tokens.len()
    );

    let out = attribute(&[
        "--sae", &sae, "--layer", "1", "--color", "never", "--ablate", "2", "--top-k", "5", &prompt,
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    let target = doc["target"]["text"].as_str().unwrap();
    assert!(text.contains(&format!("{target:?}")), "{text}");
    assert!(text.contains("top 5 of"), "{text}");
    assert!(text.contains("ablated"), "{text}");
    assert!(text.contains("error share"), "{text}");
    assert!(text.contains("[ is:"), "{text}");
    assert!(!text.contains('\x1b'));
    let colored = stdout(&attribute(&[
        "--sae", &sae, "--layer", "1", "--color", "always", &prompt,
    ]));
    assert!(colored.contains("\x1b[30;48;5;"));
}

#[test]
fn a_text_target_is_one_token_and_matches_its_id() {
    let sae = fixture_arg("tiny/sae_res_L1.npz");
    let prompt = prompt_text(0);
    let by_id = json_of(&attribute(&[
        "--sae",
        &sae,
        "--layer",
        "1",
        "--json",
        "--target-id",
        "442",
        &prompt,
    ]));
    let text = by_id["target"]["text"]
        .as_str()
        .unwrap()
        .replace('\u{2581}', " ");
    let by_text = json_of(&attribute(&[
        "--sae", &sae, "--layer", "1", "--json", "--target", &text, &prompt,
    ]));
    assert_eq!(by_text["target"]["id"], 442);
    assert_eq!(by_text["target"]["explicit"], true);
    assert_eq!(by_text["metric_value"], by_id["metric_value"]);
    // One token after BOS is enough: its features feed the prediction at position 1.
    let one = json_of(&attribute(&[
        "--sae", &sae, "--layer", "1", "--json", "The",
    ]));
    assert_eq!(one["target"]["position"], 1);
}

#[test]
fn bad_targets_positions_prompts_and_sites_fail_with_one_line() {
    let sae = fixture_arg("tiny/sae_res_L1.npz");
    let prompt = prompt_text(0);
    let base = ["--sae", sae.as_str(), "--layer", "1"];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        attribute(&args)
    };
    assert_fails_with(
        &with(&["--target", "Golden Gate", &prompt]),
        "tokens, not one",
    );
    assert_fails_with(
        &with(&["--target-id", "480", &prompt]),
        "outside the vocabulary",
    );
    assert_fails_with(&with(&["--position", "99", &prompt]), "outside the prompt");
    assert_fails_with(&with(&["--position", "0", &prompt]), "BOS");
    assert_fails_with(&with(&[""]), "empty");
    assert_fails_with(&with(&["--top-k", "0", &prompt]), "--top-k");
    let att = fixture_arg("tiny/sae_att_L0.npz");
    assert_fails_with(
        &attribute(&["--sae", &att, "--layer", "0", "--site", "mlp", &prompt]),
        "fits --site att",
    );
}

/// The f64 model: the autograd attribution against central differences of the metric along
/// each feature's decoder direction (`d/de metric(x' + e f_i W_dec[i]) = f_i dm/df_i`).
#[test]
fn gradients_match_finite_differences_in_f64() {
    let files = ModelFiles::from_dir(&fixture("tiny")).unwrap();
    let cfg = files.config.clone();
    let parts = Parts {
        blocks: cfg.num_hidden_layers,
        head: false,
        resident: false,
    };
    let device = Device::Cpu;
    let model = crate::util::load_model(&files, parts, DType::F64, &device).unwrap();
    let ids: Vec<u32> = {
        let json = std::fs::read_to_string(fixture("tiny").join("reference.json")).unwrap();
        let reference: Value = serde_json::from_str(&json).unwrap();
        reference["prompts"][1]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    for (site, layer, file, metric) in [
        (Site::Res, 1, "sae_res_L1.npz", Metric::Logprob),
        (Site::Att, 0, "sae_att_L0.npz", Metric::Prob),
    ] {
        let point = HookPoint { layer, site };
        let d_in = gemscope::commands::site_width(&cfg, site);
        let sae = JumpReluSae::load(
            &fixture(&format!("tiny/{file}")),
            d_in,
            SaeParts::EncoderDecoder,
            &device,
        )
        .unwrap();
        let later = LaterBlocks::build(&model, point).unwrap();
        let request = Request {
            point,
            position: 20,
            target: None,
            metric,
        };
        let (result, prepared) =
            attribution::attribute(&model, &later, &sae, &ids, &request).unwrap();
        let spliced = prepared
            .spliced(&sae)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let n = spliced.dim(0).unwrap();
        let scale = result.features[0].attribution.abs();
        for entry in result.features.iter().take(4) {
            let direction = (sae.decoder_direction(entry.feature as usize).unwrap()
                * entry.activation as f64)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let at = |e: f64| {
                let mut rows = vec![0f64; n * d_in];
                let dir = direction.to_vec1::<f64>().unwrap();
                for (k, v) in dir.iter().enumerate() {
                    rows[entry.position * d_in + k] = v * e;
                }
                let shift = Tensor::from_vec(rows, (n, d_in), &device).unwrap();
                attribution::metric_with_splice(
                    &model,
                    &later,
                    &sae,
                    &prepared,
                    (&spliced + shift).unwrap(),
                )
                .unwrap()
            };
            let h = 1e-4;
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - entry.attribution).abs() <= 1e-6 * scale,
                "{site} feature {} at {}: autograd {} vs finite difference {numeric}",
                entry.feature,
                entry.position,
                entry.attribution
            );
        }
    }
}
