//! Finding the Gemma Scope SAE for a hook: a local file, a path in a hub repo, or a release repo
//! with a width and an L0 (by default the canonical one), and the matching Neuronpedia ids.
//!
//! Gemma Scope releases are hub repos named `google/gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att}`
//! holding `layer_{L}/width_{W}/average_l0_{N}/params.npz`.

use super::catalog::{
    default_release, load_catalog, normalize_width, parse_sae_path, Catalog, Release,
};
use super::client::{is_repo_id, HubClient};
use crate::model::Site;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub use crate::report::Neuronpedia;

/// The branch of a release repo gemscope reads.
pub const RELEASE_REVISION: &str = "main";
/// The average L0 the canonical SAE is closest to (Gemma Scope's definition).
pub const CANONICAL_TARGET_L0: u32 = 100;

/// Which SAE of a layer and width: the canonical one, or the one with this average L0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L0Choice {
    #[default]
    Canonical,
    Exact(u32),
}

impl std::str::FromStr for L0Choice {
    type Err = String;
    /// `canonical` or a number (`71`).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("canonical") {
            return Ok(Self::Canonical);
        }
        s.trim().parse().map(Self::Exact).map_err(|_| {
            format!("expected an average L0 (a whole number) or `canonical`, got {s:?}")
        })
    }
}

impl std::fmt::Display for L0Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Canonical => f.write_str("canonical"),
            Self::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// What the user asked for, with the hook it is for.
#[derive(Debug, Clone)]
pub struct SaeRequest {
    /// `--sae`: a local `.npz`/`.safetensors` file (or a folder holding `params.npz`); a hub path
    /// `REPO/PATH` to an SAE folder or its params file; or a release repo `REPO`. `None`: the
    /// release that fits `model_id` and `site`.
    pub sae: Option<String>,
    /// Width for a release (`16k`, `65k`, `1m`; `width_16k` is accepted too).
    pub width: String,
    /// Average L0 for a release.
    pub l0: L0Choice,
    /// The model's repo id or directory; only its last path component counts (`gemma-2-2b`).
    pub model_id: String,
    pub layer: usize,
    pub site: Site,
}

/// The SAE file to load and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedSae {
    /// The params file on disk (in the hub cache for a hub SAE).
    pub path: PathBuf,
    /// The hub repo, `None` for a local file.
    pub repo: Option<String>,
    /// `layer_20/width_16k/average_l0_71/params.npz`.
    pub path_in_repo: Option<String>,
    /// The commit the file comes from.
    pub revision: Option<String>,
    /// `16k`, when the path follows Gemma Scope's layout.
    pub width: Option<String>,
    /// The average L0 in the path, when it follows Gemma Scope's layout.
    pub l0: Option<u32>,
    /// Set for a Gemma Scope release's canonical SAE, the one Neuronpedia hosts.
    pub neuronpedia: Option<Neuronpedia>,
    /// Remarks for stderr (e.g. that a base-model SAE is used on an instruction-tuned model).
    pub notes: Vec<String>,
}

/// What `--sae` names.
enum SaeSpec<'a> {
    Local(PathBuf),
    HubFile { repo: String, path: String },
    Release(&'a str),
}

fn parse_spec(spec: &str) -> Result<SaeSpec<'_>> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(SaeSpec::Local(path.to_path_buf()));
    }
    if path.is_dir() {
        let params = path.join("params.npz");
        if params.is_file() {
            return Ok(SaeSpec::Local(params));
        }
        bail!("SAE folder {spec} holds no params.npz");
    }
    let parts: Vec<&str> = spec.trim_end_matches('/').split('/').collect();
    let looks_local =
        spec.starts_with(['.', '/', '~']) || spec.contains('\\') || path.is_absolute();
    if looks_local || parts.len() < 2 || !is_repo_id(&format!("{}/{}", parts[0], parts[1])) {
        bail!(
            "SAE file {spec} not found (a hub SAE is named REPO or REPO/PATH, like \
             google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71)"
        );
    }
    if parts.len() == 2 {
        return Ok(SaeSpec::Release(spec.trim_end_matches('/')));
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let mut path = parts[2..].join("/");
    if !(path.ends_with(".npz") || path.ends_with(".safetensors")) {
        path.push_str("/params.npz");
    }
    Ok(SaeSpec::HubFile { repo, path })
}

