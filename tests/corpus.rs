//! `top-examples` and `merge`: parity with transformers on a small corpus, sharded runs merging
//! to the unsharded bytes, merge refusals, kill-and-resume, corrupt checkpoints, bad corpora,
//! Parquet and standard input.

use crate::util::{assert_fails_with, fixture, fixture_arg, run, run_with_stdin, stderr};
use gemscope::corpus::run::{collect, CorpusJob, Encoder};
use gemscope::corpus::{merge, CorpusFormat, CorpusReader, CorpusSpec, RunIdentity, Shard, Store};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The options of the transformers reference (`tests/fixtures/corpus.py`).
fn reference_args(corpus: &str, out: &Path) -> Vec<String> {
    [
        "top-examples",
        "--model",
        &fixture_arg("tiny"),
        "--sae",
        &fixture_arg("tiny/sae_res_L1.npz"),
        "--layer",
        "1",
        "--corpus",
        corpus,
        "--max-tokens",
        "32",
        "--top",
        "5",
        "--context",
        "2",
        "--batch-size",
        "4",
        "--out",
        &out.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn gemscope(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(out)
    );
    assert!(out.stdout.is_empty(), "stdout must stay empty");
}

/// `args` with `extra` options: a `--flag value` already in `args` gets the new value.
fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        let takes_value = extra.get(i + 1).is_some_and(|v| !v.starts_with("--"));
        match args.iter().position(|a| a == extra[i]) {
            Some(at) if takes_value => args[at + 1] = extra[i + 1].to_string(),
            _ => {
                args.push(extra[i].to_string());
                if takes_value {
                    args.push(extra[i + 1].to_string());
                }
            }
        }
        i += 1 + usize::from(takes_value);
    }
    args
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn close(actual: f32, expected: f64) -> bool {
    ((actual as f64) - expected).abs() <= 1e-4 * expected.abs().max(1e-6)
}

#[test]
fn examples_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store.jsonl");
    assert_ok(&gemscope(&reference_args(&fixture_arg("corpus.txt"), &out)));
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny/corpus_reference.json")).unwrap(),
    )
    .unwrap();
    let store = Store::open(&out).unwrap();
    let header = &store.header;
    assert_eq!(header.documents, reference["documents"].as_u64().unwrap());
    assert_eq!(header.tokens, reference["tokens"].as_u64().unwrap());
    assert_eq!(header.skipped.get("empty").copied(), Some(2));
    assert_eq!(
        header.corpus.as_ref().unwrap().records,
        reference["records"].as_u64().unwrap()
    );
    let features = reference["features"].as_array().unwrap();
    assert_eq!(store.features.len(), features.len());
    let mut compared_orders = 0;
    for expected in features {
        let id = expected["feature"].as_u64().unwrap() as u32;
        let got = store.feature(id).unwrap();
        assert_eq!(got.tokens, header.tokens);
        assert_eq!(
            got.active,
            expected["active"].as_u64().unwrap(),
            "feature {id} active"
        );
        assert_eq!(got.density, got.active as f64 / got.tokens as f64);
        assert!(
            close(
                got.max_activation,
                expected["max_activation"].as_f64().unwrap()
            ),
            "feature {id} max {}",
            got.max_activation
        );
        let mut counts = vec![0u64; got.histogram.counts.len()];
        for pair in expected["histogram"].as_array().unwrap() {
            counts[pair[0].as_u64().unwrap() as usize] = pair[1].as_u64().unwrap();
        }
        if expected["histogram_exact"].as_bool().unwrap() {
            assert_eq!(got.histogram.counts, counts, "feature {id} histogram");
        } else {
            assert_eq!(got.histogram.counts.iter().sum::<u64>(), got.active);
        }
        let want = expected["examples"].as_array().unwrap();
        assert_eq!(got.examples.len(), want.len(), "feature {id} examples");
        let order_exact = expected["order_exact"].as_bool().unwrap();
        compared_orders += usize::from(order_exact);
        for (k, (e, w)) in got.examples.iter().zip(want).enumerate() {
            assert!(
                close(e.activation, w["activation"].as_f64().unwrap()),
                "feature {id} example {k}: {} vs {}",
                e.activation,
                w["activation"]
            );
            if !order_exact {
                continue;
            }
            assert_eq!(
                (e.document, e.position),
                (
                    w["document"].as_u64().unwrap(),
                    w["position"].as_u64().unwrap() as u32
                ),
                "feature {id} example {k}"
            );
            let ids: Vec<u32> = e.tokens.iter().map(|t| t.id).collect();
            let want_ids: Vec<u32> = w["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want_ids, "feature {id} example {k} window");
            assert_eq!(e.tokens[0].position as u64, w["start"].as_u64().unwrap());
            for (t, v) in e.tokens.iter().zip(w["activations"].as_array().unwrap()) {
                let v = v.as_f64().unwrap();
                assert!(
                    (t.activation as f64 - v).abs() <= 1e-4 * e.activation as f64,
                    "feature {id} example {k} token {}: {} vs {v}",
                    t.position,
                    t.activation
                );
            }
        }
    }
    assert!(compared_orders >= 250, "{compared_orders}");
    // One feature read alone gives the same as the whole store.
    let alone = gemscope::corpus::read_feature(&out, 7).unwrap().unwrap();
    assert_eq!(alone, store.feature(7).unwrap());
    assert!(gemscope::corpus::read_feature(&out, 9999)
        .unwrap()
        .is_none());
}

