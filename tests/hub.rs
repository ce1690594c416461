//! The Hugging Face Hub layer against a fake hub on 127.0.0.1 (`hub_server`): the shared cache
//! layout, offline mode, gated repos, interrupted downloads, only the needed shards, SAE
//! resolution and `gemscope list-saes`. Nothing here reaches the network.

use crate::hub_server::{
    commit_of, etag_of, gemma_2_2b, gemma_scope_2b_pt_res, tiny_sharded, FakeHub, FakeRepo,
};
use crate::util::{assert_fails_with, bin, fixture, json_of, stderr, stdout};
use gemscope::hub::{
    fetch_weights, resolve_model, resolve_sae, HubClient, HubError, HubOptions, L0Choice,
    SaeRequest, Weights,
};
use gemscope::model::{Parts, Site};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

const MODEL: &str = "google/gemma-2-2b";
const SCOPE: &str = "google/gemma-scope-2b-pt-res";

fn options(endpoint: &str, cache: &Path, offline: bool) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_string(),
        token: None,
        cache_dir: cache.to_path_buf(),
        offline,
        progress: false,
    }
}

fn client(endpoint: &str, cache: &Path, offline: bool) -> HubClient {
    HubClient::new(options(endpoint, cache, offline)).unwrap()
}

fn bytes(fixture_path: &str) -> Vec<u8> {
    std::fs::read(fixture(fixture_path)).unwrap()
}

fn err_text(err: anyhow::Error) -> String {
    format!("{err:#}")
}

fn request(sae: Option<&str>, layer: usize, l0: L0Choice) -> SaeRequest {
    SaeRequest {
        sae: sae.map(str::to_string),
        width: "16k".to_string(),
        l0,
        model_id: MODEL.to_string(),
        layer,
        site: Site::Res,
    }
}

/// Every file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn model_downloads_into_the_python_layout_then_runs_from_cache_with_the_hub_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let hub = FakeHub::start(vec![gemma_2_2b()]);
    let commit = commit_of(MODEL);
    let parts = Parts::through_layer(1);

    let c = client(&hub.url(), &cache, false);
    let files = resolve_model(&c, MODEL, "main").unwrap();
    assert_eq!(files.source, MODEL);
    assert_eq!(files.revision.as_deref(), Some(commit.as_str()));
    assert_eq!(files.config.hidden_size, 64);
    assert_eq!(
        std::fs::read(&files.tokenizer).unwrap(),
        bytes("tiny/tokenizer.json")
    );
    assert!(matches!(files.weights, Weights::Single(_)));
    assert_eq!(
        hub.downloads_of("model.safetensors"),
        0,
        "resolve_model must not fetch weights"
    );

    let weights = fetch_weights(&c, &files, parts).unwrap();
    assert_eq!(weights.len(), 1);
    assert_eq!(
        std::fs::read(&weights[0]).unwrap(),
        bytes("tiny/model.safetensors")
    );
    assert_eq!(files.weight_files(parts).unwrap(), weights);
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(hub.downloads_of(name), 1, "{name}");
    }

    // The layout huggingface_hub writes and reads.
    let repo_dir = cache.join("models--google--gemma-2-2b");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        commit
    );
    assert!(
        !repo_dir.join("refs").join(&commit).exists(),
        "Python never writes refs/<commit>"
    );
    let pointer = repo_dir.join("snapshots").join(&commit).join("config.json");
    let etag = etag_of(&bytes("tiny/config.json"));
    #[cfg(unix)]
    assert_eq!(
        std::fs::read_link(&pointer).unwrap(),
        Path::new("../../blobs").join(&etag)
    );
    assert_eq!(
        std::fs::read(repo_dir.join("blobs").join(&etag)).unwrap(),
        bytes("tiny/config.json")
    );
    assert_eq!(
        files.tokenizer,
        repo_dir
            .join("snapshots")
            .join(&commit)
            .join("tokenizer.json")
    );

    // The model loads from what was fetched.
    crate::util::load_model(
        &files,
        parts,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();

    // Second run, hub gone: the cache answers without error.
    let url = hub.url();
    let requests_before = hub.seen().len();
    drop(hub);
    let c = client(&url, &cache, false);
    let again = resolve_model(&c, MODEL, "main").unwrap();
    assert_eq!(again.revision.as_deref(), Some(commit.as_str()));
    assert_eq!(fetch_weights(&c, &again, parts).unwrap(), weights);
    assert!(requests_before > 0);
}

