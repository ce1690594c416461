//! Labels, feature cards and search: `labels pull` against a fake Neuronpedia (export bucket and
//! API, with its faults), the label cache, `search` local and online, and `explain` checked
//! against the NumPy references of tests/fixtures/cards.py.

use crate::hub_server::{gemma_2_2b, gemma_scope_2b_pt_res, FakeHub};
use crate::neuronpedia_server::{batch_key, export_line, gzip, FakeNeuronpedia};
use crate::util::{assert_close, assert_fails_with, bin, fixture, fixture_arg, json_of, stderr};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const MODEL: &str = "gemma-2-2b";
const SAE20: &str = "20-gemmascope-res-16k";

/// gemscope with its cache in `cache` and Neuronpedia at `url` (bucket and API).
fn gemscope(cache: &Path, url: &str) -> Command {
    let mut cmd = bin();
    for var in [
        "NEURONPEDIA_API_KEY",
        "HF_HUB_OFFLINE",
        "GEMSCOPE_NETWORK_TIMEOUT",
        "XDG_CACHE_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GEMSCOPE_CACHE", cache)
        .env("NEURONPEDIA_DATASETS_URL", url)
        .env("NEURONPEDIA_URL", url)
        .stdin(Stdio::null());
    cmd
}

fn run_in(cache: &Path, url: &str, args: &[&str]) -> Output {
    gemscope(cache, url).args(args).output().unwrap()
}

/// A failed run: exit 2, nothing on stdout, notes allowed on stderr before the one-line error,
/// which holds `needle`; no panic.
#[track_caller]
fn assert_ends_in_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        crate::util::stdout(out)
    );
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("gemscope: ") && !last.starts_with("gemscope: note:"),
        "{err}"
    );
    assert!(last.contains(needle), "the error lacks {needle:?}: {err}");
    for line in err.trim_end().lines() {
        assert!(line.starts_with("gemscope: "), "{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// A closed port: any request fails at once.
fn nowhere() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Layer 20's export in two batches: batch 0 has a line that is not JSON, an explanation of a
/// feature past 16k, and a duplicate; feature 12082 has two explanations across the batches.
fn serve_layer_20(np: &FakeNeuronpedia) {
    let batch0 = [
        export_line(MODEL, SAE20, 12082, "references to dogs and puppies"),
        export_line(MODEL, SAE20, 10004, "time travel and the future"),
        "this line is not JSON".to_string(),
        export_line(MODEL, SAE20, 99999, "a feature the SAE does not have"),
        export_line(MODEL, SAE20, 10004, "time travel and the future"),
        export_line(MODEL, SAE20, 7, "cats"),
    ]
    .join("\n");
    let batch1 = [
        export_line(MODEL, SAE20, 12082, "dog breeds"),
        export_line(MODEL, SAE20, 300, "hot dogs at a baseball game"),
        export_line(MODEL, SAE20, 5, "Dogs and dog owners"),
    ]
    .join("\n");
    np.object(&batch_key(MODEL, SAE20, 0), gzip(&batch0));
    np.object(&batch_key(MODEL, SAE20, 1), gzip(&batch1));
}

fn search_json(cache: &Path, url: &str, query: &str, extra: &[&str]) -> Value {
    let mut args = vec!["search", query, "--layer", "20", "--json"];
    args.extend_from_slice(extra);
    json_of(&run_in(cache, url, &args))
}

fn result_ids(doc: &Value) -> Vec<(u64, u64)> {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["layer"].as_u64().unwrap(), r["feature"].as_u64().unwrap()))
        .collect()
}

