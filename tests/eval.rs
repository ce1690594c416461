//! `gemscope eval`: per-position losses and pooled metrics against transformers, whatever the
//! batch size, and the gate / baseline contract a CI job relies on.

use crate::util::{assert_close_f64, fixture, json_of, run, stderr, stdout, Reference};
use candle_core::{DType, Device};
use gemscope::eval::{evaluate_batch, EvalSums};
use gemscope::hub::ModelFiles;
use gemscope::model::{HookPoint, Parts, Site};
use gemscope::sae::{JumpReluSae, SaeParts};

fn site_of(entry: &serde_json::Value) -> Site {
    match entry["site"].as_str().unwrap() {
        "res" => Site::Res,
        "mlp" => Site::Mlp,
        _ => Site::Att,
    }
}

#[test]
fn spliced_and_ablated_losses_match_transformers_at_every_batch_size() {
    for name in ["tiny", "tiny-sharded"] {
        let reference = Reference::load(name);
        let files = ModelFiles::from_dir(&reference.dir).unwrap();
        let model =
            crate::util::load_model(&files, Parts::full(&files.config), DType::F32, &Device::Cpu)
                .unwrap();
        let prompts: Vec<Vec<u32>> = reference
            .prompts()
            .into_iter()
            .map(|(_, ids)| ids)
            .collect();
        for (sae_name, entry) in reference.saes() {
            let point = HookPoint {
                layer: entry["layer"].as_u64().unwrap() as usize,
                site: site_of(&entry),
            };
            let d_in = entry["d_in"].as_u64().unwrap() as usize;
            let sae_path = reference.dir.join(entry["file"].as_str().unwrap());
            let sae =
                JumpReluSae::load(&sae_path, d_in, SaeParts::EncoderDecoder, &Device::Cpu).unwrap();
            let mut pooled = Vec::new();
            for batch_size in [1, 2, prompts.len()] {
                let mut sums = EvalSums::new(sae.d_sae());
                for (b, chunk) in prompts.chunks(batch_size).enumerate() {
                    let losses = evaluate_batch(&model, &sae, point, chunk, &mut sums).unwrap();
                    for (k, seq) in losses.iter().enumerate() {
                        let i = b * batch_size + k;
                        let what = format!("{name} {sae_name} p{i} batch {batch_size}");
                        for (field, got) in [
                            ("ce_clean", &seq.ce_clean),
                            ("ce_spliced", &seq.ce_spliced),
                            ("ce_zero", &seq.ce_zero),
                            ("kl", &seq.kl),
                        ] {
                            let key = if field == "ce_clean" {
                                format!("p{i}_ce_clean")
                            } else {
                                format!("p{i}_eval_{sae_name}_{field}")
                            };
                            let (_, want) = reference.array(&key);
                            let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
                            crate::util::assert_close(
                                &format!("{what} {field}"),
                                &got,
                                &want,
                                1e-4,
                            );
                        }
                    }
                }
                pooled.push(sums.finish().unwrap());
            }
            let want = &entry["eval"];
            for m in &pooled {
                let what = format!("{name} {sae_name}");
                assert_eq!(m.tokens, want["tokens"].as_u64().unwrap(), "{what} tokens");
                assert_eq!(
                    m.predictions,
                    want["predictions"].as_u64().unwrap(),
                    "{what} predictions"
                );
                for (key, got) in [
                    ("mean_l0", m.mean_l0),
                    ("variance_explained", m.variance_explained),
                    ("mse", m.mse),
                    ("cosine_similarity", m.cosine_similarity),
                    ("ce_loss_clean", m.ce_loss_clean),
                    ("ce_loss_spliced", m.ce_loss_spliced),
                    ("ce_loss_zero_ablation", m.ce_loss_zero_ablation),
                    ("delta_loss", m.delta_loss),
                    ("ce_loss_score", m.ce_loss_score),
                    ("kl_div", m.kl_div),
                ] {
                    assert_close_f64(
                        &format!("{what} {key}"),
                        got,
                        want[key].as_f64().unwrap(),
                        1e-4,
                    );
                }
                assert_eq!(
                    m.dead_fraction,
                    want["dead_fraction"].as_f64().unwrap(),
                    "{what} dead fraction"
                );
            }
            // Batching only regroups the same sums.
            for m in &pooled[1..] {
                assert_close_f64("batch-size independence", m.kl_div, pooled[0].kl_div, 1e-6);
                assert_close_f64(
                    "batch-size independence",
                    m.variance_explained,
                    pooled[0].variance_explained,
                    1e-6,
                );
            }
        }
    }
}

fn prompts_file() -> tempfile::NamedTempFile {
    let reference = Reference::load("tiny");
    let mut file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    for (text, _) in reference.prompts() {
        use std::io::Write;
        writeln!(
            file,
            "{}",
            serde_json::json!({ "text": text, "source": "fixture" })
        )
        .unwrap();
    }
    file
}

