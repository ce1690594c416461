//! The Gemma Scope release catalog: release repo names, the default release of each model and
//! site, the `layer_{L}/width_{W}/average_l0_{N}` layout of a release, and which L0 is canonical.

use super::client::{HubClient, HubError};
use super::saes::{L0Choice, CANONICAL_TARGET_L0, RELEASE_REVISION};
use crate::model::Site;
use crate::report::Neuronpedia;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeSet;

/// A Gemma Scope release repo name taken apart: `google/gemma-scope-2b-pt-res`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub repo: String,
    /// `2b`, `9b`, `27b`.
    pub size: String,
    /// Trained on the instruction-tuned model.
    pub it: bool,
    pub site: Site,
}

impl Release {
    pub fn parse(repo: &str) -> Option<Self> {
        let name = repo.strip_prefix("google/gemma-scope-")?;
        let mut parts = name.split('-');
        let (size, variant, site) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !["2b", "9b", "27b"].contains(&size) {
            return None;
        }
        let it = match variant {
            "pt" => false,
            "it" => true,
            _ => return None,
        };
        let site = site_from_name(site)?;
        Some(Self {
            repo: repo.to_string(),
            size: size.to_string(),
            it,
            site,
        })
    }

    /// The Neuronpedia model id of the model the release was trained on.
    pub fn neuronpedia_model(&self) -> String {
        format!("gemma-2-{}{}", self.size, if self.it { "-it" } else { "" })
    }

    pub fn neuronpedia(&self, layer: usize, width: &str) -> Neuronpedia {
        Neuronpedia {
            model: self.neuronpedia_model(),
            sae_id: format!("{layer}-gemmascope-{}-{width}", self.site.name()),
        }
    }
}

fn site_from_name(name: &str) -> Option<Site> {
    [Site::Res, Site::Mlp, Site::Att]
        .into_iter()
        .find(|s| s.name() == name)
}

/// The release holding the SAEs for `model_id` (its last path component, e.g. `gemma-2-2b`) at
/// `site`, and a note for stderr when it was trained on another variant of the model.
pub fn default_release(model_id: &str, site: Site) -> Result<(String, Option<String>)> {
    let name = model_id
        .trim_end_matches('/')
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let res_only = |repo: &str| -> Result<(String, Option<String>)> {
        if site != Site::Res {
            bail!(
                "Gemma Scope has no {site} SAEs for {name}, only residual-stream ones ({repo}): \
                 use --site res"
            );
        }
        Ok((repo.to_string(), None))
    };
    match name.as_str() {
        "gemma-2-2b" => Ok((format!("google/gemma-scope-2b-pt-{site}"), None)),
        "gemma-2-9b" => Ok((format!("google/gemma-scope-9b-pt-{site}"), None)),
        "gemma-2-9b-it" => res_only("google/gemma-scope-9b-it-res"),
        "gemma-2-27b" => res_only("google/gemma-scope-27b-pt-res"),
        "gemma-2-2b-it" => {
            let repo = format!("google/gemma-scope-2b-pt-{site}");
            let note = format!(
                "gemma-2-2b-it has no Gemma Scope release of its own: using {repo}, trained on \
                 the base model gemma-2-2b (the Gemma Scope authors report that these SAEs \
                 transfer to the IT model)"
            );
            Ok((repo, Some(note)))
        }
        _ => bail!(
            "no default Gemma Scope SAE for model {model_id:?} (Gemma Scope covers gemma-2-2b, \
             gemma-2-2b-it, gemma-2-9b, gemma-2-9b-it and gemma-2-27b): pass --sae with a \
             params file, a hub path or a release repo"
        ),
    }
}

/// One SAE of a release, from its path `layer_{L}/width_{W}/average_l0_{N}/params.npz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaeEntry {
    pub layer: usize,
    pub width: String,
    pub l0: u32,
    pub path: String,
}

/// `(layer, width, l0)` from a Gemma Scope path (its folder or its `params.npz`).
pub fn parse_sae_path(path: &str) -> Option<(usize, String, u32)> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let i = parts.iter().position(|p| p.starts_with("layer_"))?;
    let layer = parts[i].strip_prefix("layer_")?.parse().ok()?;
    let width = parts.get(i + 1)?.strip_prefix("width_")?;
    let l0 = parts
        .get(i + 2)?
        .strip_prefix("average_l0_")?
        .parse()
        .ok()?;
    normalize_width(width).ok().map(|w| (layer, w, l0))
}