#[test]
fn pull_builds_a_compact_index_that_search_reads_offline() {
    let cache = tempfile::tempdir().unwrap();
    let np = FakeNeuronpedia::start();
    serve_layer_20(&np);
    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(out.stdout.is_empty(), "pull prints nothing on stdout");
    assert!(
        err.contains("skipped 1 line(s) that are not an explanation in JSON"),
        "{err}"
    );
    assert!(
        err.contains("skipped 1 explanation(s) of features the SAE does not have (it has 16384)"),
        "{err}"
    );
    assert!(err.contains("dropped 1 duplicate explanation(s)"), "{err}");
    assert!(
        err.contains("5 features, 6 explanations from 2 batches"),
        "{err}"
    );
    // The listing was asked with S3's ListObjectsV2 parameters.
    assert!(np.seen().iter().any(|s| s.target.contains("list-type=2")
        && s.target
            .contains("prefix=v1%2Fgemma-2-2b%2F20-gemmascope-res-16k%2Fexplanations%2F")));
    let dir = cache.path().join("neuronpedia").join(MODEL).join(SAE20);
    assert!(dir.join("labels.idx").is_file());
    assert!(
        !dir.join("batches").exists(),
        "a complete pull keeps only the index"
    );
    drop(np);

    // Offline (the server is gone, the network refused): the cache answers.
    let url = nowhere();
    let doc = search_json(cache.path(), &url, "Dogs", &["--offline"]);
    assert_eq!(doc["method"], "local");
    assert_eq!(doc["query"], "Dogs");
    let ids = result_ids(&doc);
    assert_eq!(ids.len(), 3, "{doc}");
    for id in [(20, 12082), (20, 300), (20, 5)] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let first = &doc["results"][0];
    assert!(first["score"].as_f64().unwrap() > 0.0);
    assert_eq!(
        first["neuronpedia_url"],
        format!(
            "https://www.neuronpedia.org/{MODEL}/{SAE20}/{}",
            first["feature"]
        )
    );
    let scores: Vec<f64> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // Feature 12082 matches through its second explanation, which is the label shown there.
    let f12082 = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["feature"] == 12082)
        .unwrap();
    assert!(f12082["label"].as_str().unwrap().contains("dog"));
    let doc = search_json(cache.path(), &url, "time travel", &["--offline"]);
    assert_eq!(result_ids(&doc), vec![(20, 10004)]);
    assert_eq!(doc["results"][0]["label"], "time travel and the future");

    // The table: layer, feature, label, score, URL.
    let out = run_in(
        cache.path(),
        &url,
        &["search", "time travel", "--layer", "20", "--offline"],
    );
    let text = crate::util::stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("#10004") && text.contains("time travel and the future"),
        "{text}"
    );
    assert!(text.contains("https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/10004"));
}

#[test]
fn bad_search_input_is_a_one_line_error() {
    let cache = tempfile::tempdir().unwrap();
    let url = nowhere();
    assert_fails_with(
        &run_in(cache.path(), &url, &["search", "  ", "--layer", "20"]),
        "query is empty",
    );
    assert_fails_with(
        &run_in(cache.path(), &url, &["search", "dogs", "--layers", "3-30"]),
        "layer 30 is out of range",
    );
    assert_fails_with(
        &run_in(cache.path(), &url, &["search", "dogs", "--layers", "9-2"]),
        "runs backwards",
    );
    assert_fails_with(
        &run_in(cache.path(), &url, &["search", "dogs", "--layers", "x"]),
        "is not `all`",
    );
    // Nothing cached and offline: says how to get labels.
    let out = run_in(
        cache.path(),
        &url,
        &["search", "dogs", "--layer", "20", "--offline"],
    );
    assert_ends_in_error(&out, "no labels to search");
}

