//! Generation and steering: greedy continuations and logits against transformers, the KV cache
//! against recomputation, seeded sampling, and the `generate` / `steer` / `features --highlight`
//! command-line contracts.

use crate::util::{
    assert_close, assert_fails_with, fixture, json_of, run, stderr, stdout, Reference,
};
use candle_core::{DType, Device};
use gemscope::generate::{self, GenerateOptions, Generation, Sampling, SteerMode, Steering};
use gemscope::hub::ModelFiles;
use gemscope::model::{Gemma2, Hook, NoHook, Parts};
use gemscope::sae::{JumpReluSae, SaeParts};
use gemscope::tokenizer::PromptTokenizer;
use serde_json::Value;

const EOS: u32 = 1;

fn tiny() -> (ModelFiles, Gemma2) {
    let files = ModelFiles::from_dir(&fixture("tiny")).unwrap();
    let parts = Parts::full(&files.config);
    let model = crate::util::load_model(&files, parts, DType::F32, &Device::Cpu).unwrap();
    (files, model)
}

fn sae() -> JumpReluSae {
    let path = fixture("tiny").join("sae_res_L1.npz");
    JumpReluSae::load(&path, 64, SaeParts::EncoderDecoder, &Device::Cpu).unwrap()
}

fn run_generation(
    model: &Gemma2,
    prompt: &[u32],
    n: usize,
    sampling: Sampling,
    use_cache: bool,
    hook: &mut dyn Hook,
) -> Generation {
    let options = GenerateOptions {
        keep_logits: true,
        use_cache,
        ..GenerateOptions::new(n, sampling, vec![EOS])
    };
    generate::generate(model, prompt, &options, hook, |_| Ok(()))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn steering_of(case: &Value) -> Vec<(usize, f32)> {
    case["steering"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["feature"].as_u64().unwrap() as usize,
                s["strength"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[test]
fn greedy_continuations_and_logits_match_transformers_with_and_without_steering() {
    let reference = Reference::load("tiny");
    let prompts = reference.prompts();
    let (_, model) = tiny();
    let sae = sae();
    let cases = reference.json["generation"].as_array().unwrap();
    assert_eq!(
        cases.len(),
        8,
        "baseline, add, two-feature add, clamp for two prompts"
    );
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let ids = &prompts[case["prompt"].as_u64().unwrap() as usize].1;
        let expected = ids_of(&case["generated_ids"]);
        let steering = steering_of(case);
        let mode = match case["mode"].as_str().unwrap() {
            "add" => SteerMode::Add,
            _ => SteerMode::Clamp,
        };
        let layer = case["layer"].as_u64().unwrap() as usize;
        let generation = if steering.is_empty() {
            run_generation(&model, ids, 8, Sampling::greedy(), true, &mut NoHook)
        } else {
            let mut hook = Steering::new(&sae, layer, mode, &steering).unwrap();
            run_generation(&model, ids, 8, Sampling::greedy(), true, &mut hook)
        };
        assert_eq!(generation.ids, expected, "{name}");
        assert_eq!(
            generation.stop.is_some(),
            case["stopped_at_eos"].as_bool().unwrap(),
            "{name}"
        );
        let (shape, logits) = reference.array(&format!("gen_{name}_logits"));
        assert_eq!(shape[0], generation.logits.len(), "{name}");
        for (step, row) in generation.logits.iter().enumerate() {
            let want = &logits[step * shape[1]..(step + 1) * shape[1]];
            assert_close(&format!("{name} step {step} logits"), row, want, 1e-4);
        }
    }
}

#[test]
fn the_kv_cache_gives_what_recomputing_the_sequence_gives() {
    let reference = Reference::load("tiny");
    let prompts = reference.prompts();
    let (files, model) = tiny();
    let window = files.config.sliding_window;
    let sae = sae();
    let sampled = Sampling {
        temperature: 3.0,
        top_p: 0.95,
        seed: 11,
    };
    // Prompt 1 is longer than the sliding window; prompt 2 (two tokens) crosses it while generating.
    assert!(prompts[1].1.len() > window && prompts[2].1.len() + 12 > window);
    for p in [0, 1, 2] {
        let ids = &prompts[p].1;
        for (label, sampling) in [("greedy", Sampling::greedy()), ("sampled", sampled)] {
            for steer in [None, Some(SteerMode::Add), Some(SteerMode::Clamp)] {
                let mut runs = [true, false].map(|use_cache| {
                    let mut hook: Box<dyn Hook> = match steer {
                        None => Box::new(NoHook),
                        Some(mode) => Box::new(Steering::new(&sae, 1, mode, &[(7, 60.0)]).unwrap()),
                    };
                    run_generation(&model, ids, 12, sampling, use_cache, hook.as_mut())
                });
                let what = format!("prompt {p} {label} {steer:?}");
                let recomputed = runs[1].clone();
                let cached = &mut runs[0];
                assert_eq!(cached.ids, recomputed.ids, "{what}");
                for (step, (a, b)) in cached.logits.iter().zip(&recomputed.logits).enumerate() {
                    assert_close(&format!("{what} step {step}"), a, b, 1e-5);
                }
            }
        }
    }
}

#[test]
fn the_same_seed_draws_the_same_tokens() {
    let reference = Reference::load("tiny");
    let ids = &reference.prompts()[0].1;
    let (_, model) = tiny();
    let draw = |seed| {
        let sampling = Sampling {
            temperature: 3.0,
            top_p: 1.0,
            seed,
        };
        run_generation(&model, ids, 16, sampling, true, &mut NoHook).ids
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

fn generate_cli(extra: &[&str]) -> std::process::Output {
    let model = crate::util::fixture_arg("tiny");
    let mut args = vec!["generate", "--model", &model, "--device", "cpu"];
    args.extend_from_slice(extra);
    run(&args)
}

fn steer_cli(extra: &[&str]) -> std::process::Output {
    let (model, sae) = (
        crate::util::fixture_arg("tiny"),
        crate::util::fixture_arg("tiny/sae_res_L1.npz"),
    );
    let mut args = vec![
        "steer", "--model", &model, "--sae", &sae, "--layer", "1", "--device", "cpu",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn case(reference: &Reference, name: &str) -> Vec<u32> {
    let cases = reference.json["generation"].as_array().unwrap();
    let case = cases.iter().find(|c| c["name"] == name).unwrap();
    ids_of(&case["generated_ids"])
}

const PROMPT: &str = "The Golden Gate Bridge is";

#[test]
fn generate_streams_the_json_text_and_reports_the_contract() {
    let reference = Reference::load("tiny");
    let doc = json_of(&generate_cli(&["--json", "--max-new-tokens", "8", PROMPT]));
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(
        ids_of(&doc["generated_ids"]),
        case(&reference, "p0_baseline")
    );
    assert_eq!(ids_of(&doc["prompt_ids"]), reference.prompts()[0].1);
    assert_eq!(doc["prompt"], PROMPT);
    assert_eq!(doc["chat"], false);
    assert_eq!(doc["sampling"]["temperature"], 0.0);
    assert_eq!(doc["sampling"]["max_new_tokens"], 8);
    assert_eq!(doc["stop_reason"], "max_new_tokens");
    assert!(doc["stop_ids"].as_array().unwrap().contains(&EOS.into()));
    assert!(doc["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(doc["model"]["num_layers"], 4);

    let out = generate_cli(&["--max-new-tokens", "8", PROMPT]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = doc["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(stdout(&out), format!("{text}\n"));
}

#[test]
fn chat_encodes_the_gemma_template() {
    let doc = json_of(&generate_cli(&[
        "--json",
        "--chat",
        "--max-new-tokens",
        "2",
        "Hi",
    ]));
    let template = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n";
    assert_eq!(doc["prompt_text"], template);
    assert_eq!(doc["chat"], true);
    let files = ModelFiles::from_dir(&fixture("tiny")).unwrap();
    let tokenizer =
        PromptTokenizer::from_file(&files.tokenizer, files.config.bos_token_id).unwrap();
    assert_eq!(
        ids_of(&doc["prompt_ids"]),
        tokenizer.encode(template).unwrap()
    );
}

#[test]
fn sampled_generation_follows_the_seed_on_the_command_line() {
    let draw = |seed: &str| {
        let doc = json_of(&generate_cli(&[
            "--json",
            "--temperature",
            "3",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
            PROMPT,
        ]));
        ids_of(&doc["generated_ids"])
    };
    assert_eq!(draw("5"), draw("5"));
    assert_ne!(draw("5"), draw("6"));
}

#[test]
fn steer_json_has_both_continuations_and_the_steering() {
    let reference = Reference::load("tiny");
    let doc = json_of(&steer_cli(&[
        "--json",
        "--feature",
        "7",
        "--strength",
        "400",
        "--max-new-tokens",
        "8",
        PROMPT,
    ]));
    assert_eq!(
        ids_of(&doc["baseline"]["generated_ids"]),
        case(&reference, "p0_baseline")
    );
    assert_eq!(
        ids_of(&doc["steered"]["generated_ids"]),
        case(&reference, "p0_add1")
    );
    assert!(doc["baseline"]["text"].is_string() && doc["steered"]["text"].is_string());
    assert_eq!(doc["steering"][0]["feature"], 7);
    assert_eq!(doc["steering"][0]["strength"], 400.0);
    assert_eq!(doc["mode"], "add");
    assert_eq!(doc["layer"], 1);
    assert_eq!(doc["hook"]["site"], "res");
    assert_eq!(doc["sae"]["d_sae"], 256);
    assert_eq!(doc["sampling"]["seed"], 0);

    // Two features, one negative; and clamp mode.
    let doc = json_of(&steer_cli(&[
        "--json",
        "--feature",
        "7",
        "--strength",
        "400",
        "--feature",
        "61",
        "--strength",
        "-200",
        "--max-new-tokens",
        "8",
        PROMPT,
    ]));
    assert_eq!(
        ids_of(&doc["steered"]["generated_ids"]),
        case(&reference, "p0_add2")
    );
    assert_eq!(doc["steering"][1]["strength"], -200.0);
    let doc = json_of(&steer_cli(&[
        "--json",
        "--mode",
        "clamp",
        "--feature",
        "7",
        "--strength",
        "400",
        "--max-new-tokens",
        "8",
        PROMPT,
    ]));
    assert_eq!(doc["mode"], "clamp");
    assert_eq!(
        ids_of(&doc["steered"]["generated_ids"]),
        case(&reference, "p0_clamp")
    );
}

#[test]
fn steer_shows_both_continuations_labelled() {
    let doc = json_of(&steer_cli(&[
        "--json",
        "--feature",
        "7",
        "--strength",
        "400",
        "--max-new-tokens",
        "4",
        PROMPT,
    ]));
    let (base, steered) = (
        doc["baseline"]["text"].as_str().unwrap().trim().to_string(),
        doc["steered"]["text"].as_str().unwrap().trim().to_string(),
    );
    for columns in ["120", "40"] {
        let (model, sae) = (
            crate::util::fixture_arg("tiny"),
            crate::util::fixture_arg("tiny/sae_res_L1.npz"),
        );
        let out = crate::util::bin()
            .env("COLUMNS", columns)
            .args([
                "steer",
                "--model",
                &model,
                "--sae",
                &sae,
                "--layer",
                "1",
                "--device",
                "cpu",
                "--color",
                "never",
                "--feature",
                "7",
                "--strength",
                "400",
                "--max-new-tokens",
                "4",
                PROMPT,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("baseline"), "{text}");
        assert!(text.contains("steered (add #7 +400)"), "{text}");
        assert!(text.contains(&base[..base.len().min(10)]), "{text}");
        assert!(text.contains(&steered[..steered.len().min(10)]), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        if columns == "120" {
            assert!(text.contains(" │ "), "side by side: {text}");
        } else {
            assert!(text.contains("── baseline ──"), "stacked: {text}");
        }
    }
}

#[test]
fn steer_and_generate_refuse_bad_flags_in_one_line() {
    assert_fails_with(
        &steer_cli(&["--feature", "7", PROMPT]),
        "each --feature needs its own --strength",
    );
    assert_fails_with(
        &steer_cli(&[
            "--feature",
            "7",
            "--strength",
            "1",
            "--strength",
            "2",
            PROMPT,
        ]),
        "1 --feature and 2 --strength",
    );
    assert_fails_with(&steer_cli(&[PROMPT]), "nothing to steer");
    assert_fails_with(
        &steer_cli(&["--feature", "256", "--strength", "1", PROMPT]),
        "--feature 256 does not exist: the SAE has 256 features",
    );
    assert_fails_with(
        &generate_cli(&["--max-new-tokens", "0", PROMPT]),
        "--max-new-tokens must be at least 1",
    );
    assert_fails_with(
        &steer_cli(&[
            "--feature",
            "7",
            "--strength",
            "1",
            "--max-new-tokens",
            "0",
            PROMPT,
        ]),
        "--max-new-tokens must be at least 1",
    );
    assert_fails_with(&generate_cli(&["--top-p", "0", PROMPT]), "--top-p");
}

#[test]
fn features_highlight_shades_or_marks_the_feature() {
    let (model, sae) = (
        crate::util::fixture_arg("tiny"),
        crate::util::fixture_arg("tiny/sae_res_L1.npz"),
    );
    let base = [
        "features",
        "--model",
        &model,
        "--sae",
        &sae,
        "--layer",
        "1",
        "--device",
        "cpu",
        "--highlight",
        "7",
    ];
    let plain = run(&[&base[..], &["--color", "never", PROMPT][..]].concat());
    assert!(plain.status.success(), "{}", stderr(&plain));
    let text = stdout(&plain);
    assert!(text.contains("feature #7 on this prompt"), "{text}");
    assert!(text.contains("[token:activation]"), "{text}");
    // Feature 7 fires on "The Golden Gate Bridge is" (it tops the prompt's aggregate).
    let marked = text
        .lines()
        .find(|l| l.contains(':') && l.contains('[') && l.contains("<bos>"));
    assert!(marked.is_some_and(|l| l.contains(']')), "{text}");
    let coloured = run(&[&base[..], &["--color", "always", PROMPT][..]].concat());
    assert!(
        stdout(&coloured).contains("\x1b[30;48;5;"),
        "{}",
        stdout(&coloured)
    );

    let json = json_of(&run(&[&base[..], &["--json", PROMPT][..]].concat()));
    let h = &json["prompts"][0]["highlight"];
    assert_eq!(h["feature"], 7);
    assert_eq!(h["activations"].as_array().unwrap().len(), 16);
    assert!(h["max"].as_f64().unwrap() > 0.0);

    assert_fails_with(
        &run(&[&base[..9], &["--highlight", "300", PROMPT][..]].concat()),
        "--highlight 300 does not exist",
    );
}