/// `16k`, `width_16K` -> `16k`; an error for anything that is not digits and `k` or `m`.
pub fn normalize_width(width: &str) -> Result<String> {
    let w = width.trim().to_ascii_lowercase();
    let w = w.strip_prefix("width_").unwrap_or(&w);
    let digits = w.trim_end_matches(['k', 'm']);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || w.len() - digits.len() > 1
    {
        bail!("SAE width {width:?} should look like 16k, 65k or 1m");
    }
    Ok(w.to_string())
}

/// A width's size, for sorting `16k` < `65k` < `1m`.
fn width_value(width: &str) -> u64 {
    let digits = width.trim_end_matches(['k', 'm']);
    let n: u64 = digits.parse().unwrap_or(u64::MAX / 1_000_000);
    match width.as_bytes().last() {
        Some(b'k') => n * 1_000,
        Some(b'm') => n * 1_000_000,
        _ => n,
    }
}

/// The canonical L0 among `l0s`: the one closest to 100, the smaller on a tie.
pub fn canonical_l0(l0s: impl IntoIterator<Item = u32>) -> Option<u32> {
    l0s.into_iter()
        .min_by_key(|&n| (n.abs_diff(CANONICAL_TARGET_L0), n))
}

/// "1-4, 7, 9" for a sorted list of layers.
fn layer_ranges(layers: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        out.push(if j >= i + 2 {
            format!("{}-{}", layers[i], layers[j])
        } else {
            layers[i].to_string()
        });
        if j == i + 1 {
            out.push(layers[j].to_string());
        }
        i = j + 1;
    }
    out.join(", ")
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SAEs a release repo holds at one commit.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub repo: String,
    pub commit: String,
    /// Sorted by layer, width (by size), L0.
    pub entries: Vec<SaeEntry>,
}

impl Catalog {
    /// The catalog of `files` (a repo listing); files off Gemma Scope's layout are ignored.
    pub fn from_files(repo: &str, commit: &str, files: &[String]) -> Self {
        let mut entries: Vec<SaeEntry> = files
            .iter()
            .filter(|f| f.ends_with("/params.npz"))
            .filter_map(|f| {
                let (layer, width, l0) = parse_sae_path(f)?;
                (f == &format!("layer_{layer}/width_{width}/average_l0_{l0}/params.npz")).then(
                    || SaeEntry {
                        layer,
                        width,
                        l0,
                        path: f.clone(),
                    },
                )
            })
            .collect();
        entries.sort_by_key(|e| (e.layer, width_value(&e.width), e.l0));
        entries.dedup();
        Self {
            repo: repo.to_string(),
            commit: commit.to_string(),
            entries,
        }
    }

    pub fn layers(&self) -> Vec<usize> {
        self.entries
            .iter()
            .map(|e| e.layer)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Widths at `layer`, smallest first.
    pub fn widths(&self, layer: usize) -> Vec<String> {
        let mut widths: Vec<String> = Vec::new();
        for e in self.entries.iter().filter(|e| e.layer == layer) {
            if !widths.contains(&e.width) {
                widths.push(e.width.clone());
            }
        }
        widths
    }

    /// Average L0s at `layer` and `width`, ascending.
    pub fn l0s(&self, layer: usize, width: &str) -> Vec<u32> {
        self.entries
            .iter()
            .filter(|e| e.layer == layer && e.width == width)
            .map(|e| e.l0)
            .collect()
    }

    pub fn canonical_l0(&self, layer: usize, width: &str) -> Option<u32> {
        canonical_l0(self.l0s(layer, width))
    }

    /// Fails unless the release has SAEs at `layer`, naming the layers it has.
    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if self.entries.is_empty() {
            bail!(
                "{} holds no Gemma Scope SAEs (no layer_L/width_W/average_l0_N/params.npz files)",
                self.repo
            );
        }
        if !self.entries.iter().any(|e| e.layer == layer) {
            bail!(
                "{} has no SAE for layer {layer}: it has layers {}",
                self.repo,
                layer_ranges(&self.layers())
            );
        }
        Ok(())
    }