#[test]
fn a_missing_batch_and_a_damaged_gzip_fail_the_pull_but_keep_the_rest() {
    let cache = tempfile::tempdir().unwrap();
    let np = FakeNeuronpedia::start();
    np.object(
        &batch_key(MODEL, SAE20, 0),
        gzip(&export_line(MODEL, SAE20, 12082, "references to dogs")),
    );
    np.listed_but_missing(&batch_key(MODEL, SAE20, 1), 100);
    let whole = gzip(&export_line(MODEL, SAE20, 40, "weather and rain"));
    np.object(
        &batch_key(MODEL, SAE20, 2),
        whole[..whole.len() - 9].to_vec(),
    );
    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    assert_ends_in_error(&out, "labels incomplete for 1 SAE(s)");
    assert!(stderr(&out).contains("2 of 3 batches missing (batch-1.jsonl.gz is listed but"));

    // Batch 0's labels are usable; nothing of the damaged batch 2 is shown.
    let doc = search_json(cache.path(), &nowhere(), "dogs", &["--offline"]);
    assert_eq!(result_ids(&doc), vec![(20, 12082)]);
    let doc = search_json(cache.path(), &nowhere(), "rain", &["--offline"]);
    assert!(result_ids(&doc).is_empty());

    // The next pull fetches only the missing batches.
    np.object(&batch_key(MODEL, SAE20, 2), whole.clone());
    np.object(
        &batch_key(MODEL, SAE20, 1),
        gzip(&export_line(MODEL, SAE20, 41, "snow")),
    );
    let before = np.seen().len();
    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(1 reused from an interrupted pull)"),
        "{}",
        stderr(&out)
    );
    let fetched: Vec<String> = np.seen()[before..]
        .iter()
        .map(|s| s.target.clone())
        .collect();
    assert!(
        !fetched.iter().any(|t| t.ends_with("batch-0.jsonl.gz")),
        "{fetched:?}"
    );
    let doc = search_json(cache.path(), &nowhere(), "rain", &["--offline"]);
    assert_eq!(result_ids(&doc), vec![(20, 40)]);
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let cache = tempfile::tempdir().unwrap();
    let np = FakeNeuronpedia::start();
    serve_layer_20(&np);
    let key = batch_key(MODEL, SAE20, 1);
    np.cut_next(&key);
    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    assert_ends_in_error(&out, "run the command again to resume");
    let part = cache
        .path()
        .join("neuronpedia")
        .join(MODEL)
        .join(SAE20)
        .join("batches/batch-1.jsonl.gz.part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0, "the part of the download that arrived is kept");

    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ranged: Vec<_> = np
        .seen()
        .into_iter()
        .filter(|s| s.target.ends_with("batch-1.jsonl.gz") && s.range.is_some())
        .collect();
    assert_eq!(ranged.len(), 1);
    assert_eq!(
        ranged[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    let doc = search_json(cache.path(), &nowhere(), "baseball", &["--offline"]);
    assert_eq!(result_ids(&doc), vec![(20, 300)]);
}

#[test]
fn rate_limits_are_retried_after_retry_after_then_reported() {
    let cache = tempfile::tempdir().unwrap();
    let np = FakeNeuronpedia::start();
    serve_layer_20(&np);
    np.rate_limit("list-type", 1);
    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("rate limiting"), "{}", stderr(&out));

    let cache = tempfile::tempdir().unwrap();
    np.rate_limit("list-type", 3);
    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("gemscope: ") && last.contains("HTTP 429"),
        "{err}"
    );
    assert!(last.contains("Retry-After 1"), "{err}");
}

#[test]
fn a_server_that_never_answers_times_out_with_a_clear_message() {
    let cache = tempfile::tempdir().unwrap();
    let np = FakeNeuronpedia::start();
    np.hang();
    let started = std::time::Instant::now();
    let out = gemscope(cache.path(), &np.url())
        .env("GEMSCOPE_NETWORK_TIMEOUT", "0.5")
        .args(["labels", "pull", "--layer", "20"])
        .output()
        .unwrap();
    assert_fails_with(&out, "did not answer the listing of v1/gemma-2-2b/20-gemmascope-res-16k/explanations/ within 0.5 s");
    assert!(started.elapsed().as_secs() < 20);
}