/// The in-process pieces of a run on the tiny model, SAE res_L1.
struct Tiny {
    model: gemscope::model::Gemma2,
    sae: gemscope::sae::JumpReluSae,
    tokenizer: gemscope::tokenizer::PromptTokenizer,
}

impl Tiny {
    fn load() -> Self {
        let args = gemscope::cli::ModelArgs {
            model: fixture_arg("tiny"),
            revision: "main".into(),
            offline: true,
            device: gemscope::cli::DeviceArg::Cpu,
            dtype: None,
        };
        let ui = gemscope::ui::Ui::new(gemscope::cli::GlobalArgs {
            quiet: true,
            verbose: false,
        });
        let files = gemscope::commands::Job::open(&args, ui).unwrap().files;
        let device = candle_core::Device::Cpu;
        let parts = gemscope::model::Parts::through_layer(1);
        let model =
            crate::util::load_model(&files, parts, candle_core::DType::F32, &device).unwrap();
        let sae = gemscope::sae::JumpReluSae::load(
            &fixture("tiny/sae_res_L1.npz"),
            64,
            gemscope::sae::SaeParts::EncoderOnly,
            &device,
        )
        .unwrap();
        let tokenizer = gemscope::tokenizer::PromptTokenizer::from_file(
            &files.tokenizer,
            files.config.bos_token_id,
        )
        .unwrap();
        Self {
            model,
            sae,
            tokenizer,
        }
    }

    fn identity(batch_size: usize) -> RunIdentity {
        RunIdentity {
            model: "tiny".into(),
            model_revision: None,
            model_config_sha256: "-".into(),
            sae: "res_L1".into(),
            sae_sha256: "-".into(),
            d_sae: 256,
            layer: 1,
            site: "res".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            corpus_format: "text".into(),
            text_field: None,
            limit: None,
            top: 4,
            max_tokens: 24,
            context: None,
            batch_size,
            features: None,
        }
    }

    fn shard(&self, batch_size: usize, shard: Shard) -> Store {
        let job = CorpusJob {
            model: &self.model,
            encoder: Encoder::all(&self.sae).unwrap(),
            point: gemscope::model::HookPoint {
                layer: 1,
                site: gemscope::model::Site::Res,
            },
            tokenizer: &self.tokenizer,
            max_tokens: 24,
            batch_size,
            shard,
            checkpoint: None,
            progress: false,
        };
        let reader = CorpusReader::open(&CorpusSpec {
            path: fixture("corpus.txt"),
            format: CorpusFormat::Text,
            field: "text".into(),
            limit: None,
        })
        .unwrap();
        collect(
            &job,
            reader,
            Store::new(Self::identity(batch_size), (0..256).collect()),
        )
        .unwrap()
    }
}

fn bytes(store: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    store.write(&mut out).unwrap();
    out
}

