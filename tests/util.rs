//! Shared test helpers: fixture paths, the recorded transformers reference, tolerances, running the binary.

use gemscope::npy::NpzArchive;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fixture path as a command-line argument.
pub fn fixture_arg(name: &str) -> String {
    fixture(name).display().to_string()
}

/// The outputs transformers recorded for one fixture model (`generate.py`).
pub struct Reference {
    pub dir: PathBuf,
    pub json: Value,
    pub arrays: NpzArchive,
}

impl Reference {
    pub fn load(model: &str) -> Self {
        let dir = fixture(model);
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let arrays = NpzArchive::open(&dir.join("reference.npz")).unwrap();
        Self { dir, json, arrays }
    }

    pub fn prompts(&self) -> Vec<(String, Vec<u32>)> {
        self.json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let ids = p["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                (p["text"].as_str().unwrap().to_string(), ids)
            })
            .collect()
    }

    pub fn array(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let a = self
            .arrays
            .read_f32(name)
            .unwrap_or_else(|e| panic!("{e:#}"));
        (a.shape, a.data)
    }

    /// SAE name (`res_L1`) -> its reference entry.
    pub fn saes(&self) -> Vec<(String, Value)> {
        self.json["saes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Max absolute difference relative to the reference's largest magnitude: robust for tensors
/// whose elements span orders of magnitude, and tight enough at 1e-4 to catch any wrong op.
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    let scale = expected
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    diff / scale
}

#[track_caller]
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], tolerance: f32) {
    let err = relative_error(actual, expected);
    // `GEMSCOPE_PARITY_REPORT=1 cargo test -- --nocapture` lists every comparison's error.
    if std::env::var_os("GEMSCOPE_PARITY_REPORT").is_some() {
        eprintln!("parity {err:.3e} {what}");
    }
    assert!(
        err <= tolerance,
        "{what}: relative error {err:.3e} exceeds {tolerance:.0e}"
    );
}

#[track_caller]
pub fn assert_close_f64(what: &str, actual: f64, expected: f64, tolerance: f64) {
    let err = (actual - expected).abs() / expected.abs().max(1e-12);
    assert!(
        err <= tolerance,
        "{what}: {actual} vs {expected} (relative error {err:.3e})"
    );
}

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemscope"));
    cmd.env_remove("NO_COLOR").env("RUST_BACKTRACE", "1");
    // Never Neuronpedia itself: labels come from a closed local port (a note) unless a test
    // points these at its fake server.
    cmd.env("NEURONPEDIA_DATASETS_URL", "http://127.0.0.1:9")
        .env("NEURONPEDIA_URL", "http://127.0.0.1:9")
        .env(
            "GEMSCOPE_CACHE",
            std::env::temp_dir().join("gemscope-tests-label-cache"),
        )
        .env_remove("NEURONPEDIA_API_KEY");
    cmd
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

pub fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Asserts a successful run and parses its stdout as one JSON document.
#[track_caller]
pub fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        stderr(out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

/// Asserts the failure contract: exit 2, one `gemscope: ...` line on stderr containing `needle`,
/// nothing on stdout, no panic or backtrace.
#[track_caller]
pub fn assert_fails_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout must stay empty, got: {}",
        stdout(out)
    );
    assert!(err.starts_with("gemscope: "), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{err}"
    );
}

/// Maps a fixture checkpoint's weight files for `parts` and builds the model, as a job does.
pub fn load_model(
    files: &gemscope::hub::ModelFiles,
    parts: gemscope::model::Parts,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> anyhow::Result<gemscope::model::Gemma2> {
    let paths = files.weight_files(parts)?;
    gemscope::model::load(&files.config, &paths, parts, dtype, device)
}