#[test]
fn a_second_online_run_downloads_nothing_again() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b()]);
    let c = client(&hub.url(), tmp.path(), false);
    for _ in 0..2 {
        let files = resolve_model(&c, MODEL, "main").unwrap();
        fetch_weights(&c, &files, Parts::through_layer(0)).unwrap();
    }
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(hub.downloads_of(name), 1, "{name}");
    }
}

#[test]
fn offline_uses_only_the_cache_and_names_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b()]);
    let offline = client(&hub.url(), tmp.path(), true);

    let err = offline.fetch(MODEL, "main", "config.json").unwrap_err();
    assert!(matches!(
        err.downcast_ref::<HubError>(),
        Some(HubError::NotCached(_))
    ));
    let msg = err_text(err);
    for needle in ["config.json", MODEL, "main", "offline"] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    assert!(hub.seen().is_empty(), "offline must not touch the network");

    let online = client(&hub.url(), tmp.path(), false);
    let (path, commit) = online.fetch(MODEL, "main", "config.json").unwrap();
    let seen = hub.seen().len();
    assert_eq!(
        offline.fetch(MODEL, "main", "config.json").unwrap(),
        (path.clone(), commit.clone())
    );
    assert_eq!(
        offline.fetch(MODEL, &commit, "config.json").unwrap(),
        (path, commit.clone())
    );
    let msg = err_text(offline.fetch(MODEL, "main", "tokenizer.json").unwrap_err());
    assert!(
        msg.contains("tokenizer.json") && msg.contains(MODEL),
        "{msg}"
    );
    let msg = err_text(resolve_model(&offline, MODEL, "main").unwrap_err());
    assert!(msg.contains("tokenizer.json"), "{msg}");
    let msg = err_text(offline.list_files(SCOPE, "main").unwrap_err());
    assert!(msg.contains("listing") && msg.contains(SCOPE), "{msg}");
    assert_eq!(hub.seen().len(), seen, "offline must not touch the network");
}

#[test]
fn gated_repo_says_to_accept_the_license_and_never_shows_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b().gated("hf_the_right_token")]);
    let secret = "hf_wrongSECRETtoken123";
    let mut opts = options(&hub.url(), tmp.path(), false);
    opts.token = Some(secret.to_string());
    assert!(!format!("{opts:?}").contains(secret));
    let c = HubClient::new(opts).unwrap();

    let err = resolve_model(&c, MODEL, "main").unwrap_err();
    assert!(matches!(
        err.downcast_ref::<HubError>(),
        Some(HubError::Denied(_))
    ));
    let msg = err_text(err);
    for needle in [
        "license",
        "HF_TOKEN",
        "https://huggingface.co/google/gemma-2-2b",
        "403",
    ] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    assert!(!msg.contains(secret), "the token leaked: {msg}");
    let listing = format!("{:?}", c.list_files(MODEL, "main").unwrap_err());
    assert!(
        listing.contains("license") && !listing.contains(secret),
        "{listing}"
    );
    assert!(hub
        .seen()
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&*format!("Bearer {secret}"))));

    let anonymous = client(&hub.url(), tmp.path(), false);
    let msg = err_text(anonymous.fetch(MODEL, "main", "config.json").unwrap_err());
    assert!(
        msg.contains("401") && msg.contains("license") && msg.contains("no token"),
        "{msg}"
    );
    assert!(files_under(tmp.path())
        .iter()
        .all(|p| !p.to_string_lossy().contains("snapshots")));
}

#[test]
fn token_comes_from_the_hf_home_token_file_when_hf_token_is_unset() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_from_the_file\n").unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b().gated("hf_from_the_file")]);
    let vars: HashMap<&str, String> = [
        ("HF_HOME", home.path().display().to_string()),
        ("HF_ENDPOINT", hub.url()),
    ]
    .into();
    let opts = HubOptions::from_vars(&|name| vars.get(name).cloned(), None, false).unwrap();
    assert_eq!(opts.cache_dir, home.path().join("hub"));
    let c = HubClient::new(opts).unwrap();
    let (path, _) = c.fetch(MODEL, "main", "config.json").unwrap();
    assert!(path.starts_with(home.path().join("hub")));
    let seen = hub.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer hf_from_the_file")),
        "{seen:?}"
    );
}