#[test]
fn sharded_runs_merge_to_the_unsharded_bytes_in_process() {
    let tiny = Tiny::load();
    for batch_size in [1, 3] {
        let whole = bytes(&tiny.shard(batch_size, Shard::WHOLE));
        for count in [2u32, 3, 5] {
            let parts: Vec<(PathBuf, Store)> = (0..count)
                .map(|index| {
                    let part = tiny.shard(batch_size, Shard { index, count });
                    (PathBuf::from(format!("part{index}")), part)
                })
                .collect();
            // Every shard did some of the work, and none did it all.
            assert!(parts.iter().all(|(_, p)| p.header.documents < 28));
            let merged = merge::merge(parts, false).unwrap();
            assert_eq!(
                bytes(&merged),
                whole,
                "batch size {batch_size}, {count} shards"
            );
        }
    }
}

/// Runs shard `k` of `n` of the reference command with `extra` options into `dir/name`.
fn run_shard(dir: &Path, name: &str, k: u32, n: u32, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let args = with(
        reference_args(&fixture_arg("corpus.txt"), &out),
        &[&["--shard", &format!("{k}/{n}")], extra].concat(),
    );
    assert_ok(&gemscope(&args));
    out
}

fn merge_cmd(out: &Path, parts: &[&Path], extra: &[&str]) -> Output {
    let mut args = vec![
        "merge".to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(parts.iter().map(|p| p.display().to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    gemscope(&args)
}

#[test]
fn merge_is_exact_and_associative_and_slurm_names_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.jsonl");
    assert_ok(&gemscope(&reference_args(
        &fixture_arg("corpus.txt"),
        &whole,
    )));
    let p: Vec<PathBuf> = (0..3)
        .map(|k| run_shard(dir.path(), &format!("p{k}.jsonl"), k, 3, &[]))
        .collect();
    let all = dir.path().join("all.jsonl");
    assert_ok(&merge_cmd(&all, &[&p[2], &p[0], &p[1]], &[]));
    assert_eq!(read(&all), read(&whole));
    // (0 + 1) + 2 and 0 + (1 + 2).
    let left = dir.path().join("left.jsonl");
    assert_ok(&merge_cmd(&left, &[&p[0], &p[1]], &["--allow-partial"]));
    let left_all = dir.path().join("left_all.jsonl");
    assert_ok(&merge_cmd(&left_all, &[&left, &p[2]], &[]));
    let right = dir.path().join("right.jsonl");
    assert_ok(&merge_cmd(&right, &[&p[1], &p[2]], &["--allow-partial"]));
    let right_all = dir.path().join("right_all.jsonl");
    assert_ok(&merge_cmd(&right_all, &[&p[0], &right], &[]));
    assert_eq!(read(&left_all), read(&whole));
    assert_eq!(read(&right_all), read(&whole));
    // A partial merge names what it holds.
    let partial = Store::open(&left).unwrap();
    let shards = partial.header.shards.unwrap();
    assert_eq!((shards.count, shards.parts), (3, vec![0, 1]));

    // --shard slurm: task 7 of an array 6-8 is shard 1 of 3.
    let slurm = dir.path().join("slurm.jsonl");
    let out = crate::util::bin()
        .args(with(
            reference_args(&fixture_arg("corpus.txt"), &slurm),
            &["--shard", "slurm"],
        ))
        .env("SLURM_ARRAY_TASK_ID", "7")
        .env("SLURM_ARRAY_TASK_MIN", "6")
        .env("SLURM_ARRAY_TASK_MAX", "8")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(read(&slurm), read(&p[1]));
    let out = crate::util::bin()
        .args(with(
            reference_args(&fixture_arg("corpus.txt"), &slurm),
            &["--shard", "slurm"],
        ))
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    assert_fails_with(&out, "SLURM_ARRAY_TASK_ID is not set");
}

#[test]
fn merge_refuses_parts_of_different_runs_duplicates_and_missing_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a0 = run_shard(d, "a0.jsonl", 0, 2, &[]);
    let a1 = run_shard(d, "a1.jsonl", 1, 2, &[]);
    let safetensors = fixture_arg("tiny/sae_res_L1.safetensors");
    let refusals: [(&str, Vec<&str>, &str); 5] = [
        ("top.jsonl", vec!["--top", "4"], "different --top (5 vs 4)"),
        (
            "tokens.jsonl",
            vec!["--max-tokens", "30"],
            "different --max-tokens (32 vs 30)",
        ),
        ("sae.jsonl", vec!["--sae", &safetensors], "different SAE"),
        (
            "batch.jsonl",
            vec!["--batch-size", "3"],
            "different --batch-size",
        ),
        ("limit.jsonl", vec!["--limit", "20"], "different --limit"),
    ];
    for (name, extra, message) in refusals {
        let other = run_shard(d, name, 1, 2, &extra);
        let out = merge_cmd(&d.join("m.jsonl"), &[&a0, &other], &[]);
        assert_fails_with(&out, message);
        assert!(!d.join("m.jsonl").exists());
    }
    // Another layer and site (the SAE differs too; the first difference is named).
    let layer = d.join("layer.jsonl");
    let mut args = reference_args(&fixture_arg("corpus.txt"), &layer);
    let sae = args.iter().position(|a| a == "--sae").unwrap();
    args[sae + 1] = fixture_arg("tiny/sae_mlp_L2.npz");
    args[sae + 3] = "2".into();
    assert_ok(&gemscope(&with(args, &["--site", "mlp", "--shard", "1/2"])));
    assert_fails_with(
        &merge_cmd(&d.join("m.jsonl"), &[&a0, &layer], &[]),
        "cannot merge",
    );
    // Another corpus: one word changed.
    let text = std::fs::read_to_string(fixture("corpus.txt")).unwrap();
    let changed = d.join("changed.txt");
    std::fs::write(&changed, text.replacen("winter", "summer", 1)).unwrap();
    let other = d.join("other-corpus.jsonl");
    let args = reference_args(&changed.display().to_string(), &other);
    assert_ok(&gemscope(&with(args, &["--shard", "1/2"])));
    assert_fails_with(
        &merge_cmd(&d.join("m.jsonl"), &[&a0, &other], &[]),
        "they read different corpora",
    );
    // Shard counts, duplicates, missing shards, complete stores.
    let b1 = run_shard(d, "b1.jsonl", 1, 3, &[]);
    assert_fails_with(
        &merge_cmd(&d.join("m.jsonl"), &[&a0, &b1], &[]),
        "different shard counts (3 vs 2)",
    );
    assert_fails_with(
        &merge_cmd(&d.join("m.jsonl"), &[&a0, &a1, &a0], &[]),
        "shard 0 of 2 is in both",
    );
    assert_fails_with(
        &merge_cmd(&d.join("m.jsonl"), &[&a1], &[]),
        "shard 0 of 2 is missing (pass --allow-partial",
    );
    let whole = d.join("whole.jsonl");
    assert_ok(&merge_cmd(&whole, &[&a0, &a1], &[]));
    assert_fails_with(
        &merge_cmd(&d.join("m.jsonl"), &[&whole, &a1], &[]),
        "already a complete store",
    );
    std::fs::write(d.join("junk.jsonl"), "{\"text\": \"a\"}\n").unwrap();
    assert_fails_with(
        &merge_cmd(&d.join("m.jsonl"), &[&a0, &d.join("junk.jsonl")], &[]),
        "not a gemscope-examples header",
    );
}

/// A corpus of `copies` times the fixture corpus (a run long enough to be killed midway).
fn long_corpus(dir: &Path, copies: usize) -> PathBuf {
    let text = std::fs::read_to_string(fixture("corpus.txt")).unwrap();
    let path = dir.join("long.txt");
    std::fs::write(&path, text.repeat(copies)).unwrap();
    path
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = long_corpus(dir.path(), 8).display().to_string();
    let fast = dir.path().join("uninterrupted.jsonl");
    let base = |out: &Path| {
        with(
            reference_args(&corpus, out),
            &["--batch-size", "1", "--checkpoint-every", "5"],
        )
    };
    assert_ok(&gemscope(&base(&fast)));
    let out = dir.path().join("killed.jsonl");
    let checkpoint = dir.path().join("killed.jsonl.checkpoint");
    let mut child = crate::util::bin()
        .args(base(&out))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !checkpoint.exists() {
        assert!(started.elapsed().as_secs() < 60, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists(), "the run finished before it could be killed");
    let partial = Store::open(&checkpoint).unwrap();
    let progress = partial.header.progress.clone().unwrap();
    assert!(progress.next_batch >= 5 && progress.next_batch < 240);
    let resumed = gemscope(&base(&out));
    assert_ok(&resumed);
    assert!(
        stderr(&resumed).contains("resuming from"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(read(&out), read(&fast));
    assert!(
        !checkpoint.exists(),
        "the checkpoint is removed once the store is written"
    );
}

#[test]
fn a_corrupt_checkpoint_is_an_error_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.jsonl");
    let args = |out: &Path| reference_args(&fixture_arg("corpus.txt"), out);
    assert_ok(&gemscope(&args(&fresh)));
    let out = dir.path().join("store.jsonl");
    let checkpoint = dir.path().join("store.jsonl.checkpoint");
    // A checkpoint cut in the middle of a line, and one that is not JSON at all.
    let good = std::fs::read_to_string(&fresh).unwrap();
    for corrupt in [&good[..good.len() / 2], "\u{0}\u{1}garbage"] {
        std::fs::write(&checkpoint, corrupt).unwrap();
        assert_fails_with(&gemscope(&args(&out)), "is corrupt");
        assert!(!out.exists());
    }
    // A finished store where a checkpoint should be is not resumed either.
    std::fs::write(&checkpoint, &good).unwrap();
    assert_fails_with(&gemscope(&args(&out)), "--restart");
    let restarted = gemscope(&with(args(&out), &["--restart"]));
    assert_ok(&restarted);
    assert_eq!(read(&out), read(&fresh));
    assert!(!checkpoint.exists());
    // A checkpoint of another command (here --top 4) is refused.
    let other = dir.path().join("other.jsonl");
    let long = long_corpus(dir.path(), 1).display().to_string();
    let killed = with(
        reference_args(&long, &other),
        &["--top", "4", "--checkpoint-every", "1", "--batch-size", "1"],
    );
    assert_ok(&gemscope(&killed));
    let partial = Store::open(&other).unwrap();
    let mut as_checkpoint = partial.clone();
    as_checkpoint.header.progress = Some(gemscope::corpus::store::Progress {
        next_batch: 1,
        records: 1,
        sha256: "x".into(),
    });
    as_checkpoint.save(&checkpoint).unwrap();
    assert_fails_with(&gemscope(&args(&out)), "made by a different command");
}

fn corpus_run(dir: &Path, name: &str, content: &[u8], extra: &[&str]) -> (Output, PathBuf) {
    let corpus = dir.join(name);
    std::fs::write(&corpus, content).unwrap();
    let out = dir.join(format!("{name}.store"));
    let args = with(reference_args(&corpus.display().to_string(), &out), extra);
    (gemscope(&args), out)
}

#[test]
fn bad_corpora_are_skipped_with_counts_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Skipped and counted: empty, blank and non-UTF-8 lines; indices keep counting them.
    let (out, store) = corpus_run(
        d,
        "mixed.txt",
        b"\nA first line.\n \t\n\xff\xfe bad\nThe last one.",
        &[],
    );
    assert_ok(&out);
    let note = stderr(&out);
    assert!(
        note.contains("skipped 3 documents (2 empty, 1 not_utf8)"),
        "{note}"
    );
    let store = Store::open(&store).unwrap();
    assert_eq!(store.header.documents, 2);
    assert_eq!(store.header.corpus.as_ref().unwrap().records, 5);
    let documents: std::collections::BTreeSet<u64> = store
        .features
        .iter()
        .flat_map(|&f| store.feature(f).unwrap().examples)
        .map(|e| e.document)
        .collect();
    assert_eq!(documents.into_iter().collect::<Vec<_>>(), vec![1, 4]);
    // Errors.
    let (out, store) = corpus_run(d, "empty.txt", b"", &[]);
    assert_fails_with(&out, "the corpus is empty");
    assert!(!store.exists());
    let (out, _) = corpus_run(d, "blank.txt", b"\n  \n", &[]);
    assert_fails_with(
        &out,
        "no record of the corpus is a usable document (2 records: 2 empty)",
    );
    let (out, _) = corpus_run(d, "bad.jsonl", b"{\"text\": \"fine\"}\n[1, 2]\n", &[]);
    assert_fails_with(&out, "bad.jsonl, line 2: not a JSON object");
    let (out, _) = corpus_run(
        d,
        "nojson.jsonl",
        b"{\"text\": \"fine\"}\nplain text\n",
        &[],
    );
    assert_fails_with(&out, "line 2: not a JSON object");
    // JSONL: a line without the field is skipped; a corpus where none has it is refused.
    let (out, store) = corpus_run(
        d,
        "field.jsonl",
        b"{\"body\": \"A body.\", \"n\": 1}\n{\"n\": 2}\n{\"body\": 7}\n",
        &["--text-field", "body"],
    );
    assert_ok(&out);
    assert!(stderr(&out).contains("2 no_text_field"), "{}", stderr(&out));
    assert_eq!(Store::open(&store).unwrap().header.documents, 1);
    let (out, _) = corpus_run(d, "nofield.jsonl", b"{\"body\": \"x\"}\n", &[]);
    assert_fails_with(&out, "(1 records: 1 no_text_field)");
    let (out, _) = corpus_run(d, "plain.txt", b"x\n", &["--text-field", "body"]);
    assert_fails_with(&out, "is read as plain text");
    let nowhere = reference_args(&fixture_arg("corpus.txt"), &d.join("no/such/dir/x.jsonl"));
    assert_fails_with(&gemscope(&nowhere), "does not exist");
    let missing = reference_args("/nonexistent/corpus.txt", &d.join("x.jsonl"));
    assert_fails_with(
        &gemscope(&missing),
        "cannot open corpus /nonexistent/corpus.txt",
    );
}

#[test]
fn standard_input_gives_the_same_store_as_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("file.jsonl");
    assert_ok(&gemscope(&reference_args(
        &fixture_arg("corpus.txt"),
        &from_file,
    )));
    let from_stdin = dir.path().join("stdin.jsonl");
    let args = reference_args("-", &from_stdin);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_with_stdin(&refs, &read(&fixture("corpus.txt")));
    assert_ok(&out);
    assert_eq!(read(&from_stdin), read(&from_file));
}

/// Writes the fixture corpus as Parquet: a `text` column (blank lines as nulls), an `id`
/// column, snappy-compressed, in row groups of 7 rows.
fn write_parquet(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message doc { optional int64 id; optional binary text (STRING); }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let text = std::fs::read_to_string(fixture("corpus.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for (group, rows) in lines.chunks(7).enumerate() {
        let mut rg = writer.next_row_group().unwrap();
        let ids: Vec<i64> = (0..rows.len()).map(|i| (group * 7 + i) as i64).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(&ids, Some(&vec![1; rows.len()]), None)
            .unwrap();
        col.close().unwrap();
        let values: Vec<ByteArray> = rows
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| ByteArray::from(*l))
            .collect();
        let defs: Vec<i16> = rows
            .iter()
            .map(|l| i16::from(!l.trim().is_empty()))
            .collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

#[test]
fn parquet_corpus_gives_the_text_corpus_examples() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("corpus.parquet");
    write_parquet(&parquet);
    let from_text = dir.path().join("text.jsonl");
    assert_ok(&gemscope(&reference_args(
        &fixture_arg("corpus.txt"),
        &from_text,
    )));
    let from_parquet = dir.path().join("parquet.jsonl");
    let out = gemscope(&reference_args(
        &parquet.display().to_string(),
        &from_parquet,
    ));
    assert_ok(&out);
    assert!(stderr(&out).contains("2 null"), "{}", stderr(&out));
    // Same documents at the same indices: every feature line is identical.
    let lines = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .map(String::from)
            .collect()
    };
    assert_eq!(lines(&from_parquet), lines(&from_text));
    let header = Store::open(&from_parquet).unwrap().header;
    assert_eq!(header.identity.corpus_format, "parquet");
    assert_eq!(header.identity.text_field.as_deref(), Some("text"));
    // A missing column names the ones there are; a non-string column is refused.
    let mut args = reference_args(&parquet.display().to_string(), &dir.path().join("x.jsonl"));
    args.extend(["--text-column", "body"].map(String::from));
    assert_fails_with(
        &gemscope(&args),
        "has no column \"body\" (its columns: id, text)",
    );
    let mut args = reference_args(&parquet.display().to_string(), &dir.path().join("x.jsonl"));
    args.extend(["--text-column", "id"].map(String::from));
    assert_fails_with(&gemscope(&args), "holds INT64, not strings");
    let mut args = reference_args(&parquet.display().to_string(), &dir.path().join("x.jsonl"));
    args.extend(["--text-field", "text"].map(String::from));
    assert_fails_with(&gemscope(&args), "takes --text-column");
}

#[test]
fn features_subset_matches_the_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jsonl");
    assert_ok(&gemscope(&reference_args(
        &fixture_arg("corpus.txt"),
        &full,
    )));
    let some = dir.path().join("some.jsonl");
    let args = with(
        reference_args(&fixture_arg("corpus.txt"), &some),
        &["--features", "200,7,31"],
    );
    assert_ok(&gemscope(&args));
    let (full, some) = (Store::open(&full).unwrap(), Store::open(&some).unwrap());
    assert_eq!(some.features, vec![7, 31, 200]);
    for f in [7, 31, 200] {
        let (a, b) = (full.feature(f).unwrap(), some.feature(f).unwrap());
        assert_eq!((a.active, a.tokens), (b.active, b.tokens));
        assert_eq!(a.histogram, b.histogram);
        let docs = |x: &gemscope::report::examples::FeatureExamples| -> Vec<(u64, u32)> {
            x.examples
                .iter()
                .map(|e| (e.document, e.position))
                .collect()
        };
        assert_eq!(docs(&a), docs(&b));
        for (x, y) in a.examples.iter().zip(&b.examples) {
            assert!(close(x.activation, y.activation as f64));
        }
    }
    let args = with(
        reference_args(&fixture_arg("corpus.txt"), &dir.path().join("x.jsonl")),
        &["--features", "256"],
    );
    assert_fails_with(&gemscope(&args), "feature 256 does not exist");
}

