//! A fake Neuronpedia on 127.0.0.1 for the label tests: the export bucket (S3 `ListObjectsV2`
//! listing and objects with `Range` support) and the API (`/api/feature/...`,
//! `POST /api/explanation/search`), with faults to order: a listed object that answers 404,
//! 429 with `Retry-After`, a connection cut halfway through a body, a server that never answers.

use crate::local_server::LocalServer;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub api_key: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct State {
    /// Bucket key -> bytes.
    objects: BTreeMap<String, Arc<Vec<u8>>>,
    /// Keys listed (with this size) that answer 404.
    listed_missing: BTreeMap<String, u64>,
    /// `model/sae/index` -> the feature API's JSON.
    features: BTreeMap<String, String>,
    /// The search's answer (`results` array), filtered by the request's layers.
    search_results: Vec<serde_json::Value>,
    seen: Vec<Seen>,
    /// The next this-many requests whose target contains the pattern get 429 (Retry-After 1).
    rate_limit: Vec<(String, usize)>,
    /// The next full download of a key sends half its body and closes.
    cut_next: Vec<String>,
    /// Never answer: hold the connection open until the server stops.
    hang: bool,
}

/// The running server; dropping it stops it.
pub struct FakeNeuronpedia {
    server: LocalServer,
    state: Arc<Mutex<State>>,
}

/// Gzips `text`.
pub fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

/// One export line as Neuronpedia writes it (with a short stand-in for the 256-d embedding).
pub fn export_line(model: &str, sae: &str, index: u32, description: &str) -> String {
    serde_json::json!({
        "modelId": model,
        "layer": sae,
        "index": index.to_string(),
        "description": description,
        "typeName": "oai_token-act-pair",
        "explanationModelName": "gpt-4o-mini",
        "embedding": [0.01, -0.02, 0.03],
    })
    .to_string()
}

/// The bucket key of batch `n` of an SAE's explanations.
pub fn batch_key(model: &str, sae: &str, n: u32) -> String {
    format!("v1/{model}/{sae}/explanations/batch-{n}.jsonl.gz")
}

impl FakeNeuronpedia {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let served = state.clone();
        let server = LocalServer::start(move |stream, stop| {
            let _ = serve(stream, &served, stop);
        });
        Self { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Serves `bytes` as `key` (no longer a listed-but-missing key).
    pub fn object(&self, key: &str, bytes: Vec<u8>) -> &Self {
        let mut state = self.state.lock().unwrap();
        state.listed_missing.remove(key);
        state.objects.insert(key.to_string(), Arc::new(bytes));
        drop(state);
        self
    }

    pub fn listed_but_missing(&self, key: &str, size: u64) -> &Self {
        self.state
            .lock()
            .unwrap()
            .listed_missing
            .insert(key.to_string(), size);
        self
    }

    pub fn feature(&self, model: &str, sae: &str, index: u32, json: serde_json::Value) -> &Self {
        self.state
            .lock()
            .unwrap()
            .features
            .insert(format!("{model}/{sae}/{index}"), json.to_string());
        self
    }

    pub fn search_results(&self, results: Vec<serde_json::Value>) -> &Self {
        self.state.lock().unwrap().search_results = results;
        self
    }

    /// The next `times` requests whose target contains `pattern` answer 429, Retry-After 1.
    pub fn rate_limit(&self, pattern: &str, times: usize) -> &Self {
        self.state
            .lock()
            .unwrap()
            .rate_limit
            .push((pattern.to_string(), times));
        self
    }

    pub fn cut_next(&self, key: &str) -> &Self {
        self.state.lock().unwrap().cut_next.push(key.to_string());
        self
    }

    pub fn hang(&self) -> &Self {
        self.state.lock().unwrap().hang = true;
        self
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close after this many body bytes (the declared length stays the full one).
    cut_at: Option<usize>,
}

impl Response {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_at: None,
        }
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let target = words.next().unwrap_or("").to_string();
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
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let seen = Seen {
        method,
        target,
        range: headers.get("range").cloned(),
        api_key: headers.get("x-api-key").cloned(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let response = {
        let mut state = state.lock().unwrap();
        state.seen.push(seen.clone());
        if state.hang {
            None
        } else {
            Some(route(&mut state, &seen))
        }
    };
    let Some(response) = response else {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(());
    };
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let send = response
        .cut_at
        .map_or(response.body.len(), |n| n.min(response.body.len()));
    stream.write_all(&response.body[..send])?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 256];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn route(state: &mut State, req: &Seen) -> Response {
    if let Some(i) = state
        .rate_limit
        .iter()
        .position(|(pattern, times)| *times > 0 && req.target.contains(pattern.as_str()))
    {
        state.rate_limit[i].1 -= 1;
        let mut r = Response::new(429, "Too Many Requests");
        r.headers.push(("Retry-After".into(), "1".into()));
        return r;
    }
    let path = req.target.split('?').next().unwrap_or("");
    if path == "/" && query_param(&req.target, "list-type").as_deref() == Some("2") {
        let prefix = query_param(&req.target, "prefix").unwrap_or_default();
        let mut listed: Vec<(String, u64)> = state
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .chain(state.listed_missing.iter().map(|(k, &s)| (k.clone(), s)))
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        listed.sort();
        let contents: String = listed
            .iter()
            .map(|(k, s)| {
                format!(
                    "<Contents><Key>{k}</Key><LastModified>2025-01-01T00:00:00.000Z</LastModified>\
                     <ETag>\"x\"</ETag><Size>{s}</Size><StorageClass>STANDARD</StorageClass></Contents>"
                )
            })
            .collect();
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>neuronpedia-datasets</Name>\
             <Prefix>{prefix}</Prefix><KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys>\
             <IsTruncated>false</IsTruncated>{contents}</ListBucketResult>",
            listed.len()
        );
        let mut r = Response::new(200, xml);
        r.headers
            .push(("Content-Type".into(), "application/xml".into()));
        return r;
    }
    if let Some(rest) = path.strip_prefix("/api/feature/") {
        return match state.features.get(rest) {
            Some(json) => Response::new(200, json.clone()),
            None => Response::new(404, "{\"message\":\"Feature not found\"}"),
        };
    }
    if path == "/api/explanation/search" && req.method == "POST" {
        let request: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
        let layers: Vec<String> = request["layers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let results: Vec<serde_json::Value> = state
            .search_results
            .iter()
            .filter(|r| layers.iter().any(|l| r["layer"] == l.as_str()))
            .cloned()
            .collect();
        let body = serde_json::json!({ "request": request, "results": results,
                                       "resultsCount": results.len(), "hasMore": false });
        return Response::new(200, body.to_string());
    }
    let key = path.trim_start_matches('/');
    if state.listed_missing.contains_key(key) {
        return Response::new(404, "<Error><Code>NoSuchKey</Code></Error>");
    }
    let Some(bytes) = state.objects.get(key).cloned() else {
        return Response::new(404, "<Error><Code>NoSuchKey</Code></Error>");
    };
    let total = bytes.len();
    let mut r = Response::new(200, bytes.to_vec());
    r.headers.push(("Accept-Ranges".into(), "bytes".into()));
    if let Some(start) = req
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
    {
        if start >= total {
            return Response::new(416, Vec::new());
        }
        r.status = 206;
        r.body = bytes[start..].to_vec();
        r.headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{}/{total}", total - 1),
        ));
    } else if let Some(i) = state.cut_next.iter().position(|k| k == key) {
        state.cut_next.remove(i);
        r.cut_at = Some(total / 2);
    }
    r
}