#[test]
fn an_interrupted_download_leaves_no_complete_looking_file_and_a_retry_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b()]);
    let c = client(&hub.url(), tmp.path(), false);
    let full = bytes("tiny/model.safetensors");
    hub.truncate_next("model.safetensors");

    let msg = err_text(c.fetch(MODEL, "main", "model.safetensors").unwrap_err());
    assert!(
        msg.contains("model.safetensors") && msg.contains("interrupted"),
        "{msg}"
    );
    let repo_dir = tmp.path().join("models--google--gemma-2-2b");
    assert!(c.cached(MODEL, "main", "model.safetensors").is_none());
    assert!(!repo_dir.join("blobs").join(etag_of(&full)).exists());
    assert!(!repo_dir
        .join("snapshots")
        .join(commit_of(MODEL))
        .join("model.safetensors")
        .exists());
    for file in files_under(tmp.path()) {
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(len < full.len() as u64, "{} looks complete", file.display());
    }

    let (path, _) = c.fetch(MODEL, "main", "model.safetensors").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), full);
    let resumed = hub.seen().iter().any(|s| {
        s.is_download()
            && s.path.ends_with("model.safetensors")
            && s.range
                .as_deref()
                .is_some_and(|r| r != "bytes=0-" && r.starts_with("bytes="))
    });
    assert!(
        resumed,
        "the retry should resume with a Range request: {:?}",
        hub.seen()
    );
}

#[test]
fn a_resume_the_server_answers_with_the_whole_file_is_caught_by_the_size_check() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b()]);
    let c = client(&hub.url(), tmp.path(), false);
    let full = bytes("tiny/model.safetensors");
    hub.truncate_next("model.safetensors");
    assert!(c.fetch(MODEL, "main", "model.safetensors").is_err());
    // The resume gets 200 and the whole file, which hf-hub appends to the partial one.
    hub.ignore_ranges();
    let msg = err_text(c.fetch(MODEL, "main", "model.safetensors").unwrap_err());
    assert!(
        msg.contains("bytes") && msg.contains("run the command again"),
        "{msg}"
    );
    assert!(c.cached(MODEL, "main", "model.safetensors").is_none());
    for file in files_under(tmp.path()) {
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(
            len != full.len() as u64 + full.len() as u64 / 2,
            "{} is corrupt",
            file.display()
        );
    }
    let (path, _) = c.fetch(MODEL, "main", "model.safetensors").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), full);
}

#[test]
fn sharded_model_fetches_only_the_shards_holding_needed_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![tiny_sharded()]);
    let c = client(&hub.url(), tmp.path(), false);
    let repo = "gemscope-tests/tiny-sharded";
    let files = resolve_model(&c, repo, "main").unwrap();
    assert!(matches!(files.weights, Weights::Sharded { .. }));
    let shard = |k: usize| format!("model-0000{k}-of-00004.safetensors");
    let shard_downloads = || {
        (1..=4)
            .map(|k| hub.downloads_of(&shard(k)))
            .collect::<Vec<_>>()
    };
    assert_eq!(shard_downloads(), [0, 0, 0, 0]);

    // Blocks 0 and 1 and the embeddings live in shards 1 and 2.
    let parts = Parts::through_layer(1);
    let paths = fetch_weights(&c, &files, parts).unwrap();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [shard(1), shard(2)]);
    assert_eq!(shard_downloads(), [1, 1, 0, 0]);
    assert_eq!(files.weight_files(parts).unwrap(), paths);
    for (path, k) in paths.iter().zip(1..) {
        assert_eq!(
            std::fs::read(path).unwrap(),
            bytes(&format!("tiny-sharded/{}", shard(k)))
        );
    }

    let all = fetch_weights(&c, &files, Parts::full(&files.config)).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(
        shard_downloads(),
        [1, 1, 1, 1],
        "cached shards are not downloaded again"
    );
}