#[test]
fn a_damaged_index_is_never_shown_and_is_fetched_again() {
    let cache = tempfile::tempdir().unwrap();
    let np = FakeNeuronpedia::start();
    serve_layer_20(&np);
    let out = run_in(
        cache.path(),
        &np.url(),
        &["labels", "pull", "--layer", "20"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let index = cache
        .path()
        .join("neuronpedia")
        .join(MODEL)
        .join(SAE20)
        .join("labels.idx");
    let mut bytes = std::fs::read(&index).unwrap();
    // "dogs" becomes "dogz" in place: same length, so only the checksum can tell.
    let at = bytes
        .windows(4)
        .position(|w| w == b"dogs")
        .expect("the index holds the label text");
    bytes[at + 3] = b'z';
    std::fs::write(&index, &bytes).unwrap();

    // Offline: not shown (not even the garbled text), with a note.
    let out = run_in(
        cache.path(),
        &nowhere(),
        &["search", "dogz", "--layer", "20", "--offline"],
    );
    assert_ends_in_error(&out, "no labels to search");
    let out = run_in(
        cache.path(),
        &np.url(),
        &["search", "dogs", "--layer", "20", "--json"],
    );
    let err = stderr(&out);
    assert!(
        err.contains("are damaged (a checksum mismatch): fetching them again"),
        "{err}"
    );
    let doc = json_of(&out);
    assert!(result_ids(&doc).contains(&(20, 12082)));
    let doc = search_json(cache.path(), &nowhere(), "dogz", &["--offline"]);
    assert!(result_ids(&doc).is_empty());
}

#[test]
fn online_search_posts_to_neuronpedia_with_the_api_key() {
    let cache = tempfile::tempdir().unwrap();
    let np = FakeNeuronpedia::start();
    np.search_results(vec![
        serde_json::json!({"modelId": MODEL, "layer": SAE20, "index": "12082",
                           "description": "references to dogs", "cosine_similarity": 0.71}),
        serde_json::json!({"modelId": MODEL, "layer": "3-gemmascope-res-16k", "index": "9",
                           "description": "dog food", "cosine_similarity": 0.65}),
    ]);
    let out = gemscope(cache.path(), &np.url())
        .env("NEURONPEDIA_API_KEY", "sk-np-secret")
        .args(["search", "dogs", "--layers", "20", "--online", "--json"])
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("sk-np-secret"));
    let doc = json_of(&out);
    assert_eq!(doc["method"], "online");
    assert_eq!(result_ids(&doc), vec![(20, 12082)]);
    assert_eq!(doc["results"][0]["score"], 0.71);
    assert_eq!(doc["results"][0]["label"], "references to dogs");
    let post = np
        .seen()
        .into_iter()
        .find(|s| s.method == "POST")
        .expect("a POST");
    assert_eq!(post.target, "/api/explanation/search");
    assert_eq!(post.api_key.as_deref(), Some("sk-np-secret"));
    let body: Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"modelId": MODEL, "layers": [SAE20], "query": "dogs", "offset": 0})
    );
}

/// `explain` on the tiny model against tests/fixtures/tiny/cards_reference.json (NumPy, float64).
#[test]
fn explain_matches_the_numpy_feature_cards() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny/cards_reference.json")).unwrap(),
    )
    .unwrap();
    let k = reference["k"].as_u64().unwrap() as usize;
    for (name, sae) in reference["saes"].as_object().unwrap() {
        let features: Vec<String> = sae["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["feature"].to_string())
            .collect();
        let layer = sae["layer"].to_string();
        let sae_file = fixture_arg(&format!("tiny/{}", sae["file"].as_str().unwrap()));
        let model = fixture_arg("tiny");
        let mut args = vec![
            "explain", "--model", &model, "--sae", &sae_file, "--layer", &layer, "--json",
        ];
        args.extend(features.iter().map(String::as_str));
        let doc = json_of(&crate::util::run(&args));
        let cards = doc["features"].as_array().unwrap();
        assert_eq!(cards.len(), features.len());
        for (card, expected) in cards.iter().zip(sae["features"].as_array().unwrap()) {
            let what = format!("{name} feature {}", expected["feature"]);
            assert_eq!(card["feature"], expected["feature"]);
            assert_eq!(card["label"], Value::Null, "no labels for a local SAE");
            for field in ["threshold", "encoder_norm", "decoder_norm", "encoder_bias"] {
                let (a, e) = (
                    card[field].as_f64().unwrap(),
                    expected[field].as_f64().unwrap(),
                );
                assert_close(&format!("{what} {field}"), &[a as f32], &[e as f32], 1e-5);
            }
            for (list, ref_list) in [
                (&card["logits"]["positive"], &expected["positive"]),
                (&card["logits"]["negative"], &expected["negative"]),
                (&card["neighbours"], &expected["neighbours"]),
            ] {
                let list = list.as_array().unwrap();
                let ref_list = ref_list.as_array().unwrap();
                assert_eq!(list.len(), k);
                let id_field = if list[0].get("id").is_some() {
                    "id"
                } else {
                    "feature"
                };
                let value_field = if id_field == "id" { "value" } else { "cosine" };
                let ids: Vec<u64> = list.iter().map(|e| e[id_field].as_u64().unwrap()).collect();
                let ref_ids: Vec<u64> = ref_list.iter().map(|e| e[0].as_u64().unwrap()).collect();
                assert_eq!(ids, ref_ids, "{what} {id_field}s");
                let values: Vec<f32> = list
                    .iter()
                    .map(|e| e[value_field].as_f64().unwrap() as f32)
                    .collect();
                let ref_values: Vec<f32> = ref_list
                    .iter()
                    .map(|e| e[1].as_f64().unwrap() as f32)
                    .collect();
                assert_close(
                    &format!("{what} {value_field}s"),
                    &values,
                    &ref_values,
                    1e-4,
                );
            }
            // The pieces are the vocabulary's.
            let first = &card["logits"]["positive"][0];
            assert!(first["token"].as_str().is_some_and(|t| !t.is_empty()));
        }
    }
}

