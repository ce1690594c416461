//! Talking to Neuronpedia: the S3 bucket of its exports (listing, resumable batch downloads),
//! the per-feature API and the explanation search, over the HTTP client the hub code uses (ureq).
//!
//! Formats: the feature API is Neuronpedia's
//! `apps/webapp/app/api/feature/[modelId]/[layer]/[index]/route.ts` (`explanations[].description`,
//! `maxActApprox`, `frac_nonzero`, `pos_str`/`pos_values`, `neg_str`/`neg_values`); the search is
//! `POST /api/explanation/search` with `{modelId, layers, query, offset}` answering
//! `results[].{layer,index,description,cosine_similarity}`.

use super::export::{parse_listing, ListedObject};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

/// Where Neuronpedia's exports live (`NEURONPEDIA_DATASETS_URL`).
pub const DEFAULT_DATASETS_URL: &str = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com";
/// Neuronpedia itself (`NEURONPEDIA_URL`).
pub const DEFAULT_API_URL: &str = "https://www.neuronpedia.org";
/// Seconds a request may wait for the server before it is given up (`GEMSCOPE_NETWORK_TIMEOUT`).
const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Answers of 429 (rate limited) are retried this many times, each after its `Retry-After`.
const RATE_LIMIT_RETRIES: usize = 2;
/// The longest `Retry-After` honoured; a longer one fails at once with the wait in the message.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// How to reach Neuronpedia, from the environment.
#[derive(Clone)]
pub struct NeuronpediaOptions {
    pub datasets_url: String,
    pub api_url: String,
    /// Sent as `x-api-key` to the API (never to the bucket); never printed.
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Use only the cache (`--offline` or `HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Say on stderr when a rate limit is waited out (off with `--quiet`).
    pub notes: bool,
}

impl std::fmt::Debug for NeuronpediaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeuronpediaOptions")
            .field("datasets_url", &self.datasets_url)
            .field("api_url", &self.api_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("offline", &self.offline)
            .finish()
    }
}

fn base_url(name: &str, value: Option<String>, default: &str) -> Result<String> {
    let url = value.unwrap_or_else(|| default.to_string());
    let url = url.trim().trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("{name} must be an http:// or https:// URL, got {url:?}");
    }
    Ok(url)
}

impl NeuronpediaOptions {
    /// `NEURONPEDIA_DATASETS_URL`, `NEURONPEDIA_URL`, `NEURONPEDIA_API_KEY` and
    /// `GEMSCOPE_NETWORK_TIMEOUT` (seconds) from `var`.
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>, offline: bool) -> Result<Self> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let timeout = match get("GEMSCOPE_NETWORK_TIMEOUT") {
            Some(t) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .with_context(|| {
                    format!(
                        "GEMSCOPE_NETWORK_TIMEOUT must be a positive number of seconds, got {t:?}"
                    )
                })?,
            None => Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        };
        Ok(Self {
            datasets_url: base_url(
                "NEURONPEDIA_DATASETS_URL",
                get("NEURONPEDIA_DATASETS_URL"),
                DEFAULT_DATASETS_URL,
            )?,
            api_url: base_url("NEURONPEDIA_URL", get("NEURONPEDIA_URL"), DEFAULT_API_URL)?,
            api_key: get("NEURONPEDIA_API_KEY").map(|k| k.trim().to_string()),
            timeout,
            offline,
            progress: false,
            notes: true,
        })
    }

    /// [`NeuronpediaOptions::from_vars`] over the process environment; a progress bar when
    /// stderr is a terminal.
    pub fn from_env(offline: bool) -> Result<Self> {
        let mut opts = Self::from_vars(&|name| std::env::var(name).ok(), offline)?;
        opts.progress = std::io::stderr().is_terminal();
        Ok(opts)
    }
}

/// What the per-feature API says about a feature, trimmed to what gemscope shows (the
/// activation records are dropped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureInfo {
    pub labels: Vec<String>,
    /// `frac_nonzero`: the fraction of tokens the feature fires on.
    pub density: Option<f64>,
    /// `maxActApprox`.
    pub max_activation: Option<f64>,
    /// `pos_str` / `pos_values`: Neuronpedia's promoted tokens.
    pub positive: Vec<(String, f64)>,
    /// `neg_str` / `neg_values`.
    pub negative: Vec<(String, f64)>,
}

#[derive(Deserialize)]
struct FeatureAnswer {
    #[serde(default)]
    explanations: Vec<ExplanationAnswer>,
    #[serde(rename = "maxActApprox", default)]
    max_act_approx: Option<f64>,
    #[serde(default)]
    frac_nonzero: Option<f64>,
    #[serde(default)]
    pos_str: Vec<String>,
    #[serde(default)]
    pos_values: Vec<f64>,
    #[serde(default)]
    neg_str: Vec<String>,
    #[serde(default)]
    neg_values: Vec<f64>,
}

#[derive(Deserialize)]
struct ExplanationAnswer {
    #[serde(default)]
    description: Option<String>,
}

/// One hit of Neuronpedia's explanation search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub sae_id: String,
    pub feature: u32,
    pub description: String,
    pub cosine_similarity: f64,
}

#[derive(Deserialize)]
struct SearchAnswer {
    #[serde(default)]
    results: Vec<SearchResultAnswer>,
}

#[derive(Deserialize)]
struct SearchResultAnswer {
    layer: String,
    index: serde_json::Value,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    cosine_similarity: Option<f64>,
}

/// A Neuronpedia client. Creating it touches nothing.
pub struct NeuronpediaClient {
    opts: NeuronpediaOptions,
    agent: ureq::Agent,
}

/// Why a download stopped.
#[derive(Debug)]
pub enum DownloadError {
    /// The server says the object does not exist (404).
    NotFound(String),
    Other(anyhow::Error),
}

impl NeuronpediaClient {
    pub fn new(opts: NeuronpediaOptions) -> Self {
        // The same agent settings as the hub client, with the read timeout configurable.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10).min(opts.timeout))
            .timeout_read(opts.timeout)
            .user_agent(concat!("gemscope/", env!("CARGO_PKG_VERSION")))
            .try_proxy_from_env(true)
            .build();
        Self { opts, agent }
    }

    pub fn options(&self) -> &NeuronpediaOptions {
        &self.opts
    }

    /// One request, retried after `Retry-After` on 429 a bounded number of times. `what` names
    /// the request in errors.
    fn call(
        &self,
        what: &str,
        build: &dyn Fn() -> ureq::Request,
        body: Option<&serde_json::Value>,
    ) -> Result<ureq::Response, Box<ureq::Error>> {
        let mut attempt = 0;
        loop {
            let request = build();
            let result = match body {
                Some(json) => request.send_json(json.clone()),
                None => request.call(),
            };
            match result {
                Err(ureq::Error::Status(429, response)) if attempt < RATE_LIMIT_RETRIES => {
                    let wait = response
                        .header("Retry-After")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(1);
                    if wait > MAX_RETRY_AFTER_SECS {
                        return Err(Box::new(ureq::Error::Status(429, response)));
                    }
                    if self.opts.notes {
                        eprintln!(
                            "gemscope: note: Neuronpedia is rate limiting {what} (HTTP 429): \
                             retrying in {wait} s"
                        );
                    }
                    std::thread::sleep(Duration::from_secs(wait));
                    attempt += 1;
                }
                other => return other.map_err(Box::new),
            }
        }
    }

    /// A one-line error for a failed request.
    fn error(&self, what: &str, url_base: &str, err: Box<ureq::Error>) -> anyhow::Error {
        match *err {
            ureq::Error::Status(429, response) => anyhow::anyhow!(
                "Neuronpedia kept refusing {what} as rate limited (HTTP 429, Retry-After {}) \
                 after {RATE_LIMIT_RETRIES} retries: try again later{}",
                response.header("Retry-After").unwrap_or("not given"),
                if self.opts.api_key.is_some() {
                    ""
                } else {
                    ", or set NEURONPEDIA_API_KEY"
                }
            ),
            ureq::Error::Status(code, _) => {
                anyhow::anyhow!("{url_base} answered HTTP {code} for {what}")
            }
            ureq::Error::Transport(transport) => {
                if is_timeout(&transport) {
                    anyhow::anyhow!(
                        "{url_base} did not answer {what} within {} s (set \
                         GEMSCOPE_NETWORK_TIMEOUT to wait longer)",
                        self.opts.timeout.as_secs_f64()
                    )
                } else {
                    anyhow::anyhow!(
                        "cannot reach {url_base} for {what}: {transport} (without network, use \
                         --offline to read only the cache)"
                    )
                }
            }
        }
    }

    /// Every object under `prefix` in the export bucket, following continuation tokens.
    pub fn list(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        let base = &self.opts.datasets_url;
        let what = format!("the listing of {prefix}");
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..1000 {
            let url = format!("{base}/");
            let build = || {
                let mut request = self
                    .agent
                    .get(&url)
                    .query("list-type", "2")
                    .query("prefix", prefix);
                if let Some(token) = &token {
                    request = request.query("continuation-token", token);
                }
                request
            };
            let response = self
                .call(&what, &build, None)
                .map_err(|e| self.error(&what, base, e))?;
            let text = response
                .into_string()
                .map_err(|e| self.read_error(&what, base, e))?;
            let page = parse_listing(&text).with_context(|| format!("{base} answered {what}"))?;
            objects.extend(page.objects);
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(objects),
            }
        }
        bail!("{base} answered {what} with more than 1000 pages")
    }

    fn read_error(&self, what: &str, base: &str, err: std::io::Error) -> anyhow::Error {
        if matches!(
            err.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) {
            anyhow::anyhow!(
                "{base} stopped sending {what} for {} s (set GEMSCOPE_NETWORK_TIMEOUT to wait \
                 longer)",
                self.opts.timeout.as_secs_f64()
            )
        } else {
            anyhow::anyhow!("the answer of {base} to {what} was cut off: {err}")
        }
    }

    /// Downloads object `key` of `size` bytes into `part`, resuming what an earlier attempt left
    /// there with a `Range` request (starting over when the server ignores it). On success `part`
    /// holds exactly `size` bytes; on failure it keeps what arrived, for the next attempt.
    pub fn download(
        &self,
        key: &str,
        size: u64,
        part: &Path,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), DownloadError> {
        let base = &self.opts.datasets_url;
        let name = key.rsplit('/').next().unwrap_or(key);
        let other = |e: anyhow::Error| DownloadError::Other(e);
        if let Some(dir) = part.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))
                .map_err(other)?;
        }
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have > size {
            have = 0;
        }
        let url = format!("{base}/{key}");
        let what = format!("the download of {name}");
        let build = || {
            let request = self.agent.get(&url);
            if have > 0 {
                request.set("Range", &format!("bytes={have}-"))
            } else {
                request
            }
        };
        let response = match self.call(&what, &build, None) {
            Ok(response) => response,
            Err(e) if matches!(*e, ureq::Error::Status(404, _)) => {
                return Err(DownloadError::NotFound(format!(
                    "{name} is listed but {base} answers 404 for it"
                )))
            }
            // The part is already complete, or larger than the object: start over.
            Err(e) if matches!(*e, ureq::Error::Status(416, _)) => {
                let _ = std::fs::remove_file(part);
                return Err(other(anyhow::anyhow!(
                    "{base} refused to resume {name} (HTTP 416): run the command again to \
                     download it afresh"
                )));
            }
            Err(e) => return Err(other(self.error(&what, base, e))),
        };
        let resumed = response.status() == 206 && have > 0;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(part)
            .with_context(|| format!("cannot write {}", part.display()))
            .map_err(other)?;
        if resumed {
            file.seek(std::io::SeekFrom::End(0))
                .with_context(|| format!("cannot write {}", part.display()))
                .map_err(other)?;
            bar.inc(have);
        }
        let mut reader = response.into_reader();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut written = if resumed { have } else { 0 };
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = file.sync_all();
                    return Err(other(self.read_error(&what, base, e).context(format!(
                        "{name}: {written} of {size} bytes kept; run the command again to resume"
                    ))));
                }
            };
            file.write_all(&buffer[..n])
                .with_context(|| format!("cannot write {}", part.display()))
                .map_err(other)?;
            written += n as u64;
            bar.inc(n as u64);
        }
        file.sync_all()
            .with_context(|| format!("cannot write {}", part.display()))
            .map_err(other)?;
        if written != size {
            if written > size {
                let _ = std::fs::remove_file(part);
            }
            return Err(other(anyhow::anyhow!(
                "the download of {name} stopped at {written} of the {size} bytes the listing \
                 announced; run the command again to resume it"
            )));
        }
        Ok(())
    }

    fn api_get(&self, path: &str, what: &str) -> Result<String> {
        let base = &self.opts.api_url;
        let url = format!("{base}{path}");
        let build = || {
            let request = self.agent.get(&url);
            match &self.opts.api_key {
                Some(key) => request.set("x-api-key", key),
                None => request,
            }
        };
        let response = self
            .call(what, &build, None)
            .map_err(|e| self.error(what, base, e))?;
        response
            .into_string()
            .map_err(|e| self.read_error(what, base, e))
    }

    /// `GET /api/feature/{modelId}/{saeId}/{index}`.
    pub fn feature(&self, model_id: &str, sae_id: &str, index: u32) -> Result<FeatureInfo> {
        let what = format!("feature {model_id}/{sae_id}/{index}");
        let text = self.api_get(&format!("/api/feature/{model_id}/{sae_id}/{index}"), &what)?;
        let answer: FeatureAnswer = serde_json::from_str(&text).with_context(|| {
            format!("{} answered {what} with unexpected JSON", self.opts.api_url)
        })?;
        let pairs = |s: Vec<String>, v: Vec<f64>| s.into_iter().zip(v).collect();
        let mut labels: Vec<String> = Vec::new();
        for e in answer.explanations {
            let text = e.description.unwrap_or_default().trim().to_string();
            if !text.is_empty() && !labels.contains(&text) {
                labels.push(text);
            }
        }
        Ok(FeatureInfo {
            labels,
            density: answer.frac_nonzero,
            max_activation: answer.max_act_approx,
            positive: pairs(answer.pos_str, answer.pos_values),
            negative: pairs(answer.neg_str, answer.neg_values),
        })
    }

    /// `POST /api/explanation/search` over `sae_ids` of `model_id`: the first page of hits.
    pub fn search(
        &self,
        model_id: &str,
        sae_ids: &[String],
        query: &str,
    ) -> Result<Vec<SearchHit>> {
        let base = &self.opts.api_url;
        let url = format!("{base}/api/explanation/search");
        let what = format!("the search for {query:?}");
        let body = serde_json::json!({
            "modelId": model_id,
            "layers": sae_ids,
            "query": query,
            "offset": 0,
        });
        let build = || {
            let request = self.agent.post(&url);
            match &self.opts.api_key {
                Some(key) => request.set("x-api-key", key),
                None => request,
            }
        };
        let response = self
            .call(&what, &build, Some(&body))
            .map_err(|e| self.error(&what, base, e))?;
        let text = response
            .into_string()
            .map_err(|e| self.read_error(&what, base, e))?;
        let answer: SearchAnswer = serde_json::from_str(&text)
            .with_context(|| format!("{base} answered {what} with unexpected JSON"))?;
        let mut hits = Vec::new();
        for r in answer.results {
            let index = match &r.index {
                serde_json::Value::String(s) => s.trim().parse::<u32>().ok(),
                serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                _ => None,
            };
            let Some(feature) = index else { continue };
            hits.push(SearchHit {
                sae_id: r.layer,
                feature,
                description: r.description.unwrap_or_default().trim().to_string(),
                cosine_similarity: r.cosine_similarity.unwrap_or(0.0),
            });
        }
        Ok(hits)
    }
}

/// Whether a transport error is a timeout (ureq 2 reports it as an I/O error).
fn is_timeout(transport: &ureq::Transport) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(transport);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        source = err.source();
    }
    transport.to_string().contains("timed out")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opts(vars: &[(&str, &str)]) -> Result<NeuronpediaOptions> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NeuronpediaOptions::from_vars(&|n| map.get(n).cloned(), false)
    }

    #[test]
    fn options_come_from_the_environment_and_hide_the_key() {
        let o = opts(&[]).unwrap();
        assert_eq!(o.datasets_url, DEFAULT_DATASETS_URL);
        assert_eq!(o.api_url, DEFAULT_API_URL);
        assert_eq!(o.timeout, Duration::from_secs(30));
        let o = opts(&[
            ("NEURONPEDIA_URL", "http://127.0.0.1:1/"),
            ("NEURONPEDIA_API_KEY", "sk-secret"),
            ("GEMSCOPE_NETWORK_TIMEOUT", "0.5"),
        ])
        .unwrap();
        assert_eq!(o.api_url, "http://127.0.0.1:1");
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert!(!format!("{o:?}").contains("sk-secret"));
        assert!(opts(&[("NEURONPEDIA_DATASETS_URL", "s3.amazonaws.com")]).is_err());
        assert!(opts(&[("GEMSCOPE_NETWORK_TIMEOUT", "-1")]).is_err());
    }
}