#[test]
fn canonical_l0_is_the_one_closest_to_100_and_explicit_l0_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_scope_2b_pt_res()]);
    let c = client(&hub.url(), tmp.path(), false);
    let sae_l1 = bytes("tiny/sae_res_L1.npz");

    // No --sae: the release follows from the model and the site.
    let got = resolve_sae(&c, &request(None, 1, L0Choice::Canonical)).unwrap();
    assert_eq!(got.l0, Some(95));
    assert_eq!(got.width.as_deref(), Some("16k"));
    assert_eq!(got.repo.as_deref(), Some(SCOPE));
    assert_eq!(
        got.path_in_repo.as_deref(),
        Some("layer_1/width_16k/average_l0_95/params.npz")
    );
    assert_eq!(got.revision, Some(commit_of(SCOPE)));
    assert_eq!(std::fs::read(&got.path).unwrap(), sae_l1);
    let np = got
        .neuronpedia
        .clone()
        .expect("the canonical SAE is on Neuronpedia");
    assert_eq!(
        (np.model.as_str(), np.sae_id.as_str()),
        ("gemma-2-2b", "1-gemmascope-res-16k")
    );
    assert_eq!(
        np.url(42),
        "https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/42"
    );
    assert!(got.notes.is_empty());

    let by_release = resolve_sae(&c, &request(Some(SCOPE), 1, L0Choice::Canonical)).unwrap();
    assert_eq!(by_release.path, got.path);
    let l3 = resolve_sae(&c, &request(Some(SCOPE), 3, L0Choice::Canonical)).unwrap();
    assert_eq!(l3.l0, Some(80));
    assert_eq!(
        std::fs::read(&l3.path).unwrap(),
        bytes("tiny/sae_res_L3.npz")
    );

    let exact = resolve_sae(&c, &request(None, 1, L0Choice::Exact(23))).unwrap();
    assert_eq!(
        exact.path_in_repo.as_deref(),
        Some("layer_1/width_16k/average_l0_23/params.npz")
    );
    assert!(
        exact.neuronpedia.is_none(),
        "Neuronpedia hosts the canonical SAEs only"
    );

    // Hub paths: a folder gets params.npz appended; a file is taken as is.
    let folder = format!("{SCOPE}/layer_1/width_16k/average_l0_95");
    let by_folder = resolve_sae(&c, &request(Some(&folder), 1, L0Choice::Canonical)).unwrap();
    assert_eq!(
        by_folder.path_in_repo.as_deref(),
        Some("layer_1/width_16k/average_l0_95/params.npz")
    );
    assert_eq!(by_folder.neuronpedia, got.neuronpedia);
    let file = format!("{SCOPE}/layer_1/width_16k/average_l0_120/params.npz");
    let by_file = resolve_sae(&c, &request(Some(&file), 1, L0Choice::Canonical)).unwrap();
    assert_eq!((by_file.l0, by_file.neuronpedia), (Some(120), None));

    // The IT model borrows the base model's release, with a note.
    let mut it = request(None, 1, L0Choice::Canonical);
    it.model_id = "google/gemma-2-2b-it".into();
    let it = resolve_sae(&c, &it).unwrap();
    assert_eq!(it.path, got.path);
    assert_eq!(it.neuronpedia.unwrap().model, "gemma-2-2b");
    assert!(
        it.notes.len() == 1 && it.notes[0].contains("transfer"),
        "{:?}",
        it.notes
    );

    // The listing is cached: the hub gone, and offline, the same SAE comes back.
    assert!(hub.seen().iter().any(|s| s.path.starts_with("/api/")));
    let url = hub.url();
    drop(hub);
    for offline in [false, true] {
        let c = client(&url, tmp.path(), offline);
        let again = resolve_sae(&c, &request(None, 1, L0Choice::Canonical)).unwrap();
        assert_eq!((again.path, again.l0), (got.path.clone(), Some(95)));
    }
}