#[test]
fn explain_of_a_feature_outside_the_sae_is_a_one_line_error() {
    let model = fixture_arg("tiny");
    let sae = fixture_arg("tiny/sae_res_L1.npz");
    let out = crate::util::run(&[
        "explain", "--model", &model, "--sae", &sae, "--layer", "1", "3", "256",
    ]);
    assert_fails_with(
        &out,
        "feature 256 does not exist: the SAE has 256 features (0..=255)",
    );
}

/// The whole loop on the default model through the fake hub and the fake Neuronpedia: labels
/// pulled on first use, Neuronpedia's density and max activation from the feature API.
#[test]
fn explain_shows_labels_density_and_neighbour_labels_from_neuronpedia() {
    const SAE1: &str = "1-gemmascope-res-16k";
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b(), gemma_scope_2b_pt_res()]);
    let np = FakeNeuronpedia::start();
    let lines = [
        export_line(MODEL, SAE1, 3, "the Golden Gate Bridge"),
        export_line(MODEL, SAE1, 3, "bridges"),
        export_line(MODEL, SAE1, 17, "San Francisco"),
    ];
    np.object(&batch_key(MODEL, SAE1, 0), gzip(&lines.join("\n")));
    np.feature(
        MODEL,
        SAE1,
        3,
        serde_json::json!({"modelId": MODEL, "layer": SAE1, "index": "3",
            "explanations": [{"description": "the Golden Gate Bridge"}],
            "maxActApprox": 41.5, "frac_nonzero": 0.00123,
            "pos_str": ["▁bridge"], "pos_values": [0.9], "neg_str": [], "neg_values": [],
            "activations": [{"tokens": ["a"], "values": [1.0]}]}),
    );
    let np_url = np.url();
    let run = |args: &[&str], offline: bool| {
        let mut cmd = gemscope(cache.path(), &np_url);
        for var in [
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_CACHE",
            "HF_TOKEN_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HF_ENDPOINT", hub.url())
            .env("HF_HOME", home.path())
            .env("NEURONPEDIA_API_KEY", "sk-np-secret")
            .args(args);
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd.output().unwrap()
    };
    let out = run(&["explain", "--layer", "1", "3", "--json"], false);
    assert!(!stderr(&out).contains("sk-np-secret"));
    let doc = json_of(&out);
    let card = &doc["features"][0];
    assert_eq!(card["feature"], 3);
    assert_eq!(card["label"], "the Golden Gate Bridge");
    assert_eq!(
        card["labels"],
        serde_json::json!(["the Golden Gate Bridge", "bridges"])
    );
    assert_eq!(card["density"], 0.00123);
    assert_eq!(card["max_activation"], 41.5);
    assert_eq!(
        card["neuronpedia_url"],
        "https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/3"
    );
    assert_eq!(card["examples"], Value::Null);
    let feature_call = np
        .seen()
        .into_iter()
        .find(|s| s.target.starts_with("/api/feature/"))
        .unwrap();
    assert_eq!(
        feature_call.target,
        "/api/feature/gemma-2-2b/1-gemmascope-res-16k/3"
    );
    assert_eq!(feature_call.api_key.as_deref(), Some("sk-np-secret"));
    // Neighbours carry their labels when cached.
    let neighbours = card["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 10);
    for n in neighbours {
        let expected = if n["feature"] == 17 {
            Value::from("San Francisco")
        } else {
            Value::Null
        };
        assert_eq!(n["label"], expected);
    }
    drop(np);

    // Offline, from the caches only: the same card, no request.
    let again = json_of(&run(&["explain", "--layer", "1", "3", "--json"], true));
    assert_eq!(again["features"], doc["features"]);
    drop(hub);
}

/// gemscope on the fake hub (`google/gemma-2-2b`, `google/gemma-scope-2b-pt-res` with layers 1
/// and 3) with labels from `np_url` cached in `cache`.
fn on_hub(hub: &FakeHub, home: &Path, cache: &Path, np_url: &str, args: &[&str]) -> Output {
    let mut cmd = gemscope(cache, np_url);
    for var in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", home)
        .args(args)
        .output()
        .unwrap()
}

