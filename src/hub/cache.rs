//! The Hugging Face cache as huggingface_hub (Python) and hf-hub (Rust) lay it out, read and
//! written by gemscope in the same shape, so that either side uses what the other downloaded:
//!
//! ```text
//! <cache>/models--google--gemma-2-2b/
//!     blobs/<etag>                                  file contents, named by their hub ETag
//!     snapshots/<commit>/<path in repo>             relative symlinks into blobs/
//!     refs/<revision>                               branch or tag -> commit (text)
//!     .no_exist/<commit>/<path in repo>             empty marker: the file is not in that commit
//!     .gemscope/listing-<revision>.json             gemscope's cached file listing (not Python's)
//! ```

use std::path::{Path, PathBuf};

/// The cache folder of one model repo (`<cache>/models--org--name`).
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
}

/// Whether `revision` is a full commit hash (40 lowercase hex digits), as the hub's commits are.
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes `bytes` atomically (see [`crate::system::write_file_atomically`]), creating the cache
/// directories it needs.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    crate::system::write_file_atomically(path, |w| w.write_all(bytes))
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
}

impl RepoCache {
    /// The folder of model repo `repo` (`org/name`) inside the hub cache `cache_dir`.
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        let folder = hf_hub::Repo::model(repo.to_string()).folder_name();
        Self {
            root: cache_dir.join(folder),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `refs/<revision>`; a revision with `/` (`refs/pr/1`) makes subfolders, as in Python.
    pub fn ref_path(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    /// Python's marker for a file the hub said is absent from `commit`.
    pub fn no_exist_path(&self, commit: &str, path: &str) -> PathBuf {
        self.root.join(".no_exist").join(commit).join(path)
    }

    /// Where gemscope keeps the repo's file listing at `revision`.
    pub fn listing_path(&self, revision: &str) -> PathBuf {
        self.root
            .join(".gemscope")
            .join(format!("listing-{}.json", revision.replace('/', "%2F")))
    }

    /// The commit `revision` stands for in the cache: itself when it is a commit hash, else what
    /// `refs/<revision>` says.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.ref_path(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// The cached copy of `path` at `revision` and its commit, if the cache holds it (a snapshot
    /// entry whose blob is present; a dangling symlink does not count).
    pub fn lookup(&self, revision: &str, path: &str) -> Option<(PathBuf, String)> {
        let commit = self.commit_for(revision)?;
        let file = self.snapshot_dir(&commit).join(path);
        file.is_file().then_some((file, commit))
    }

    /// Whether the cache records that `path` is absent from `commit`.
    pub fn known_missing(&self, commit: &str, path: &str) -> bool {
        self.no_exist_path(commit, path).is_file()
    }

    /// Creates `snapshots/`, without which Python's `scan_cache_dir` reports the repo folder as
    /// corrupted (it may otherwise hold only gemscope's listing or `.no_exist` markers).
    pub fn ensure_snapshots_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.root.join("snapshots"))
    }

    /// Records that `path` is absent from `commit` (best effort, as Python does).
    pub fn mark_missing(&self, commit: &str, path: &str) {
        let _ = self.ensure_snapshots_dir();
        let marker = self.no_exist_path(commit, path);
        if let Some(dir) = marker.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&marker);
            }
        }
    }

    /// Points `refs/<revision>` at `commit`; nothing to do when the revision is the commit itself.
    pub fn write_ref(&self, revision: &str, commit: &str) -> std::io::Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.ref_path(revision);
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == commit) {
            return Ok(());
        }
        write_atomic(&path, commit.as_bytes())
    }

    /// Makes `snapshots/<commit>/<path>` point at the blob `etag`, with a relative symlink as
    /// Python does (a copy where symlinks are unavailable). Returns the snapshot path.
    pub fn link_blob(&self, commit: &str, path: &str, etag: &str) -> std::io::Result<PathBuf> {
        let pointer = self.snapshot_dir(commit).join(path);
        let dir = pointer.parent().expect("a snapshot path has a parent");
        std::fs::create_dir_all(dir)?;
        if std::fs::symlink_metadata(&pointer).is_ok() {
            std::fs::remove_file(&pointer)?;
        }
        // snapshots/<commit>/a/b/file -> ../../../../blobs/<etag>: one `..` per folder below
        // the repo root.
        let depth = 2 + path.split('/').count() - 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &pointer)?;
        #[cfg(not(unix))]
        std::fs::copy(self.blob_path(etag), &pointer).map(|_| ())?;
        Ok(pointer)
    }

    /// The files under `snapshots/<commit>`, as paths in the repo (`/`-separated), sorted.
    pub fn snapshot_files(&self, commit: &str) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, &rel, out);
                } else if path.is_file() {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.snapshot_dir(commit), "", &mut out);
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let cache = RepoCache::new(Path::new("/c"), "google/gemma-2-2b");
        assert_eq!(cache.root(), Path::new("/c/models--google--gemma-2-2b"));
        assert_eq!(
            cache.ref_path("main"),
            Path::new("/c/models--google--gemma-2-2b/refs/main")
        );
        assert_eq!(
            cache.listing_path("refs/pr/1").file_name().unwrap(),
            "listing-refs%2Fpr%2F1.json"
        );
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
        assert!(!is_commit_hash("0123456789ABCDEF0123456789abcdef01234567"));
    }

    #[test]
    fn links_are_relative_and_refs_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(tmp.path(), "org/repo");
        let commit = "a".repeat(40);
        std::fs::create_dir_all(cache.blob_path("e1").parent().unwrap()).unwrap();
        std::fs::write(cache.blob_path("e1"), b"data").unwrap();
        let pointer = cache
            .link_blob(&commit, "layer_1/width_16k/params.npz", "e1")
            .unwrap();
        #[cfg(unix)]
        assert_eq!(
            std::fs::read_link(&pointer).unwrap(),
            Path::new("../../../../blobs/e1")
        );
        assert_eq!(std::fs::read(&pointer).unwrap(), b"data");
        assert!(cache
            .lookup("main", "layer_1/width_16k/params.npz")
            .is_none());
        cache.write_ref("main", &commit).unwrap();
        let (path, got) = cache
            .lookup("main", "layer_1/width_16k/params.npz")
            .unwrap();
        assert_eq!((path, got), (pointer, commit.clone()));
        assert_eq!(
            cache.snapshot_files(&commit),
            vec!["layer_1/width_16k/params.npz".to_string()]
        );
        // A commit is never written as a ref to itself.
        cache.write_ref(&commit, &commit).unwrap();
        assert!(!cache.ref_path(&commit).exists());
        cache.mark_missing(&commit, "model.safetensors.index.json");
        assert!(cache.known_missing(&commit, "model.safetensors.index.json"));
    }
}