#[test]
fn missing_layer_width_or_l0_errors_list_what_the_release_has() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_scope_2b_pt_res()]);
    let c = client(&hub.url(), tmp.path(), false);
    let msg = |req: SaeRequest| err_text(resolve_sae(&c, &req).unwrap_err());

    let m = msg(request(None, 2, L0Choice::Canonical));
    assert!(m.contains("layer 2") && m.contains("layers 1, 3"), "{m}");
    let mut wide = request(None, 1, L0Choice::Canonical);
    wide.width = "65k".into();
    let m = msg(wide);
    assert!(
        m.contains("65k") && m.contains("widths there are 16k"),
        "{m}"
    );
    let m = msg(request(None, 1, L0Choice::Exact(50)));
    assert!(
        m.contains("23, 95, 120") && m.contains("canonical 95"),
        "{m}"
    );

    let m = msg(request(
        Some(&format!("{SCOPE}/layer_3/width_16k/average_l0_80")),
        1,
        L0Choice::Canonical,
    ));
    assert!(m.contains("layer 3") && m.contains("--layer 3"), "{m}");
    let mut mlp = request(Some(SCOPE), 1, L0Choice::Canonical);
    mlp.site = Site::Mlp;
    let m = msg(mlp);
    assert!(m.contains("res SAEs") && m.contains("mlp"), "{m}");
    let m = msg(request(
        Some(&format!("{SCOPE}/layer_1/width_16k/average_l0_7")),
        1,
        L0Choice::Canonical,
    ));
    assert!(
        m.contains("layer_1/width_16k/average_l0_7/params.npz") && m.contains("not found"),
        "{m}"
    );
    let mut other = request(None, 1, L0Choice::Canonical);
    other.model_id = "google/gemma-2-9b".into();
    let m = msg(other);
    assert!(
        m.contains("google/gemma-scope-9b-pt-res") && m.contains("not found"),
        "{m}"
    );
}

#[test]
fn local_paths_need_neither_network_nor_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("never-created");
    // Port 1 on loopback: nothing listens, so any request would fail.
    let c = client("http://127.0.0.1:1", &cache, false);
    let dir = fixture("tiny");
    let files = resolve_model(&c, dir.to_str().unwrap(), "main").unwrap();
    assert!(files.revision.is_none());
    assert_eq!(
        fetch_weights(&c, &files, Parts::through_layer(1)).unwrap(),
        vec![dir.join("model.safetensors")]
    );
    let sae_path = dir.join("sae_res_L1.npz");
    let sae = resolve_sae(
        &c,
        &request(Some(sae_path.to_str().unwrap()), 1, L0Choice::Canonical),
    )
    .unwrap();
    assert_eq!(sae.path, sae_path);
    assert!(sae.repo.is_none() && sae.neuronpedia.is_none());
    assert!(!cache.exists(), "local paths must not create the cache");

    let msg = err_text(
        resolve_sae(
            &c,
            &request(Some("./nope/params.npz"), 1, L0Choice::Canonical),
        )
        .unwrap_err(),
    );
    assert!(
        msg.contains("./nope/params.npz") && msg.contains("not found"),
        "{msg}"
    );
    let msg = err_text(resolve_model(&c, "/no/such/model", "main").unwrap_err());
    assert!(
        msg.contains("/no/such/model") && msg.contains("not found"),
        "{msg}"
    );
    let msg = err_text(resolve_model(&c, MODEL, "main").unwrap_err());
    assert!(
        msg.contains("cannot reach") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
}

/// Writes `bytes` as a blob and links it from the snapshot, as huggingface_hub does.
fn python_file(repo_dir: &Path, commit: &str, path: &str, bytes: &[u8]) {
    let etag = format!("{:0>64}", etag_of(bytes));
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::write(repo_dir.join("blobs").join(&etag), bytes).unwrap();
    let pointer = repo_dir.join("snapshots").join(commit).join(path);
    std::fs::create_dir_all(pointer.parent().unwrap()).unwrap();
    let ups = "../".repeat(path.split('/').count() + 1);
    #[cfg(unix)]
    std::os::unix::fs::symlink(format!("{ups}blobs/{etag}"), &pointer).unwrap();
    #[cfg(not(unix))]
    std::fs::write(&pointer, bytes).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
}