/// Every number of a features report, labels and links left out.
fn numbers(doc: &Value) -> Value {
    let mut doc = doc.clone();
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("label");
                map.remove("neuronpedia_url");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut doc);
    doc["prompts"].clone()
}

#[test]
fn features_show_labels_and_their_failures_never_change_the_numbers() {
    const SAE1: &str = "1-gemmascope-res-16k";
    let home = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b(), gemma_scope_2b_pt_res()]);
    let prompt = "The Golden Gate Bridge is";
    let args = ["features", "--layer", "1", "--json", prompt];

    // Without labels: every label is null, and a note says why.
    let empty = tempfile::tempdir().unwrap();
    let out = on_hub(&hub, home.path(), empty.path(), &nowhere(), &args);
    assert!(
        stderr(&out).contains("labels of gemma-2-2b/1-gemmascope-res-16k are not shown"),
        "{}",
        stderr(&out)
    );
    let plain = json_of(&out);
    let aggregate = plain["prompts"][0]["top_features"].as_array().unwrap();
    assert!(!aggregate.is_empty());
    assert!(aggregate.iter().all(|f| f["label"].is_null()));
    let top = aggregate[0]["feature"].as_u64().unwrap() as u32;
    let token_top = plain["prompts"][0]["tokens"][1]["top_features"][0]["feature"]
        .as_u64()
        .unwrap() as u32;

    // With labels for the top features, fetched once from the export and cached.
    let np = FakeNeuronpedia::start();
    let lines = [
        export_line(MODEL, SAE1, top, "golden things"),
        export_line(MODEL, SAE1, token_top, "the first word"),
    ];
    np.object(&batch_key(MODEL, SAE1, 0), gzip(&lines.join("\n")));
    let cache = tempfile::tempdir().unwrap();
    let labelled = json_of(&on_hub(&hub, home.path(), cache.path(), &np.url(), &args));
    assert_eq!(
        labelled["prompts"][0]["top_features"][0]["label"],
        "golden things"
    );
    let token = &labelled["prompts"][0]["tokens"][1]["top_features"][0];
    let expected = if token_top == top {
        "golden things"
    } else {
        "the first word"
    };
    assert_eq!(token["label"], expected);
    assert_eq!(numbers(&labelled), numbers(&plain));

    // The table has the label column.
    let table_args = ["features", "--layer", "1", "--color", "never", prompt];
    let out = on_hub(&hub, home.path(), cache.path(), &np.url(), &table_args);
    let text = crate::util::stdout(&out);
    assert!(
        text.contains("  label") && text.contains("golden things"),
        "{text}"
    );
    drop(np);

    // --no-labels: nothing fetched or shown; a hanging server: a note, the same numbers.
    let out = on_hub(
        &hub,
        home.path(),
        cache.path(),
        &nowhere(),
        &["features", "--layer", "1", "--json", "--no-labels", prompt],
    );
    assert!(!stderr(&out).contains("label"), "{}", stderr(&out));
    assert_eq!(numbers(&json_of(&out)), numbers(&plain));
    let hanging = FakeNeuronpedia::start();
    hanging.hang();
    let fresh = tempfile::tempdir().unwrap();
    let mut cmd = gemscope(fresh.path(), &hanging.url());
    for var in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", home.path())
        .env("GEMSCOPE_NETWORK_TIMEOUT", "0.5")
        .args(args)
        .output()
        .unwrap();
    assert!(stderr(&out).contains("did not answer"), "{}", stderr(&out));
    assert_eq!(numbers(&json_of(&out)), numbers(&plain));
}