/// Resolves `req` to a params file on disk, downloading it into the hub cache when it comes from
/// the hub:
///
/// - a local file (or a folder with `params.npz`) is used as is, without network or cache;
/// - `REPO/PATH` names a folder (`params.npz` is appended) or a file in a hub repo;
/// - `REPO` is a release: the SAE at `req.layer` with `req.width` and `req.l0` (canonical: the
///   average L0 closest to 100, the smaller on a tie) from the repo's listing;
/// - `None`: the release for `req.model_id` and `req.site` (see [`default_release`]).
///
/// A Gemma Scope SAE for another layer or site than the hook's is an error, as is a layer or
/// width the release lacks (the message lists what exists). `neuronpedia` is set for the
/// canonical SAE of a Gemma Scope release, the one Neuronpedia hosts.
pub fn resolve_sae(client: &HubClient, req: &SaeRequest) -> Result<ResolvedSae> {
    let spec = match &req.sae {
        Some(sae) => parse_spec(sae)?,
        None => {
            let (repo, note) = default_release(&req.model_id, req.site)?;
            let mut resolved = resolve_release(client, &repo, req)?;
            resolved.notes.splice(0..0, note);
            return Ok(resolved);
        }
    };
    match spec {
        SaeSpec::Local(path) => Ok(ResolvedSae {
            path,
            repo: None,
            path_in_repo: None,
            revision: None,
            width: None,
            l0: None,
            neuronpedia: None,
            notes: Vec::new(),
        }),
        SaeSpec::Release(repo) => resolve_release(client, repo, req),
        SaeSpec::HubFile { repo, path } => resolve_hub_file(client, &repo, &path, req),
    }
}

fn check_release_site(release: Option<&Release>, req: &SaeRequest) -> Result<()> {
    if let Some(release) = release {
        if release.site != req.site {
            bail!(
                "{} holds {} SAEs, but the hook is at site {}: pick the -{} release or change \
                 --site",
                release.repo,
                release.site,
                req.site,
                req.site
            );
        }
    }
    Ok(())
}

fn resolve_release(client: &HubClient, repo: &str, req: &SaeRequest) -> Result<ResolvedSae> {
    let release = Release::parse(repo);
    check_release_site(release.as_ref(), req)?;
    let width = normalize_width(&req.width)?;
    let (catalog, notes) = load_catalog(client, repo)?;
    let entry = catalog.select(req.layer, &width, req.l0)?;
    // At the branch, not the listing's commit, so that `refs/main` is written as Python does.
    let (path, commit) = client.fetch(repo, RELEASE_REVISION, &entry.path)?;
    let canonical = catalog.canonical_l0(entry.layer, &entry.width) == Some(entry.l0);
    Ok(ResolvedSae {
        path,
        repo: Some(repo.to_string()),
        path_in_repo: Some(entry.path.clone()),
        revision: Some(commit),
        width: Some(entry.width.clone()),
        l0: Some(entry.l0),
        neuronpedia: release
            .filter(|_| canonical)
            .map(|r| r.neuronpedia(entry.layer, &entry.width)),
        notes,
    })
}

fn resolve_hub_file(
    client: &HubClient,
    repo: &str,
    path: &str,
    req: &SaeRequest,
) -> Result<ResolvedSae> {
    let release = Release::parse(repo);
    check_release_site(release.as_ref(), req)?;
    let parsed = parse_sae_path(path);
    if let Some((layer, _, _)) = &parsed {
        if *layer != req.layer {
            bail!(
                "{repo}/{path} is an SAE for layer {layer}, but the hook is at layer {}: use \
                 --layer {layer}",
                req.layer
            );
        }
    }
    let (file, commit) = client.fetch(repo, RELEASE_REVISION, path)?;
    // Neuronpedia hosts the canonical SAEs only: ask the (cached) listing whether this is one.
    let neuronpedia = match (&release, &parsed) {
        (Some(release), Some((layer, width, l0))) => client
            .list_files(repo, RELEASE_REVISION)
            .ok()
            .map(|(c, files)| Catalog::from_files(repo, &c, &files))
            .filter(|catalog| catalog.canonical_l0(*layer, width) == Some(*l0))
            .map(|_| release.neuronpedia(*layer, width)),
        _ => None,
    };
    Ok(ResolvedSae {
        path: file,
        repo: Some(repo.to_string()),
        path_in_repo: Some(path.to_string()),
        revision: Some(commit),
        width: parsed.as_ref().map(|p| p.1.clone()),
        l0: parsed.map(|p| p.2),
        neuronpedia,
        notes: Vec::new(),
    })
}
