//! A fake Hugging Face Hub on 127.0.0.1 for the hub tests: the fixtures served under the hub's
//! routes, with the headers huggingface_hub and hf-hub rely on.
//!
//! - `GET|HEAD /{repo}/resolve/{revision}/{path}`: `ETag`, `X-Repo-Commit`, `Content-Length`,
//!   `Accept-Ranges`; `Range: bytes=a-b` / `bytes=a-` answered with 206 and `Content-Range`.
//! - `GET /api/models/{repo}/revision/{revision}`: `{"sha", "siblings": [{"rfilename"}]}`.
//! - Errors as the hub sends them: `X-Error-Code` RepoNotFound (401), GatedRepo (401/403),
//!   RevisionNotFound and EntryNotFound (404).
//!
//! Every request is recorded, so tests can count what was downloaded.

use crate::local_server::LocalServer;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A 40-hex commit hash derived from a name, so each fake repo has a stable commit.
pub fn commit_of(name: &str) -> String {
    let a = fnv(name.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let b = fnv(name.as_bytes(), 0x8422_2325_cbf2_9ce4);
    let c = fnv(name.as_bytes(), 0x1234_5678_9abc_def0);
    format!("{a:016x}{b:016x}{c:016x}")[..40].to_string()
}

/// The ETag the server gives a file's bytes (and so the blob name in the cache).
pub fn etag_of(bytes: &[u8]) -> String {
    format!(
        "{:016x}{:016x}",
        fnv(bytes, 0xcbf2_9ce4_8422_2325),
        fnv(bytes, 0x0123_4567_89ab_cdef)
    )
}

fn fnv(bytes: &[u8], seed: u64) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// One repo of the fake hub.
#[derive(Clone)]
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: BTreeMap<String, Arc<Vec<u8>>>,
    /// Answer only requests carrying `Authorization: Bearer <this>`.
    pub token: Option<String>,
}

impl FakeRepo {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            commit: commit_of(id),
            files: BTreeMap::new(),
            token: None,
        }
    }

    /// Serves the fixture file `fixture_path` (under tests/fixtures) as `path`.
    pub fn file(mut self, path: &str, fixture_path: &str) -> Self {
        let bytes =
            std::fs::read(fixture(fixture_path)).unwrap_or_else(|e| panic!("{fixture_path}: {e}"));
        self.files.insert(path.to_string(), Arc::new(bytes));
        self
    }

    pub fn bytes(mut self, path: &str, bytes: &[u8]) -> Self {
        self.files
            .insert(path.to_string(), Arc::new(bytes.to_vec()));
        self
    }

    pub fn gated(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }
}

/// `google/gemma-2-2b`: the tiny model.
pub fn gemma_2_2b() -> FakeRepo {
    FakeRepo::new("google/gemma-2-2b")
        .file("config.json", "tiny/config.json")
        .file("tokenizer.json", "tiny/tokenizer.json")
        .file("model.safetensors", "tiny/model.safetensors")
}

/// `gemscope-tests/tiny-sharded`: the four-shard model.
pub fn tiny_sharded() -> FakeRepo {
    let mut repo = FakeRepo::new("gemscope-tests/tiny-sharded")
        .file("config.json", "tiny-sharded/config.json")
        .file("tokenizer.json", "tiny-sharded/tokenizer.json")
        .file(
            "model.safetensors.index.json",
            "tiny-sharded/model.safetensors.index.json",
        );
    for k in 1..=4 {
        let name = format!("model-0000{k}-of-00004.safetensors");
        repo = repo.file(&name, &format!("tiny-sharded/{name}"));
    }
    repo
}