#[test]
fn a_cache_written_by_python_huggingface_hub_is_read_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let model_dir = cache.join("models--google--gemma-2-2b");
    for (name, fixture_path) in [
        ("config.json", "tiny/config.json"),
        ("tokenizer.json", "tiny/tokenizer.json"),
        ("model.safetensors", "tiny/model.safetensors"),
    ] {
        python_file(&model_dir, commit, name, &bytes(fixture_path));
    }
    let scope_commit = "89abcdef0123456789abcdef0123456789abcdef";
    let scope_dir = cache.join("models--google--gemma-scope-2b-pt-res");
    python_file(
        &scope_dir,
        scope_commit,
        "layer_1/width_16k/average_l0_71/params.npz",
        &bytes("tiny/sae_res_L1.npz"),
    );

    let c = client("http://127.0.0.1:1", &cache, true);
    let files = resolve_model(&c, MODEL, "main").unwrap();
    assert_eq!(files.revision.as_deref(), Some(commit));
    let weights = fetch_weights(&c, &files, Parts::through_layer(1)).unwrap();
    assert_eq!(
        weights,
        vec![model_dir
            .join("snapshots")
            .join(commit)
            .join("model.safetensors")]
    );
    assert_eq!(
        std::fs::read(&weights[0]).unwrap(),
        bytes("tiny/model.safetensors")
    );

    let folder = format!("{SCOPE}/layer_1/width_16k/average_l0_71");
    let sae = resolve_sae(&c, &request(Some(&folder), 1, L0Choice::Canonical)).unwrap();
    assert_eq!(sae.revision.as_deref(), Some(scope_commit));
    assert_eq!(
        std::fs::read(&sae.path).unwrap(),
        bytes("tiny/sae_res_L1.npz")
    );

    // No listing was ever cached: the release is chosen among the SAEs in the cache, with a note.
    let by_release = resolve_sae(&c, &request(None, 1, L0Choice::Canonical)).unwrap();
    assert_eq!((by_release.path, by_release.l0), (sae.path, Some(71)));
    assert!(
        by_release.notes.iter().any(|n| n.contains("not cached")),
        "{:?}",
        by_release.notes
    );
}

fn list_saes(hub_url: &str, home: &Path, args: &[&str]) -> Output {
    gemscope_on_hub(hub_url, home, &[&["list-saes"], args].concat())
}

/// Runs `gemscope ARGS` against the fake hub, with a clean Hugging Face environment.
fn gemscope_on_hub(hub_url: &str, home: &Path, args: &[&str]) -> Output {
    let mut cmd = bin();
    for var in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_TOKEN_PATH",
        "XDG_CACHE_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_ENDPOINT", hub_url)
        .env("HF_HOME", home)
        .args(args);
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn the_main_command_needs_no_paths_and_then_runs_offline_from_the_cache() {
    // `gemscope features --layer 1 "prompt"`: default model, default (canonical) SAE, from the hub.
    let home = tempfile::tempdir().unwrap();
    let args = [
        "features",
        "--layer",
        "1",
        "--json",
        "The Golden Gate Bridge is",
    ];
    let hub = FakeHub::start(vec![gemma_2_2b(), gemma_scope_2b_pt_res()]);
    let doc = json_of(&gemscope_on_hub(&hub.url(), home.path(), &args));
    drop(hub);

    assert_eq!(doc["model"]["source"], MODEL);
    assert_eq!(doc["model"]["revision"], commit_of(MODEL));
    assert_eq!(doc["sae"]["repo"], SCOPE);
    assert_eq!(
        doc["sae"]["path"],
        "layer_1/width_16k/average_l0_95/params.npz"
    );
    assert_eq!(doc["sae"]["width"], "16k");
    assert_eq!(doc["sae"]["l0"], 95);
    assert_eq!(doc["sae"]["neuronpedia"]["sae_id"], "1-gemmascope-res-16k");
    let token = &doc["prompts"][0]["tokens"][1];
    let feature = token["top_features"][0]["feature"].as_u64().unwrap();
    assert_eq!(
        token["top_features"][0]["neuronpedia_url"],
        format!("https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/{feature}")
    );
    assert!(doc["prompts"][0]["top_features"][0]["neuronpedia_url"].is_string());

    // The same numbers as the local fixture run: the hub only changes where files come from.
    let reference = crate::util::Reference::load("tiny");
    let want = &reference.json["saes"]["res_L1"]["prompts"][0];
    assert_eq!(doc["prompts"][0]["tokens"][3]["l0"], want["l0"][3]);

    // Server gone: the same command works from the cache, with HF_HUB_OFFLINE and without it.
    let offline = json_of(&gemscope_on_hub(
        "http://127.0.0.1:9",
        home.path(),
        &[&args[..], &["--offline"]].concat(),
    ));
    assert_eq!(offline["prompts"], doc["prompts"]);
    let table = gemscope_on_hub(
        "http://127.0.0.1:9",
        home.path(),
        &["features", "--layer", "1", "--offline", "hello"],
    );
    assert!(table.status.success(), "{}", stderr(&table));
    assert!(stdout(&table).contains(
        "top feature on Neuronpedia: https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/"
    ));

    // Offline with an empty cache names the missing file.
    let empty = tempfile::tempdir().unwrap();
    let out = gemscope_on_hub(
        "http://127.0.0.1:9",
        empty.path(),
        &[&args[..], &["--offline"]].concat(),
    );
    assert_fails_with(&out, "config.json");
}