/// `explain --examples STORE`: each card carries the store's examples, density and histogram, as
/// the contract names them, the human view shades the example tokens, and a store of another
/// layer or a partial one is refused.
#[test]
fn explain_shows_a_stores_examples_and_refuses_a_store_of_another_sae() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.jsonl");
    assert_ok(&gemscope(&reference_args(
        &fixture_arg("corpus.txt"),
        &store,
    )));
    let stored = Store::open(&store).unwrap();
    let explain = |extra: &[&str]| {
        let (model, sae, store) = (
            fixture_arg("tiny"),
            fixture_arg("tiny/sae_res_L1.npz"),
            store.display().to_string(),
        );
        let mut args = vec![
            "explain",
            "--model",
            &model,
            "--sae",
            &sae,
            "--layer",
            "1",
            "--examples",
            &store,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // The feature with the most active tokens, and one that never fired if there is one.
    let busiest = (0..256u32)
        .max_by_key(|&f| (stored.feature(f).unwrap().active, std::cmp::Reverse(f)))
        .unwrap();
    let out = explain(&["--json", &busiest.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let card = &doc["features"][0];
    let want = stored.feature(busiest).unwrap();
    assert_eq!(card["tokens"], want.tokens);
    assert_eq!(card["active"], want.active);
    assert_eq!(card["density"].as_f64().unwrap(), want.density);
    assert_eq!(
        card["max_activation"].as_f64().unwrap() as f32,
        want.max_activation
    );
    let examples = card["examples"].as_array().unwrap();
    assert_eq!(examples.len(), want.examples.len());
    assert!(!examples.is_empty());
    for (got, want) in examples.iter().zip(&want.examples) {
        assert_eq!(got["document"], want.document);
        assert_eq!(got["position"], want.position);
        assert_eq!(got["activation"].as_f64().unwrap() as f32, want.activation);
        let tokens = got["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), want.tokens.len());
        for (g, w) in tokens.iter().zip(&want.tokens) {
            assert_eq!(g["id"], w.id);
            assert_eq!(g["activation"].as_f64().unwrap() as f32, w.activation);
            assert!(g["text"].is_string(), "tokens are spelled");
        }
    }
    assert_eq!(
        card["histogram"]["counts"].as_array().unwrap().len(),
        want.histogram.counts.len()
    );

    // The human view: one line per example, active tokens marked with their activation.
    let out = explain(&["--color", "never", &busiest.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("active on {} of {}", want.active, want.tokens)),
        "{text}"
    );
    let first = &want.examples[0];
    assert!(
        text.contains(&format!("doc {} pos {}", first.document, first.position)),
        "{text}"
    );
    assert!(
        text.contains(&format!(":{:.2}]", first.activation)),
        "{text}"
    );

    // Another layer's SAE against this store: refused before anything is computed.
    let (model, sae3, store_arg) = (
        fixture_arg("tiny"),
        fixture_arg("tiny/sae_res_L3.npz"),
        store.display().to_string(),
    );
    let out = run(&[
        "explain",
        "--model",
        &model,
        "--sae",
        &sae3,
        "--layer",
        "3",
        "--examples",
        &store_arg,
        "1",
    ]);
    assert_fails_with(&out, "holds layer 1 res");
}
