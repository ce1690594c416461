//! Talking to the Hugging Face Hub: downloading one file into the shared cache, and listing a
//! repo's files (where the cache is, the token and offline mode come from [`super::options`]).
//!
//! Downloads go through hf-hub (`api::sync`): it writes `blobs/<etag>.part`, renames it to the
//! blob when complete (resuming a `.part` left by an interrupted run), links the snapshot entry
//! and writes `refs/<revision>`. Around it gemscope adds what hf-hub 0.4 lacks: offline mode; a
//! `HEAD` first, so that a file whose blob is already cached (by gemscope or by Python) is not
//! downloaded again; falling back to the cache when the hub cannot be reached; the token from
//! `HF_TOKEN`; a size check after each download; errors that say what to do (gated repos,
//! missing files); and a cached file listing.

use super::cache::{is_commit_hash, write_atomic, RepoCache};
pub use super::options::{HubOptions, DEFAULT_ENDPOINT};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a hub operation failed, for callers that react to the kind (the message says what to do).
#[derive(Debug)]
pub enum HubError {
    /// The hub says the file (`entry`), the revision or the repository does not exist.
    NotFound { message: String, entry: bool },
    /// 401/403: a gated or private repository and no (or an insufficient) token.
    Denied(String),
    /// Offline mode and the cache lacks what was asked for.
    NotCached(String),
    /// The hub could not be reached.
    Unreachable(String),
    /// Anything else (an unexpected answer, an interrupted download, the disk).
    Other(String),
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (HubError::NotFound { message, .. }
        | HubError::Denied(message)
        | HubError::NotCached(message)
        | HubError::Unreachable(message)
        | HubError::Other(message)) = self;
        f.write_str(message)
    }
}

impl std::error::Error for HubError {}

/// What a `HEAD` on `/{repo}/resolve/{revision}/{path}` says about a file.
#[derive(Debug)]
struct FileMeta {
    commit: String,
    etag: Option<String>,
    size: Option<u64>,
}

/// The cached answer of the model-info API: the commit and the files at one revision.
#[derive(serde::Serialize, serde::Deserialize)]
struct Listing {
    repo: String,
    revision: String,
    sha: String,
    files: Vec<String>,
}

/// A Hugging Face Hub client over one cache. Creating it touches neither the disk nor the network.
pub struct HubClient {
    opts: HubOptions,
    api: hf_hub::api::sync::Api,
    agent: ureq::Agent,
}

/// Whether `id` is a hub repo id (`name` or `org/name`), as huggingface_hub validates them.
pub fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    (1..=2).contains(&parts.len())
        && !id.contains("--")
        && !id.contains("..")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        })
}

fn check_repo_id(repo: &str) -> Result<()> {
    if !is_repo_id(repo) {
        bail!("{repo:?} is not a Hugging Face repo id (like google/gemma-2-2b)");
    }
    Ok(())
}

fn check_revision(revision: &str) -> Result<()> {
    let ok = !revision.is_empty()
        && !revision.starts_with('/')
        && !revision.ends_with('/')
        && !revision.contains("..")
        && !revision.contains('\\')
        && !revision.chars().any(char::is_whitespace);
    if !ok {
        bail!("{revision:?} is not a valid revision (a branch, tag or commit)");
    }
    Ok(())
}

fn check_path(path: &str) -> Result<()> {
    let ok = !path.is_empty()
        && !path.contains('\\')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        bail!("{path:?} is not a valid file path inside a repo");
    }
    Ok(())
}

/// Percent-encodes what a URL path may not hold; `/` is kept when `keep_slash`.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(i) => &url[..start + i],
        None => url,
    }
}

/// The hub's ETag without the weak-validator prefix and quotes, as huggingface_hub names blobs.
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

