//! How to reach the Hugging Face Hub and where its cache is, read from the same environment
//! variables as Python's huggingface_hub (`HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`, `HF_TOKEN`,
//! `HF_HUB_OFFLINE`, ...).

use anyhow::{bail, Result};
use std::io::IsTerminal;
use std::path::PathBuf;

/// The hub a default run talks to.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the hub and where its cache is. [`HubOptions::from_env`] reads the same variables
/// as Python's huggingface_hub.
#[derive(Clone)]
pub struct HubOptions {
    /// `HF_ENDPOINT`, default `https://huggingface.co`, without a trailing `/`.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer ...`; never printed (the `Debug` output redacts it).
    pub token: Option<String>,
    /// The hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// Use only the cache and never the network.
    pub offline: bool,
    /// Draw a progress bar on stderr for each download.
    pub progress: bool,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .finish()
    }
}

fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

impl HubOptions {
    /// Options from the environment, as huggingface_hub reads it: `HF_ENDPOINT`; the cache from
    /// `HF_HUB_CACHE`, else `HF_HOME` + `/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`; the token from `HF_TOKEN` (or the older
    /// `HUGGING_FACE_HUB_TOKEN`), else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`; offline
    /// when `offline_flag` is set or `HF_HUB_OFFLINE` is 1/true/yes/on. A progress bar only when
    /// stderr is a terminal. Reads no file except the token file, and touches no network.
    pub fn from_env(offline_flag: bool) -> Result<Self> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(std::env::home_dir);
        let mut opts = Self::from_vars(&|name| std::env::var(name).ok(), home, offline_flag)?;
        opts.progress = std::io::stderr().is_terminal();
        Ok(opts)
    }

    /// [`HubOptions::from_env`] with the variables from `var` and the home directory given, so
    /// tests need not change the process environment. `progress` is left off.
    pub fn from_vars(
        var: &dyn Fn(&str) -> Option<String>,
        home: Option<PathBuf>,
        offline_flag: bool,
    ) -> Result<Self> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let expand = |p: String| -> PathBuf {
            match (p.strip_prefix("~"), &home) {
                (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
                    home.join(rest.trim_start_matches('/'))
                }
                _ => PathBuf::from(p),
            }
        };
        let hf_home = match get("HF_HOME") {
            Some(dir) => expand(dir),
            None => {
                let cache = match (get("XDG_CACHE_HOME"), &home) {
                    (Some(xdg), _) => expand(xdg),
                    (None, Some(home)) => home.join(".cache"),
                    (None, None) => bail!(
                        "cannot find the home directory for the Hugging Face cache: set HF_HOME \
                         or HF_HUB_CACHE"
                    ),
                };
                cache.join("huggingface")
            }
        };
        let cache_dir = get("HF_HUB_CACHE")
            .map(expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = match get("HF_TOKEN").or_else(|| get("HUGGING_FACE_HUB_TOKEN")) {
            Some(token) => Some(token.trim().to_string()),
            None => {
                let path = get("HF_TOKEN_PATH")
                    .map(expand)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            }
        };
        let endpoint = get("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("HF_ENDPOINT must be an http:// or https:// URL, got {endpoint:?}");
        }
        let offline = offline_flag || get("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        Ok(Self {
            endpoint,
            token,
            cache_dir,
            offline,
            progress: false,
        })
    }
}
