//! The real `gemscope` executable: output contracts (JSON, JSONL, table, .npy) and the failure contract.

use crate::util::{
    assert_close, assert_close_f64, assert_fails_with, fixture, json_of, run, run_with_stdin,
    stderr, stdout, Reference,
};
use std::process::Stdio;

fn tiny() -> String {
    crate::util::fixture_arg("tiny")
}

fn sae(file: &str) -> String {
    crate::util::fixture_arg(&format!("tiny/{file}"))
}

fn features(extra: &[&str]) -> std::process::Output {
    let (model, sae) = (tiny(), sae("sae_res_L1.npz"));
    let mut args = vec![
        "features", "--model", &model, "--sae", &sae, "--layer", "1", "--device", "cpu",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn features_json_is_the_documented_contract_and_matches_the_reference() {
    let reference = Reference::load("tiny");
    let prompts = reference.prompts();
    let texts: Vec<&str> = prompts.iter().map(|(t, _)| t.as_str()).collect();
    let mut args = vec!["--json", "--top-k", "5"];
    args.extend(texts.iter().copied());
    let doc = json_of(&features(&args));

    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["hook"]["layer"], 1);
    assert_eq!(doc["hook"]["site"], "res");
    assert_eq!(doc["sae"]["d_sae"], 256);
    let expected = &reference.json["saes"]["res_L1"]["prompts"];
    let got = doc["prompts"].as_array().unwrap();
    assert_eq!(got.len(), prompts.len());
    for (i, prompt) in got.iter().enumerate() {
        assert_eq!(prompt["text"], texts[i]);
        let tokens = prompt["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), prompts[i].1.len());
        assert_eq!(tokens[0]["bos"], true);
        for (t, token) in tokens.iter().enumerate() {
            assert_eq!(token["id"].as_u64().unwrap() as u32, prompts[i].1[t]);
            assert_eq!(token["text"], reference.json["prompts"][i]["pieces"][t]);
            assert_eq!(token["l0"], expected[i]["l0"][t]);
            let top = token["top_features"].as_array().unwrap();
            let want = expected[i]["top_features"][t].as_array().unwrap();
            assert_eq!(top.len(), want.len());
            for (g, w) in top.iter().zip(want) {
                assert_eq!(g["feature"], w[0]);
                assert_close_f64(
                    "activation",
                    g["activation"].as_f64().unwrap(),
                    w[1].as_f64().unwrap(),
                    1e-4,
                );
                assert!(g["activation"].as_f64().unwrap() > 0.0);
            }
        }
        for key in ["mean_l0", "variance_explained", "mse"] {
            let (g, w) = (
                prompt[key].as_f64().unwrap(),
                expected[i][key].as_f64().unwrap(),
            );
            assert_close_f64(&format!("prompt {i} {key}"), g, w, 1e-4);
        }
        let aggregate = prompt["top_features"].as_array().unwrap();
        assert!(!aggregate.is_empty() && aggregate.len() <= 5);
        for (g, w) in aggregate
            .iter()
            .zip(expected[i]["aggregate"].as_array().unwrap())
        {
            assert_eq!(g["feature"], w["feature"]);
        }
    }
}

#[test]
fn jsonl_streams_one_object_per_prompt_from_a_prompts_file_on_stdin() {
    let (model, sae) = (tiny(), sae("sae_res_L1.npz"));
    let args = [
        "features",
        "--model",
        &model,
        "--sae",
        &sae,
        "--layer",
        "1",
        "--jsonl",
        "--prompts-file",
        "-",
    ];
    let out = run_with_stdin(&args, "first prompt\r\n\nsecond one\nGrüße\n".as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["text"], "first prompt");
    assert_eq!(lines[2]["text"], "Grüße");
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[1]["hook"]["layer"], 1);
    assert!(lines[1]["mean_l0"].as_f64().unwrap() > 0.0);
}

#[test]
fn table_is_plain_when_piped_and_marks_bos() {
    let out = features(&["line one\nline two\ttab"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    assert!(text.contains("BOS, excluded from statistics"), "{text}");
    assert!(
        text.contains("\\n"),
        "control characters are escaped: {text}"
    );
    assert!(text.contains("variance explained"), "{text}");
    assert!(
        stderr(&out).is_empty(),
        "nothing on stderr for a clean run: {}",
        stderr(&out)
    );

    let forced = features(&["--color", "always", "hello"]);
    assert!(stdout(&forced).contains('\x1b'));
    let mut cmd = crate::util::bin();
    let (model, sae) = (tiny(), sae("sae_res_L1.npz"));
    let no_color = cmd
        .args([
            "features", "--model", &model, "--sae", &sae, "--layer", "1", "--color", "always",
            "hello",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!stdout(&no_color).contains('\x1b'), "NO_COLOR wins");
}

#[test]
fn activations_writes_the_hooked_site_as_npy_with_the_bos_row() {
    let reference = Reference::load("tiny");
    let dir = tempfile::tempdir().unwrap();
    let (text, ids) = &reference.prompts()[0];
    for (site, layer) in [("res", "2"), ("mlp", "2"), ("att", "0")] {
        let path = dir.path().join(format!("{site}.npy"));
        let model = tiny();
        let out = run(&[
            "activations",
            "--model",
            &model,
            "--layer",
            layer,
            "--site",
            site,
            "--out",
            path.to_str().unwrap(),
            text,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
        let array = gemscope::npy::decode_f32(&std::fs::read(&path).unwrap()).unwrap();
        let (shape, expected) = reference.array(&format!("p0_{site}_L{layer}"));
        assert_eq!(array.shape, shape);
        assert_eq!(array.shape[0], ids.len());
        assert_close(site, &array.data, &expected, 1e-4);
    }
}

#[test]
fn sharded_transformers5_checkpoint_runs_from_the_cli() {
    let reference = Reference::load("tiny-sharded");
    let model = fixture("tiny-sharded").display().to_string();
    let sae = fixture("tiny-sharded")
        .join("sae_res_L2.npz")
        .display()
        .to_string();
    let (text, _) = &reference.prompts()[1];
    let doc = json_of(&run(&[
        "features", "--model", &model, "--sae", &sae, "--layer", "2", "--json", text,
    ]));
    let want = &reference.json["saes"]["res_L2"]["prompts"][1];
    assert_close_f64(
        "variance explained",
        doc["prompts"][0]["variance_explained"].as_f64().unwrap(),
        want["variance_explained"].as_f64().unwrap(),
        1e-4,
    );
    assert_eq!(doc["prompts"][0]["tokens"][3]["l0"], want["l0"][3]);
}

#[test]
fn input_errors_are_one_line_exit_2_and_leave_stdout_empty() {
    let (model, sae_l1) = (tiny(), sae("sae_res_L1.npz"));
    let base = |extra: &[&str]| {
        let mut args = vec!["features", "--model", &model, "--sae", &sae_l1];
        args.extend_from_slice(extra);
        run(&args)
    };
    assert_fails_with(
        &base(&["--layer", "4", "hi"]),
        "--layer 4 is out of range: the model has 4 layers (0..=3)",
    );
    assert_fails_with(
        &base(&["--layer", "1", "--top-k", "0", "hi"]),
        "--top-k must be at least 1",
    );
    assert_fails_with(
        &base(&["--layer", "1", "--top-k", "257", "hi"]),
        "larger than the SAE's 256 features",
    );
    assert_fails_with(&base(&["--layer", "1", ""]), "prompt 1 is empty");
    assert_fails_with(&base(&["--layer", "1"]), "no prompt given");
    assert_fails_with(
        &base(&["--layer", "1", "--site", "att", "hi"]),
        "fits --site res or --site mlp",
    );
    if !cfg!(feature = "cuda") {
        assert_fails_with(
            &base(&["--layer", "1", "--device", "cuda", "hi"]),
            "--features cuda",
        );
    }
    assert_fails_with(
        &run(&[
            "features",
            "--model",
            "/nonexistent/model",
            "--sae",
            &sae_l1,
            "--layer",
            "1",
            "hi",
        ]),
        "model directory /nonexistent/model not found",
    );
    let att_sae = sae("sae_att_L0.npz");
    assert_fails_with(
        &run(&[
            "features", "--model", &model, "--sae", &att_sae, "--layer", "0", "hi",
        ]),
        "fits --site att",
    );

    let empty = tempfile::NamedTempFile::new().unwrap();
    assert_fails_with(
        &base(&[
            "--layer",
            "1",
            "--prompts-file",
            empty.path().to_str().unwrap(),
        ]),
        "holds no prompts",
    );
    let args = [
        "features",
        "--model",
        &model,
        "--sae",
        &sae_l1,
        "--layer",
        "1",
        "--prompts-file",
        "-",
    ];
    assert_fails_with(
        &run_with_stdin(&args, b"fine\n\xff\xfe\n"),
        "invalid UTF-8 on line 2",
    );

    let long = "word ".repeat(400);
    assert_fails_with(
        &base(&["--layer", "1", &long]),
        "more than the model's context of 256",
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["features", "--layer", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let out = run(&[
        "features", "--model", "x", "--sae", "y", "--layer", "1", "--site", "resid", "hi",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("resid"));
}

#[test]
fn a_reader_that_stops_early_gets_a_quiet_exit_and_a_full_disk_an_error() {
    let (model, sae_l1) = (tiny(), sae("sae_res_L1.npz"));
    let prompts: Vec<String> = (0..40)
        .map(|i| format!("prompt number {i} about bridges"))
        .collect();
    let mut args = vec![
        "features".to_string(),
        "--model".into(),
        model.clone(),
        "--sae".into(),
        sae_l1.clone(),
        "--layer".into(),
        "1".into(),
        "--jsonl".into(),
    ];
    args.extend(prompts);

    // `gemscope ... | head -c 100`: read a little, close the pipe.
    let mut child = crate::util::bin()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "broken pipe must exit 0: {:?} {}",
        out.status,
        stderr(&out)
    );
    assert!(
        stderr(&out).is_empty(),
        "no noise on a broken pipe: {}",
        stderr(&out)
    );

    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = crate::util::bin()
            .args(&args[..10])
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.starts_with("gemscope: ") && err.contains("No space left"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn encode_only_gives_the_same_features_without_reconstruction_statistics() {
    let full = json_of(&features(&["--json", "The Golden Gate Bridge is"]));
    let lean = json_of(&features(&[
        "--json",
        "--encode-only",
        "The Golden Gate Bridge is",
    ]));
    assert_eq!(full["prompts"][0]["tokens"], lean["prompts"][0]["tokens"]);
    assert_eq!(full["prompts"][0]["mean_l0"], lean["prompts"][0]["mean_l0"]);
    assert!(full["prompts"][0]["variance_explained"].is_f64());
    assert!(lean["prompts"][0]["variance_explained"].is_null());
    assert!(lean["prompts"][0]["mse"].is_null());
    let table = features(&["--encode-only", "hello"]);
    assert!(
        stdout(&table).contains("variance explained n/a"),
        "{}",
        stdout(&table)
    );
}

#[test]
fn verbose_times_every_phase_and_quiet_silences_notes() {
    let out = features(&["--verbose", "--json", "The Golden Gate Bridge is"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("gemscope: timings: "))
        .unwrap_or_else(|| panic!("no timings line in {err:?}"));
    for phase in [
        "resolve", "load", "forward", "encode", "metrics", "output", "total",
    ] {
        assert!(
            line.contains(&format!("{phase} ")),
            "{phase} missing: {line}"
        );
    }
    // The JSON on stdout is untouched by --verbose.
    json_of(&out);

    // activations writes a note; --quiet drops it, the file is still written.
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("x.npy");
    let (model, npy_arg) = (tiny(), npy.display().to_string());
    let base = [
        "activations",
        "--model",
        &model,
        "--layer",
        "1",
        "--out",
        &npy_arg,
        "Hello",
    ];
    let loud = run(&base);
    assert!(loud.status.success(), "{}", stderr(&loud));
    assert!(
        stderr(&loud).contains("gemscope: note: wrote layer 1 res"),
        "{}",
        stderr(&loud)
    );
    std::fs::remove_file(&npy).unwrap();
    let mut quiet_args = base.to_vec();
    quiet_args.insert(1, "--quiet");
    let quiet = run(&quiet_args);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert_eq!(stderr(&quiet), "", "--quiet prints nothing on success");
    assert!(npy.is_file());

    let both = features(&["--quiet", "--verbose", "x"]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "--quiet and --verbose conflict"
    );
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["features", "steer", "list-saes", "prompts-file"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));

    let out = run(&["man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(
        page.starts_with(".ie") || page.contains(".TH gemscope"),
        "{page:.200}"
    );
    assert!(page.contains("features"), "{page:.400}");

    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in [
        "gemscope",
        "gemscope-features",
        "gemscope-eval",
        "gemscope-steer",
    ] {
        let page = std::fs::read_to_string(dir.path().join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e}"));
        assert!(page.contains(".TH"), "{name}.1 is not a man page");
    }
    let features_page = std::fs::read_to_string(dir.path().join("gemscope-features.1")).unwrap();
    assert!(
        features_page.contains("highlight"),
        "per-command pages list their flags"
    );
}

#[test]
fn many_prompts_give_the_same_numbers_resident_layer_major_and_one_group_at_a_time() {
    // 40 prompts: two groups of the features command (32 + 8).
    let prompts: Vec<String> = (0..40)
        .map(|i| format!("prompt {i}: the river runs {} times to the sea", i % 7))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, prompts.join("\n")).unwrap();
    let (model, sae) = (tiny(), sae("sae_res_L1.npz"));
    let file_arg = file.display().to_string();
    let args = [
        "features",
        "--model",
        &model,
        "--sae",
        &sae,
        "--layer",
        "1",
        "--jsonl",
        "--prompts-file",
        &file_arg,
        "--verbose",
    ];
    let with_blocks = |mode: &str| {
        let out = crate::util::bin()
            .args(args)
            .args(["--blocks", mode])
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        out
    };
    let auto = with_blocks("auto");
    assert!(stderr(&auto).contains("layer-major"), "{}", stderr(&auto));
    let resident = with_blocks("resident");
    assert!(
        stderr(&resident).contains("blocks resident"),
        "{}",
        stderr(&resident)
    );
    assert_eq!(stdout(&auto), stdout(&resident), "auto changed a number");
    let layer_major = with_blocks("layer-major");
    assert!(
        stderr(&layer_major).contains("layer-major"),
        "{}",
        stderr(&layer_major)
    );
    let per_group = with_blocks("streamed");
    assert!(
        stderr(&per_group).contains("once per group"),
        "{}",
        stderr(&per_group)
    );
    for (name, out) in [("layer-major", &layer_major), ("streamed", &per_group)] {
        assert_eq!(stdout(out), stdout(&resident), "{name} changed a number");
    }

    // Each group alone (one group: streamed), the same lines.
    let mut alone = String::new();
    for chunk in prompts.chunks(32) {
        let mut one = vec!["--jsonl"];
        one.extend(chunk.iter().map(String::as_str));
        let out = features(&one);
        assert!(out.status.success(), "{}", stderr(&out));
        alone.push_str(&stdout(&out));
    }
    let strip_index = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["index"] = 0.into();
                v
            })
            .collect()
    };
    assert!(
        strip_index(&alone) == strip_index(&stdout(&resident)),
        "a group run alone differs from the same group in a longer job"
    );
}