#[test]
fn features_across_layers_match_one_layer_runs_from_one_forward_pass() {
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b(), gemma_scope_2b_pt_res()]);
    let url = nowhere();
    let prompts = ["The Golden Gate Bridge is", "line one\nline two\ttab"];
    let mut args = vec!["features", "--layers", "1,3", "--json", "--no-labels"];
    args.extend(prompts);
    let doc = json_of(&on_hub(&hub, home.path(), cache.path(), &url, &args));
    let layers = doc["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for layer in layers {
        let n = layer["layer"].to_string();
        let mut one = vec!["features", "--layer", n.as_str(), "--json", "--no-labels"];
        one.extend(prompts);
        let alone = json_of(&on_hub(&hub, home.path(), cache.path(), &url, &one));
        assert_eq!(layer["prompts"], alone["prompts"], "layer {n}");
        assert_eq!(layer["sae"], alone["sae"]);
    }
    // The ranking merges both layers' aggregates by summed activation.
    for (i, ranking) in doc["ranking"].as_array().unwrap().iter().enumerate() {
        let mut expected: Vec<(f64, u64, u64)> = layers
            .iter()
            .flat_map(|l| {
                l["prompts"][i]["top_features"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| {
                        (
                            f["activation_sum"].as_f64().unwrap(),
                            l["layer"].as_u64().unwrap(),
                            f["feature"].as_u64().unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        expected.truncate(doc["top_k"].as_u64().unwrap() as usize);
        let got: Vec<(f64, u64, u64)> = ranking["top_features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["activation_sum"].as_f64().unwrap(),
                    f["layer"].as_u64().unwrap(),
                    f["feature"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, expected);
    }
    let out = on_hub(
        &hub,
        home.path(),
        cache.path(),
        &url,
        &["features", "--layers", "2-9", "x"],
    );
    assert_fails_with(&out, "layer 9 is out of range: the model has 4 layers");
    let out = on_hub(
        &hub,
        home.path(),
        cache.path(),
        &url,
        &[
            "features",
            "--layers",
            "1,3",
            "--sae",
            &fixture_arg("tiny/sae_res_L1.npz"),
            "x",
        ],
    );
    assert_fails_with(&out, "not one SAE file");
}

#[test]
fn steer_names_its_features_by_their_labels() {
    const SAE1: &str = "1-gemmascope-res-16k";
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b(), gemma_scope_2b_pt_res()]);
    let np = FakeNeuronpedia::start();
    np.object(
        &batch_key(MODEL, SAE1, 0),
        gzip(&export_line(MODEL, SAE1, 7, "bridges and tunnels")),
    );
    let steer = [
        "steer",
        "--layer",
        "1",
        "--feature",
        "7",
        "--strength",
        "400",
        "--max-new-tokens",
        "2",
    ];
    let mut args = steer.to_vec();
    args.extend(["--json", "The Golden Gate Bridge is"]);
    let doc = json_of(&on_hub(&hub, home.path(), cache.path(), &np.url(), &args));
    assert_eq!(doc["steering"][0]["label"], "bridges and tunnels");
    let mut args = steer.to_vec();
    args.extend(["--color", "never", "The Golden Gate Bridge is"]);
    let out = on_hub(&hub, home.path(), cache.path(), &np.url(), &args);
    let text = crate::util::stdout(&out);
    assert!(text.contains("#7 (bridges and tunnels) +400"), "{text}");
}

#[test]
fn attribute_names_its_features_by_their_labels() {
    const SAE1: &str = "1-gemmascope-res-16k";
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b(), gemma_scope_2b_pt_res()]);
    let np = FakeNeuronpedia::start();
    // Label every feature, so whichever ranks first has one.
    let lines: String = (0..256)
        .map(|f| export_line(MODEL, SAE1, f, &format!("concept number {f}")))
        .collect::<Vec<_>>()
        .join("\n");
    np.object(&batch_key(MODEL, SAE1, 0), gzip(&lines));
    let args = ["attribute", "--layer", "1", "--top-k", "3", "--json"];
    let mut with_prompt = args.to_vec();
    with_prompt.push("The Golden Gate Bridge is");
    let doc = json_of(&on_hub(
        &hub,
        home.path(),
        cache.path(),
        &np.url(),
        &with_prompt,
    ));
    let top = &doc["attributions"][0];
    let feature = top["feature"].as_u64().unwrap();
    assert_eq!(top["label"], format!("concept number {feature}"));
    let total = &doc["features"][0];
    assert_eq!(
        total["label"],
        format!("concept number {}", total["feature"].as_u64().unwrap())
    );
    let mut plain = vec![
        "attribute",
        "--layer",
        "1",
        "--top-k",
        "3",
        "--color",
        "never",
    ];
    plain.push("The Golden Gate Bridge is");
    let out = on_hub(&hub, home.path(), cache.path(), &np.url(), &plain);
    let text = crate::util::stdout(&out);
    assert!(
        text.contains(&format!("concept number {feature}")),
        "{text}"
    );
}