impl HubClient {
    pub fn new(opts: HubOptions) -> Result<Self> {
        let api =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(opts.cache_dir.clone()))
                .with_endpoint(opts.endpoint.clone())
                .with_token(opts.token.clone())
                // gemscope passes its own bar to each download.
                .with_progress(false)
                .with_retries(0)
                .with_user_agent("gemscope", env!("CARGO_PKG_VERSION"))
                .build()
                .context("cannot set up the Hugging Face Hub client")?;
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(30))
            .user_agent(concat!("gemscope/", env!("CARGO_PKG_VERSION")))
            .try_proxy_from_env(true)
            .build();
        Ok(Self { opts, api, agent })
    }

    pub fn options(&self) -> &HubOptions {
        &self.opts
    }

    pub fn offline(&self) -> bool {
        self.opts.offline
    }

    /// The cache folder of model repo `repo`.
    pub fn repo_cache(&self, repo: &str) -> RepoCache {
        RepoCache::new(&self.opts.cache_dir, repo)
    }

    /// The cached copy of `path` in `repo` at `revision` and its commit, without the network.
    pub fn cached(&self, repo: &str, revision: &str, path: &str) -> Option<(PathBuf, String)> {
        self.repo_cache(repo).lookup(revision, path)
    }

    /// Local path of `path` in `repo` at `revision` (branch, tag or commit), downloading it into
    /// the cache if needed; returns the commit too.
    ///
    /// Online, one `HEAD` asks the hub which commit and blob the revision means now (so a moved
    /// branch is followed, as Python does); the file is downloaded only when that blob is not
    /// cached yet. When the hub cannot be reached or refuses, a cached copy of the revision is used
    /// instead, as Python does (not when the hub says the file does not exist). Offline, only the
    /// cache answers, and a miss is an error naming repo, revision and path.
    pub fn fetch(&self, repo: &str, revision: &str, path: &str) -> Result<(PathBuf, String)> {
        check_repo_id(repo)?;
        check_revision(revision)?;
        check_path(path)?;
        let cache = self.repo_cache(repo);
        if self.opts.offline {
            return cache.lookup(revision, path).ok_or_else(|| {
                HubError::NotCached(format!(
                    "{path} of {repo} (revision {revision}) is not in the Hugging Face cache {}, \
                     and offline mode is on (HF_HUB_OFFLINE or --offline): run once with network \
                     access to download it",
                    self.opts.cache_dir.display()
                ))
                .into()
            });
        }
        let meta = match self.head(repo, revision, path) {
            Ok(meta) => meta,
            Err((err, missing_in)) => {
                if let Some(commit) = missing_in {
                    cache.mark_missing(&commit, path);
                }
                if !matches!(err, HubError::NotFound { entry: true, .. }) {
                    if let Some(hit) = cache.lookup(revision, path) {
                        return Ok(hit);
                    }
                }
                return Err(err.into());
            }
        };
        self.materialize(&cache, repo, revision, path, &meta)
    }

    /// [`HubClient::fetch`], with `None` when the hub (or the cache's `.no_exist` marker for a
    /// commit) says the file is not in the repo.
    pub fn fetch_optional(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> Result<Option<(PathBuf, String)>> {
        let cache = self.repo_cache(repo);
        if let Some(commit) = cache.commit_for(revision) {
            if cache.lookup(&commit, path).is_none() && cache.known_missing(&commit, path) {
                return Ok(None);
            }
        }
        match self.fetch(repo, revision, path) {
            Ok(found) => Ok(Some(found)),
            Err(err)
                if matches!(
                    err.downcast_ref::<HubError>(),
                    Some(HubError::NotFound { entry: true, .. })
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// The files in `repo` at `revision` and the commit, from the model-info API
    /// (`GET {endpoint}/api/models/{repo}/revision/{revision}`); the answer is kept in the repo's
    /// cache folder (`.gemscope/listing-<revision>.json`) and used offline or when the hub cannot
    /// be reached.
    pub fn list_files(&self, repo: &str, revision: &str) -> Result<(String, Vec<String>)> {
        check_repo_id(repo)?;
        check_revision(revision)?;
        let cache = self.repo_cache(repo);
        if self.opts.offline {
            return read_listing(&cache, revision).ok_or_else(|| {
                HubError::NotCached(format!(
                    "the file listing of {repo} (revision {revision}) is not in the cache {}, and \
                     offline mode is on (HF_HUB_OFFLINE or --offline): run once with network \
                     access",
                    self.opts.cache_dir.display()
                ))
                .into()
            });
        }
        match self.fetch_listing(repo, revision) {
            Ok(listing) => {
                // The listing is a convenience: a read-only cache must not fail the run.
                let json = serde_json::to_vec_pretty(&listing).expect("a listing serializes");
                let _ = cache.ensure_snapshots_dir();
                let _ = write_atomic(&cache.listing_path(revision), &json);
                if listing.sha != revision {
                    let _ = write_atomic(&cache.listing_path(&listing.sha), &json);
                }
                Ok((listing.sha, listing.files))
            }
            Err(err) => {
                if !matches!(err, HubError::NotFound { entry: true, .. }) {
                    if let Some(cached) = read_listing(&cache, revision) {
                        return Ok(cached);
                    }
                }
                Err(err.into())
            }
        }
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.opts.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// One request, following the hub's relative redirects (renamed repos) but not absolute ones
    /// (the CDN, whose answer gemscope does not need for metadata).
    fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<ureq::Response, Box<ureq::Error>> {
        let mut url = url.to_string();
        let mut hops = 0;
        loop {
            let mut request = self.request(method, &url);
            for (name, value) in headers {
                request = request.set(name, value);
            }
            let response = request.call().map_err(Box::new)?;
            match response.header("Location") {
                Some(location)
                    if (300..400).contains(&response.status())
                        && location.starts_with('/')
                        && hops < 5 =>
                {
                    url = format!("{}{location}", origin(&url));
                    hops += 1;
                }
                _ => return Ok(response),
            }
        }
    }

    /// The error for a failed request about `what` (a file path, or "the file listing") and, for
    /// a missing file, the commit the hub named (for the `.no_exist` marker).
    fn http_error(
        &self,
        error: Box<ureq::Error>,
        repo: &str,
        revision: &str,
        what: &str,
    ) -> (HubError, Option<String>) {
        let endpoint = &self.opts.endpoint;
        let response = match *error {
            ureq::Error::Status(_, response) => response,
            ureq::Error::Transport(transport) => {
                let message = format!(
                    "cannot reach {endpoint} to get {what} of {repo} (revision {revision}): \
                     {transport}. Without network, set HF_HUB_OFFLINE=1 to use only files \
                     already in the cache"
                );
                return (HubError::Unreachable(message), None);
            }
        };
        let code = response.status();
        let kind = response.header("X-Error-Code").unwrap_or("");
        let has_token = self.opts.token.is_some();
        let err = match (code, kind) {
            (_, "RepoNotFound") => HubError::NotFound {
                message: format!(
                    "repository {repo} not found on {endpoint}{}",
                    if has_token {
                        " (or the token in use has no access to it)"
                    } else {
                        " (if it is private, set HF_TOKEN)"
                    }
                ),
                entry: false,
            },
            (_, "RevisionNotFound") => HubError::NotFound {
                message: format!("revision {revision} not found in {repo} on {endpoint}"),
                entry: false,
            },
            (_, "GatedRepo") | (401 | 403, _) => HubError::Denied(format!(
                "access to {repo} was refused (HTTP {code}) while getting {what}: the repository \
                 is gated. Accept the Gemma license on the model page \
                 (https://huggingface.co/{repo}) while logged in, then set HF_TOKEN to an access \
                 token of that account (https://huggingface.co/settings/tokens); {}",
                if has_token {
                    "the token in use was refused or has no access to this repository yet"
                } else {
                    "no token is set now (neither HF_TOKEN nor a token file)"
                }
            )),
            (_, "EntryNotFound") | (404, _) => {
                let message =
                    format!("{what} not found in {repo} at revision {revision} on {endpoint}");
                let commit = response.header("X-Repo-Commit").map(str::to_string);
                let commit = commit.filter(|c| is_commit_hash(c));
                return (
                    HubError::NotFound {
                        message,
                        entry: true,
                    },
                    commit,
                );
            }
            _ => HubError::Other(format!(
                "{endpoint} answered HTTP {code} for {what} of {repo} (revision {revision})"
            )),
        };
        (err, None)
    }

    /// Asks the hub which commit and blob `path` at `revision` is. On failure, also the commit
    /// a 404 named, for the `.no_exist` marker.
    fn head(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> Result<FileMeta, (HubError, Option<String>)> {
        let url = format!(
            "{}/{repo}/resolve/{}/{}",
            self.opts.endpoint,
            encode(revision, false),
            encode(path, true)
        );
        let response = self
            .call("HEAD", &url, &[("Accept-Encoding", "identity")])
            .map_err(|e| self.http_error(e, repo, revision, path))?;
        let commit = response
            .header("X-Repo-Commit")
            .unwrap_or("")
            .trim()
            .to_string();
        if !is_commit_hash(&commit) {
            let err = HubError::Other(format!(
                "{} did not name the commit of {path} in {repo} (no valid X-Repo-Commit \
                 header): is HF_ENDPOINT a Hugging Face Hub?",
                self.opts.endpoint
            ));
            return Err((err, None));
        }
        let etag = response
            .header("X-Linked-Etag")
            .or_else(|| response.header("ETag"))
            .map(normalize_etag);
        let etag =
            etag.filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..");
        let size = match response.header("X-Linked-Size") {
            Some(size) => size.trim().parse().ok(),
            None if response.status() < 300 => response
                .header("Content-Length")
                .and_then(|s| s.trim().parse().ok()),
            None => None,
        };
        Ok(FileMeta { commit, etag, size })
    }

    /// Puts the file `meta` describes into the cache (linking an existing blob or downloading)
    /// and points `refs/<revision>` at its commit.
    fn materialize(
        &self,
        cache: &RepoCache,
        repo: &str,
        revision: &str,
        path: &str,
        meta: &FileMeta,
    ) -> Result<(PathBuf, String)> {
        let size_ok = |file: &Path| {
            meta.size
                .is_none_or(|size| std::fs::metadata(file).is_ok_and(|m| m.len() == size))
        };
        let write_ref = |commit: &str| {
            cache
                .write_ref(revision, commit)
                .with_context(|| format!("cannot write to the cache {}", cache.root().display()))
        };
        let pointer = cache.snapshot_dir(&meta.commit).join(path);
        if pointer.is_file() && size_ok(&pointer) {
            write_ref(&meta.commit)?;
            return Ok((pointer, meta.commit.clone()));
        }
        if let Some(etag) = &meta.etag {
            let blob = cache.blob_path(etag);
            if blob.is_file() && size_ok(&blob) {
                let pointer = cache.link_blob(&meta.commit, path, etag).with_context(|| {
                    format!("cannot write to the cache {}", cache.root().display())
                })?;
                write_ref(&meta.commit)?;
                return Ok((pointer, meta.commit.clone()));
            }
        }
        // A snapshot entry whose blob is gone would make hf-hub's link fail.
        if std::fs::symlink_metadata(&pointer).is_ok() {
            std::fs::remove_file(&pointer)
                .with_context(|| format!("cannot remove {}", pointer.display()))?;
        }

        // Download at the commit the HEAD named, so the file is the one described; hf-hub then
        // writes `refs/<commit>`, which Python never does: remove it again.
        let commit_ref = cache.ref_path(&meta.commit);
        let had_commit_ref = commit_ref.exists();
        let handle = self.api.repo(hf_hub::Repo::with_revision(
            repo.to_string(),
            hf_hub::RepoType::Model,
            meta.commit.clone(),
        ));
        // A bar on stderr, drawn only when stderr is a terminal (`progress`).
        let bar = if self.opts.progress {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let result = handle.download_with_progress(path, bar);
        if !had_commit_ref {
            let _ = std::fs::remove_file(&commit_ref);
        }
        let downloaded = result.map_err(|e| self.download_error(e, repo, revision, path))?;
        if !size_ok(&downloaded) {
            let got = std::fs::metadata(&downloaded).map(|m| m.len()).unwrap_or(0);
            if let Ok(blob) = std::fs::canonicalize(&downloaded) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&downloaded);
            bail!(HubError::Other(format!(
                "the download of {path} from {repo} has {got} bytes, but the hub announced {}: \
                 run the command again",
                meta.size.unwrap_or(0)
            )));
        }
        write_ref(&meta.commit)?;
        Ok((downloaded, meta.commit.clone()))
    }

    fn download_error(
        &self,
        err: hf_hub::api::sync::ApiError,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> anyhow::Error {
        use hf_hub::api::sync::ApiError;
        let again = "run the command again to resume it";
        let err = match err {
            ApiError::RequestError(e) => self.http_error(e, repo, revision, path).0,
            ApiError::IoError(e) => HubError::Other(format!(
                "the download of {path} from {repo} was interrupted ({e}); {again}"
            )),
            ApiError::TooManyRetries(e) => HubError::Other(format!(
                "the download of {path} from {repo} failed ({e}); {again}"
            )),
            ApiError::LockAcquisition(lock) => HubError::Other(format!(
                "another process is downloading {path} of {repo} (lock file {}): wait for it, or \
                 remove the lock file if no download is running",
                lock.display()
            )),
            other => HubError::Other(format!(
                "cannot download {path} of {repo} (revision {revision}): {other}"
            )),
        };
        err.into()
    }

    fn fetch_listing(&self, repo: &str, revision: &str) -> Result<Listing, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.opts.endpoint,
            encode(revision, false)
        );
        let what = "the file listing";
        let response = self
            .call("GET", &url, &[])
            .map_err(|e| self.http_error(e, repo, revision, what).0)?;
        let bad = |why: String| {
            HubError::Other(format!(
                "{} answered the file listing of {repo} with {why}",
                self.opts.endpoint
            ))
        };
        let text = response
            .into_string()
            .map_err(|e| bad(format!("an unreadable body ({e})")))?;
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        #[derive(serde::Deserialize)]
        struct Info {
            sha: String,
            #[serde(default)]
            siblings: Vec<Sibling>,
        }
        let info: Info =
            serde_json::from_str(&text).map_err(|e| bad(format!("unexpected JSON ({e})")))?;
        if !is_commit_hash(&info.sha) {
            return Err(bad(format!(
                "a sha that is not a commit hash ({:?})",
                info.sha
            )));
        }
        let mut files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        files.sort();
        Ok(Listing {
            repo: repo.to_string(),
            revision: revision.to_string(),
            sha: info.sha,
            files,
        })
    }
}

fn read_listing(cache: &RepoCache, revision: &str) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(cache.listing_path(revision)).ok()?;
    let listing: Listing = serde_json::from_str(&text).ok()?;
    is_commit_hash(&listing.sha).then_some((listing.sha, listing.files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opts(vars: &[(&str, &str)], home: Option<&str>) -> Result<HubOptions> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_vars(
            &|name| map.get(name).cloned(),
            home.map(PathBuf::from),
            false,
        )
    }

    #[test]
    fn cache_and_token_follow_huggingface_hub() {
        let o = opts(&[], Some("/home/u")).unwrap();
        assert_eq!(o.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(o.endpoint, "https://huggingface.co");
        assert!(o.token.is_none() && !o.offline && !o.progress);

        let o = opts(&[("XDG_CACHE_HOME", "/x")], Some("/home/u")).unwrap();
        assert_eq!(o.cache_dir, Path::new("/x/huggingface/hub"));
        let o = opts(
            &[("HF_HOME", "~/hf"), ("XDG_CACHE_HOME", "/x")],
            Some("/home/u"),
        )
        .unwrap();
        assert_eq!(o.cache_dir, Path::new("/home/u/hf/hub"));
        let o = opts(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/elsewhere")], None).unwrap();
        assert_eq!(o.cache_dir, Path::new("/elsewhere"));
        assert!(opts(&[], None).is_err());

        let o = opts(
            &[
                ("HF_ENDPOINT", "http://127.0.0.1:9/"),
                ("HF_HUB_OFFLINE", "true"),
            ],
            Some("/h"),
        )
        .unwrap();
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert!(o.offline);
        assert!(
            !opts(&[("HF_HUB_OFFLINE", "0")], Some("/h"))
                .unwrap()
                .offline
        );
        assert!(opts(&[("HF_ENDPOINT", "huggingface.co")], Some("/h")).is_err());

        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_str().unwrap();
        std::fs::write(tmp.path().join("token"), "hf_from_file\n").unwrap();
        let o = opts(&[("HF_HOME", home)], None).unwrap();
        assert_eq!(o.token.as_deref(), Some("hf_from_file"));
        let o = opts(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")], None).unwrap();
        assert_eq!(o.token.as_deref(), Some("hf_env"));
        assert!(
            !format!("{o:?}").contains("hf_env"),
            "Debug must redact the token"
        );
    }

    #[test]
    fn ids_paths_and_urls() {
        assert!(is_repo_id("google/gemma-2-2b") && is_repo_id("gpt2"));
        for bad in ["", "a/b/c", "./x", "a--b/c", "/abs", "a/", "a b/c", "../x"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
        assert!(check_path("layer_1/width_16k/average_l0_95/params.npz").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "a\\b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert!(check_revision("refs/pr/1").is_ok() && check_revision("../x").is_err());
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("a b/c.json", true), "a%20b/c.json");
        assert_eq!(origin("http://127.0.0.1:80/a/b"), "http://127.0.0.1:80");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }
}