    /// Fails unless the release has SAEs of `width` at `layer`, naming the widths there.
    pub fn check_width(&self, layer: usize, width: &str) -> Result<()> {
        self.check_layer(layer)?;
        let widths = self.widths(layer);
        if !widths.iter().any(|w| w == width) {
            bail!(
                "{} has no width {width} SAE at layer {layer}: the widths there are {}",
                self.repo,
                join(&widths)
            );
        }
        Ok(())
    }

    /// The SAE at `layer` and `width` with the chosen L0; errors list what exists.
    pub fn select(&self, layer: usize, width: &str, l0: L0Choice) -> Result<&SaeEntry> {
        self.check_width(layer, width)?;
        let l0s = self.l0s(layer, width);
        let canonical = canonical_l0(l0s.iter().copied()).expect("a width listed has an L0");
        let want = match l0 {
            L0Choice::Canonical => canonical,
            L0Choice::Exact(n) => n,
        };
        match self
            .entries
            .iter()
            .find(|e| e.layer == layer && e.width == width && e.l0 == want)
        {
            Some(entry) => Ok(entry),
            None => bail!(
                "{} has no layer {layer} width {width} SAE with average L0 {want}: the L0s \
                 there are {} (canonical {canonical})",
                self.repo,
                join(&l0s)
            ),
        }
    }
}