fn eval(extra: &[&str]) -> std::process::Output {
    let (model, sae) = (
        fixture("tiny").display().to_string(),
        fixture("tiny/sae_res_L1.npz").display().to_string(),
    );
    let file = prompts_file();
    let mut args = vec![
        "eval",
        "--model",
        &model,
        "--sae",
        &sae,
        "--layer",
        "1",
        "--batch-size",
        "2",
        "--prompts-file",
        file.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn json_report_holds_the_contract_fields() {
    let reference = Reference::load("tiny");
    let doc = json_of(&eval(&["--json"]));
    let want = &reference.json["saes"]["res_L1"]["eval"];
    for key in [
        "mean_l0",
        "variance_explained",
        "mse",
        "cosine_similarity",
        "dead_fraction",
        "ce_loss_clean",
        "ce_loss_spliced",
        "ce_loss_zero_ablation",
        "delta_loss",
        "ce_loss_score",
        "kl_div",
    ] {
        assert_close_f64(
            key,
            doc["metrics"][key].as_f64().unwrap(),
            want[key].as_f64().unwrap(),
            1e-4,
        );
    }
    assert_eq!(doc["metrics"]["tokens"], want["tokens"]);
    assert_eq!(doc["prompts"], 5);
    assert_eq!(doc["passed"], true);
    assert!(doc["gates"].as_array().unwrap().is_empty());
}

#[test]
fn gates_pass_with_exit_0_and_fail_with_exit_1_naming_each_failure() {
    let reference = Reference::load("tiny");
    let m = &reference.json["saes"]["res_L1"]["eval"];
    let (ve, l0, kl, score) = (
        m["variance_explained"].as_f64().unwrap(),
        m["mean_l0"].as_f64().unwrap(),
        m["kl_div"].as_f64().unwrap(),
        m["ce_loss_score"].as_f64().unwrap(),
    );
    let delta = m["delta_loss"].as_f64().unwrap();
    let below = |v: f64| format!("{}", v - 0.01 * v.abs().max(0.1));
    let above = |v: f64| format!("{}", v + 0.01 * v.abs().max(0.1));

    let passing = [
        ("--min-variance-explained", below(ve)),
        ("--max-mean-l0", above(l0)),
        ("--min-mean-l0", below(l0)),
        ("--max-kl-div", above(kl)),
        ("--min-ce-loss-score", below(score)),
        ("--max-delta-loss", above(delta)),
    ];
    // `--flag=value`: gate values can be negative.
    let pairs: Vec<String> = passing
        .iter()
        .map(|(flag, value)| format!("{flag}={value}"))
        .collect();
    let mut args: Vec<&str> = vec!["--json"];
    args.extend(pairs.iter().map(String::as_str));
    let out = eval(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["gates"].as_array().unwrap().len(), 6);
    assert!(doc["gates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["passed"] == true));

    let failing = [
        (
            "--min-variance-explained",
            above(ve),
            "min_variance_explained",
        ),
        ("--max-mean-l0", below(l0), "max_mean_l0"),
        ("--min-mean-l0", above(l0), "min_mean_l0"),
        ("--max-kl-div", below(kl), "max_kl_div"),
        ("--min-ce-loss-score", above(score), "min_ce_loss_score"),
        ("--max-delta-loss", below(delta), "max_delta_loss"),
    ];
    for (flag, value, name) in &failing {
        let out = eval(&["--json", &format!("{flag}={value}")]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flag} {value}: {}",
            stderr(&out)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["passed"], false);
        let gate = &doc["gates"][0];
        assert_eq!(gate["name"], *name);
        assert_eq!(gate["passed"], false);
        assert_eq!(
            gate["threshold"].as_f64().unwrap(),
            value.parse::<f64>().unwrap()
        );
        assert!(
            stderr(&out).contains(&format!("gate failed: {name}")),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn baseline_comparison_passes_against_itself_and_fails_against_a_better_one() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("report.json");
    let out = eval(&["--save", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("variance explained"),
        "the table still prints"
    );

    let same = eval(&[
        "--baseline",
        saved.to_str().unwrap(),
        "--tolerance",
        "0.001",
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    assert!(stdout(&same).contains("baseline"), "{}", stdout(&same));

    // A baseline whose SAE explained more variance and diverged less.
    let mut better: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let ve = better["metrics"]["variance_explained"].as_f64().unwrap();
    better["metrics"]["variance_explained"] = (ve * 1.2).into();
    let kl = better["metrics"]["kl_div"].as_f64().unwrap();
    better["metrics"]["kl_div"] = (kl * 0.5).into();
    let better_path = dir.path().join("better.json");
    std::fs::write(&better_path, better.to_string()).unwrap();
    let out = eval(&[
        "--json",
        "--baseline",
        better_path.to_str().unwrap(),
        "--tolerance",
        "0.05",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = doc["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["passed"] == false)
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        vec!["baseline_variance_explained", "baseline_kl_div"]
    );
    let rows = doc["baseline"]["metrics"].as_array().unwrap();
    assert!(rows
        .iter()
        .any(|r| r["metric"] == "variance_explained"
            && r["relative_change"].as_f64().unwrap() < -0.1));
    assert!(
        stderr(&out).contains("gate failed: baseline_kl_div"),
        "{}",
        stderr(&out)
    );

    let not_a_report = dir.path().join("other.json");
    std::fs::write(&not_a_report, "{\"prompts\": []}").unwrap();
    crate::util::assert_fails_with(
        &eval(&["--baseline", not_a_report.to_str().unwrap()]),
        "is not a report saved by `gemscope eval --save`",
    );
}

#[test]
fn limit_and_max_tokens_shape_the_corpus() {
    let doc = json_of(&eval(&["--json", "--limit", "2", "--max-tokens", "6"]));
    assert_eq!(doc["prompts"], 2);
    // Two prompts cut to 6 tokens each: 5 non-BOS tokens and 5 predictions apiece.
    assert_eq!(doc["metrics"]["tokens"], 10);
    assert_eq!(doc["metrics"]["predictions"], 10);
    crate::util::assert_fails_with(
        &eval(&["--max-tokens", "1"]),
        "--max-tokens must be at least 2",
    );
}