#[test]
fn list_saes_shows_layers_widths_l0s_and_the_canonical_one() {
    let home = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_scope_2b_pt_res()]);

    let doc = json_of(&list_saes(&hub.url(), home.path(), &["--json"]));
    assert_eq!(doc["release"], SCOPE);
    assert_eq!(doc["revision"], commit_of(SCOPE));
    assert_eq!(doc["model"], MODEL);
    assert_eq!(doc["site"], "res");
    assert_eq!(doc["neuronpedia_model"], "gemma-2-2b");
    let saes = doc["saes"].as_array().unwrap();
    let rows: Vec<(u64, u64, bool)> = saes
        .iter()
        .map(|s| {
            (
                s["layer"].as_u64().unwrap(),
                s["l0"].as_u64().unwrap(),
                s["canonical"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (1, 23, false),
            (1, 95, true),
            (1, 120, false),
            (3, 80, true)
        ]
    );
    assert_eq!(
        saes[1]["path"],
        "layer_1/width_16k/average_l0_95/params.npz"
    );
    assert_eq!(saes[1]["width"], "16k");
    assert_eq!(saes[1]["neuronpedia_id"], "1-gemmascope-res-16k");
    assert!(saes[0]["neuronpedia_id"].is_null());

    let out = list_saes(&hub.url(), home.path(), &["--layer", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("23  95*  120"), "{table}");
    assert!(table.contains("gemma-2-2b/1-gemmascope-res-16k"), "{table}");
    assert!(!table.contains("80*"), "--layer 1 filters: {table}");

    assert_fails_with(
        &list_saes(&hub.url(), home.path(), &["--layer", "2"]),
        "layers 1, 3",
    );
    assert_fails_with(
        &list_saes(&hub.url(), home.path(), &["--width", "1m"]),
        "widths are 16k",
    );
    assert_fails_with(
        &list_saes(&hub.url(), home.path(), &["--site", "mlp"]),
        "repository google/gemma-scope-2b-pt-mlp not found",
    );
    let it = list_saes(
        &hub.url(),
        home.path(),
        &["--model", "google/gemma-2-2b-it"],
    );
    assert!(
        it.status.success() && stderr(&it).contains("note: ") && stderr(&it).contains("transfer")
    );

    // From the cached listing once the hub is gone, offline or not.
    let url = hub.url();
    drop(hub);
    for args in [&["--json"][..], &["--json", "--offline"][..]] {
        let doc = json_of(&list_saes(&url, home.path(), args));
        assert_eq!(doc["saes"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn list_saes_with_the_token_from_the_token_file() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_listing_token").unwrap();
    let hub = FakeHub::start(vec![gemma_scope_2b_pt_res().gated("hf_listing_token")]);
    let doc = json_of(&list_saes(
        &hub.url(),
        home.path(),
        &["--json", "--release", SCOPE],
    ));
    assert_eq!(doc["saes"].as_array().unwrap().len(), 4);
    assert!(doc["model"].is_null());
    assert!(hub
        .seen()
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_listing_token")));
}

#[test]
fn unknown_repos_and_files_are_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![gemma_2_2b(), FakeRepo::new("org/empty")]);
    let c = client(&hub.url(), tmp.path(), false);
    let msg = err_text(c.fetch("org/missing", "main", "config.json").unwrap_err());
    assert!(msg.contains("repository org/missing not found"), "{msg}");
    let msg = err_text(c.fetch(MODEL, "v9", "config.json").unwrap_err());
    assert!(msg.contains("revision v9 not found"), "{msg}");
    let msg = err_text(resolve_model(&c, "org/empty", "main").unwrap_err());
    assert!(msg.contains("config.json not found in org/empty"), "{msg}");
    assert_eq!(
        c.fetch_optional(MODEL, "main", "model.safetensors.index.json")
            .unwrap(),
        None
    );
    // The absence is recorded as Python records it, and answers later runs without a request.
    let marker = tmp
        .path()
        .join("models--google--gemma-2-2b/.no_exist")
        .join(commit_of(MODEL));
    assert!(marker.join("model.safetensors.index.json").is_file());
}