/// The catalog of a release from its listing (see [`HubClient::list_files`]). Offline (or with the
/// hub unreachable) and no listing cached, the SAEs already in the cache (as Python may have left
/// them) are used instead, with a note saying so.
pub fn load_catalog(client: &HubClient, repo: &str) -> Result<(Catalog, Vec<String>)> {
    match client.list_files(repo, RELEASE_REVISION) {
        Ok((commit, files)) => Ok((Catalog::from_files(repo, &commit, &files), Vec::new())),
        Err(err) => {
            let unreachable = matches!(
                err.downcast_ref::<HubError>(),
                Some(HubError::Unreachable(_))
            );
            let cache = client.repo_cache(repo);
            let local = cache.commit_for(RELEASE_REVISION).map(|c| {
                let files = cache.snapshot_files(&c);
                Catalog::from_files(repo, &c, &files)
            });
            match local {
                Some(catalog)
                    if (client.offline() || unreachable) && !catalog.entries.is_empty() =>
                {
                    let note = format!(
                        "the file listing of {repo} is not cached: choosing among the {} SAEs \
                         of it already in the local cache",
                        catalog.entries.len()
                    );
                    Ok((catalog, vec![note]))
                }
                _ => Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::saes::L0Choice;

    #[test]
    fn canonical_is_closest_to_100_and_smaller_on_ties() {
        assert_eq!(canonical_l0([23, 95, 120]), Some(95));
        assert_eq!(canonical_l0([90, 110]), Some(90));
        assert_eq!(canonical_l0([110, 90]), Some(90));
        assert_eq!(canonical_l0([10, 300]), Some(10));
        assert_eq!(canonical_l0([]), None);
    }

    #[test]
    fn default_releases_follow_the_model() {
        let r = |m: &str, s: Site| default_release(m, s).map(|(repo, note)| (repo, note.is_some()));
        assert_eq!(
            r("google/gemma-2-2b", Site::Mlp).unwrap(),
            ("google/gemma-scope-2b-pt-mlp".into(), false)
        );
        assert_eq!(
            r("gemma-2-9b", Site::Att).unwrap(),
            ("google/gemma-scope-9b-pt-att".into(), false)
        );
        assert_eq!(
            r("google/gemma-2-9b-it", Site::Res).unwrap(),
            ("google/gemma-scope-9b-it-res".into(), false)
        );
        assert_eq!(
            r("/models/gemma-2-27b/", Site::Res).unwrap(),
            ("google/gemma-scope-27b-pt-res".into(), false)
        );
        assert_eq!(
            r("google/gemma-2-2b-it", Site::Res).unwrap(),
            ("google/gemma-scope-2b-pt-res".into(), true)
        );
        let err = r("google/gemma-2-27b", Site::Mlp).unwrap_err().to_string();
        assert!(err.contains("only residual-stream"), "{err}");
        assert!(r("google/gemma-2-9b-it", Site::Att).is_err());
        assert!(r("meta-llama/Llama-3-8B", Site::Res)
            .unwrap_err()
            .to_string()
            .contains("--sae"));
    }

    #[test]
    fn release_names_and_neuronpedia_ids() {
        let r = Release::parse("google/gemma-scope-9b-it-res").unwrap();
        assert!(r.it && r.site == Site::Res && r.size == "9b");
        let np = r.neuronpedia(20, "16k");
        assert_eq!(np.model, "gemma-2-9b-it");
        assert_eq!(
            np.url(7),
            "https://www.neuronpedia.org/gemma-2-9b-it/20-gemmascope-res-16k/7"
        );
        assert_eq!(
            Release::parse("google/gemma-scope-2b-pt-att")
                .unwrap()
                .neuronpedia(3, "1m")
                .sae_id,
            "3-gemmascope-att-1m"
        );
        assert!(Release::parse("google/gemma-scope-2b-pt-foo").is_none());
        assert!(Release::parse("someone/gemma-scope-2b-pt-res").is_none());
    }

    #[test]
    fn catalog_parses_listing_and_explains_misses() {
        let files: Vec<String> = [
            "README.md",
            "layer_0/width_16k/average_l0_105/params.npz",
            "layer_0/width_1m/average_l0_50/params.npz",
            "layer_0/width_65k/average_l0_80/params.npz",
            "layer_1/width_16k/average_l0_23/params.npz",
            "layer_1/width_16k/average_l0_95/params.npz",
            "layer_2/width_16k/average_l0_9/params.npz",
            "layer_5/width_16k/average_l0_9/params.npz",
            "layer_5/width_16k/average_l0_9/extra/params.npz",
        ]
        .map(String::from)
        .to_vec();
        let c = Catalog::from_files("google/gemma-scope-2b-pt-res", &"a".repeat(40), &files);
        assert_eq!(c.entries.len(), 7);
        assert_eq!(c.layers(), vec![0, 1, 2, 5]);
        assert_eq!(c.widths(0), vec!["16k", "65k", "1m"]);
        assert_eq!(c.select(1, "16k", L0Choice::Canonical).unwrap().l0, 95);
        assert_eq!(
            c.select(1, "16k", L0Choice::Exact(23)).unwrap().path,
            "layer_1/width_16k/average_l0_23/params.npz"
        );
        let err = c
            .select(3, "16k", L0Choice::Canonical)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layers 0-2, 5"), "{err}");
        let err = c
            .select(0, "32k", L0Choice::Canonical)
            .unwrap_err()
            .to_string();
        assert!(err.contains("16k, 65k, 1m"), "{err}");
        let err = c
            .select(1, "16k", L0Choice::Exact(50))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("23, 95") && err.contains("canonical 95"),
            "{err}"
        );
        assert_eq!(layer_ranges(&[0, 1, 3, 4, 5, 9]), "0, 1, 3-5, 9");
    }

    #[test]
    fn widths_l0_choices_and_paths_parse() {
        assert_eq!(normalize_width("width_16K").unwrap(), "16k");
        assert_eq!(normalize_width("1m").unwrap(), "1m");
        assert!(
            normalize_width("16kk").is_err()
                && normalize_width("k").is_err()
                && normalize_width("big").is_err()
        );
        assert_eq!(
            "canonical".parse::<L0Choice>().unwrap(),
            L0Choice::Canonical
        );
        assert_eq!("71".parse::<L0Choice>().unwrap(), L0Choice::Exact(71));
        assert!("-3".parse::<L0Choice>().is_err());
        assert_eq!(
            parse_sae_path("layer_20/width_16k/average_l0_71/params.npz"),
            Some((20, "16k".into(), 71))
        );
        assert_eq!(
            parse_sae_path("layer_20/width_16k/average_l0_71"),
            Some((20, "16k".into(), 71))
        );
        assert_eq!(parse_sae_path("params.npz"), None);
    }
}