/// `google/gemma-scope-2b-pt-res`: layer 1 at average L0 23, 95 and 120 and layer 3 at 80, all
/// width 16k, plus a README.
pub fn gemma_scope_2b_pt_res() -> FakeRepo {
    let mut repo =
        FakeRepo::new("google/gemma-scope-2b-pt-res").bytes("README.md", b"# fake Gemma Scope\n");
    for l0 in [23, 95, 120] {
        repo = repo.file(
            &format!("layer_1/width_16k/average_l0_{l0}/params.npz"),
            "tiny/sae_res_L1.npz",
        );
    }
    repo.file(
        "layer_3/width_16k/average_l0_80/params.npz",
        "tiny/sae_res_L3.npz",
    )
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

impl Seen {
    /// A GET of file contents (not hf-hub's `bytes=0-0` metadata probe).
    pub fn is_download(&self) -> bool {
        self.method == "GET"
            && self.path.contains("/resolve/")
            && self.range.as_deref() != Some("bytes=0-0")
    }
}

struct State {
    repos: BTreeMap<String, FakeRepo>,
    seen: Vec<Seen>,
    /// Paths (in repo) whose next full download is cut off halfway.
    truncate: Vec<String>,
    /// Answer content ranges with the whole file (200), as CDNs do when they compress.
    ignore_ranges: bool,
}

/// The running server; dropping it stops it (the port then refuses connections).
pub struct FakeHub {
    server: LocalServer,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    pub fn start(repos: Vec<FakeRepo>) -> Self {
        let state = Arc::new(Mutex::new(State {
            repos: repos.into_iter().map(|r| (r.id.clone(), r)).collect(),
            seen: Vec::new(),
            truncate: Vec::new(),
            ignore_ranges: false,
        }));
        let served = state.clone();
        let server = LocalServer::start(move |stream, _| {
            let _ = serve(stream, &served);
        });
        Self { server, state }
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Downloads (GETs of contents) of files whose path ends with `suffix`.
    pub fn downloads_of(&self, suffix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.is_download() && s.path.ends_with(suffix))
            .count()
    }

    /// From now on, answer `Range` requests for contents with the whole file and status 200
    /// (the `bytes=0-0` metadata probe still gets its 206).
    pub fn ignore_ranges(&self) {
        self.state.lock().unwrap().ignore_ranges = true;
    }

    /// The next full download of `path` sends half the bytes and closes the connection.
    pub fn truncate_next(&self, path: &str) {
        self.state.lock().unwrap().truncate.push(path.to_string());
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    /// Serve only `body[range]`.
    range: std::ops::Range<usize>,
    /// Close after this many body bytes.
    cut_at: Option<usize>,
}

impl Response {
    fn new(status: u16, body: Vec<u8>) -> Self {
        let len = body.len();
        Self {
            status,
            headers: Vec::new(),
            body: Arc::new(body),
            range: 0..len,
            cut_at: None,
        }
    }

    fn error(status: u16, code: &str, extra: &[(&str, &str)]) -> Self {
        let mut r = Self::new(status, format!("{{\"error\": \"{code}\"}}").into_bytes());
        r.headers.push(("X-Error-Code".into(), code.into()));
        for (k, v) in extra {
            r.headers.push((k.to_string(), v.to_string()));
        }
        r
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut words = line.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or("").to_string(),
        words.next().unwrap_or("").to_string(),
    );
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let seen = Seen {
        method: method.clone(),
        path: target.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    let response = {
        let mut state = state.lock().unwrap();
        state.seen.push(seen.clone());
        route(&mut state, &seen)
    };
    let len = response.range.len();
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {len}\r\nConnection: close\r\n",
        response.status
    );
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let body = &response.body[response.range.clone()];
        let send = response.cut_at.map_or(body.len(), |n| n.min(body.len()));
        stream.write_all(&body[..send])?;
    }
    stream.flush()?;
    // Drain what the client may still send, so closing does not reset the connection early.
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 256];
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

fn route(state: &mut State, req: &Seen) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    // /api/models/{org}/{name}/revision/{revision}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_id, revision)) = rest.split_once("/revision/") else {
            return Response::error(404, "EntryNotFound", &[]);
        };
        let repo = match check_repo(state, repo_id, &decode(revision), req) {
            Ok(repo) => repo,
            Err(r) => return r,
        };
        let siblings: Vec<serde_json::Value> = repo
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": repo.id, "sha": repo.commit, "siblings": siblings });
        let mut r = Response::new(200, body.to_string().into_bytes());
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        return r;
    }
    // /{org}/{name}/resolve/{revision}/{path}
    let Some((repo_id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return Response::error(404, "EntryNotFound", &[]);
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return Response::error(404, "EntryNotFound", &[]);
    };
    let repo = match check_repo(state, repo_id, &decode(revision), req) {
        Ok(repo) => repo.clone(),
        Err(r) => return r,
    };
    let file = decode(file);
    let Some(bytes) = repo.files.get(&file).cloned() else {
        return Response::error(404, "EntryNotFound", &[("X-Repo-Commit", &repo.commit)]);
    };
    let total = bytes.len();
    let mut r = Response::new(200, Vec::new());
    r.body = bytes.clone();
    r.range = 0..total;
    r.headers
        .push(("ETag".into(), format!("\"{}\"", etag_of(&bytes))));
    r.headers
        .push(("X-Repo-Commit".into(), repo.commit.clone()));
    r.headers.push(("Accept-Ranges".into(), "bytes".into()));
    let range = req
        .range
        .as_deref()
        .filter(|r| !state.ignore_ranges || *r == "bytes=0-0");
    if let Some(range) = range.and_then(|r| r.strip_prefix("bytes=")) {
        let (a, b) = range.split_once('-').unwrap_or((range, ""));
        let start: usize = a.parse().unwrap_or(0);
        let end: usize = if b.is_empty() {
            total.saturating_sub(1)
        } else {
            b.parse::<usize>().unwrap_or(total - 1).min(total - 1)
        };
        if start >= total {
            let mut r = Response::new(416, Vec::new());
            r.headers
                .push(("Content-Range".into(), format!("bytes */{total}")));
            return r;
        }
        r.status = 206;
        r.range = start..end + 1;
        r.headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{end}/{total}"),
        ));
    }
    if req.method == "GET" && r.range.len() > 1 {
        if let Some(i) = state.truncate.iter().position(|t| *t == file) {
            state.truncate.remove(i);
            r.cut_at = Some(r.range.len() / 2);
        }
    }
    r
}

fn check_repo<'a>(
    state: &'a State,
    repo_id: &str,
    revision: &str,
    req: &Seen,
) -> Result<&'a FakeRepo, Response> {
    let Some(repo) = state.repos.get(repo_id) else {
        return Err(Response::error(401, "RepoNotFound", &[]));
    };
    if let Some(token) = &repo.token {
        match req.authorization.as_deref() {
            None => return Err(Response::error(401, "GatedRepo", &[])),
            Some(auth) if auth != format!("Bearer {token}") => {
                return Err(Response::error(403, "GatedRepo", &[]))
            }
            Some(_) => {}
        }
    }
    if revision != "main" && revision != repo.commit {
        return Err(Response::error(404, "RevisionNotFound", &[]));
    }
    Ok(repo)
}
