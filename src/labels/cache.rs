//! gemscope's own cache (next to the Hugging Face one) and its sealed files: every file gemscope
//! writes there carries its length and CRC-32 in a header line, is written atomically, and is
//! refused (then fetched again) when it does not match, so a damaged file is never shown.
//!
//! ```text
//! <cache>/neuronpedia/<modelId>/<saeId>/
//!     labels.idx                   the label index: feature -> explanations (sealed JSON)
//!     batches/batch-N.idx          one finished export batch, parsed (sealed; kept while pulling)
//!     batches/batch-N.jsonl.gz.part  a download in progress, resumed with a Range request
//!     features/<index>.json        the per-feature API's answer, trimmed (sealed JSON)
//! ```

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first bytes of every sealed file; the version changes when the layout does.
const MAGIC: &str = "gemscope-sealed-v1";

/// gemscope's cache folder: `$GEMSCOPE_CACHE`, else `$XDG_CACHE_HOME/gemscope`, else
/// `~/.cache/gemscope`, from the variables `var` gives and the home directory.
pub fn cache_dir_from(
    var: &dyn Fn(&str) -> Option<String>,
    home: Option<PathBuf>,
) -> Result<PathBuf> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if let Some(dir) = get("GEMSCOPE_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = get("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("gemscope"));
    }
    match home {
        Some(home) => Ok(home.join(".cache").join("gemscope")),
        None => bail!("cannot find the home directory for gemscope's cache: set GEMSCOPE_CACHE"),
    }
}

/// [`cache_dir_from`] with the process environment.
pub fn cache_dir() -> Result<PathBuf> {
    #[allow(deprecated)] // not deprecated since Rust 1.86; the MSRV (1.85) still warns.
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir);
    cache_dir_from(&|name| std::env::var(name).ok(), home)
}

/// The folder of one Neuronpedia SAE's files in the cache.
pub fn sae_dir(cache: &Path, model_id: &str, sae_id: &str) -> PathBuf {
    cache.join("neuronpedia").join(model_id).join(sae_id)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// `body` behind a header line `gemscope-sealed-v1 <length> <crc32>`.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{MAGIC} {} {:08x}\n", body.len(), crc32(body)).into_bytes();
    out.extend_from_slice(body);
    out
}

/// The body of a sealed file's bytes, or why they are not one.
pub fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "a garbled header")?;
    let body = &bytes[newline + 1..];
    let mut words = header.split(' ');
    if words.next() != Some(MAGIC) {
        return Err("not a gemscope cache file of this version".into());
    }
    let length: usize = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or("a garbled header")?;
    let crc = words
        .next()
        .and_then(|w| u32::from_str_radix(w, 16).ok())
        .ok_or("a garbled header")?;
    if body.len() != length {
        return Err(format!(
            "{} bytes where its header promises {length}",
            body.len()
        ));
    }
    if crc32(body) != crc {
        return Err("a checksum mismatch".into());
    }
    Ok(body)
}

/// What reading a sealed file found.
#[derive(Debug)]
pub enum Sealed {
    Missing,
    /// The file exists but is damaged; the text says how.
    Corrupt(String),
    Body(Vec<u8>),
}

/// Reads a sealed file.
pub fn read_sealed(path: &Path) -> Result<Sealed> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sealed::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(match unseal(&bytes) {
        Ok(body) => Sealed::Body(body.to_vec()),
        Err(why) => Sealed::Corrupt(why),
    })
}

/// Writes `body` sealed, through a temporary file renamed into place.
pub fn write_sealed(path: &Path, body: &[u8]) -> Result<()> {
    write_atomic(path, &seal(body))
}

/// Writes `bytes` to a temporary file next to `path` and renames it into place, so a reader
/// never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {} in gemscope's cache", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_cache_folder_follows_the_environment() {
        let dir = |vars: &[(&str, &str)], home: Option<&str>| {
            let map: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            cache_dir_from(&|n| map.get(n).cloned(), home.map(PathBuf::from))
        };
        assert_eq!(
            dir(&[], Some("/h")).unwrap(),
            Path::new("/h/.cache/gemscope")
        );
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "/x")], Some("/h")).unwrap(),
            Path::new("/x/gemscope")
        );
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "/x"), ("GEMSCOPE_CACHE", "/g")], None).unwrap(),
            Path::new("/g")
        );
        assert!(dir(&[("GEMSCOPE_CACHE", " ")], None).is_err());
    }

    #[test]
    fn sealed_files_refuse_any_damage() {
        let body = b"{\"a\": 1}\nmore";
        let sealed = seal(body);
        assert_eq!(unseal(&sealed).unwrap(), body);
        // Truncated, extended, a flipped byte, no header, another magic.
        assert!(unseal(&sealed[..sealed.len() - 1]).is_err());
        let mut longer = sealed.clone();
        longer.push(b'x');
        assert!(unseal(&longer).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(unseal(&flipped).unwrap_err(), "a checksum mismatch");
        assert!(unseal(body).is_err());
        assert!(unseal(b"gemscope-sealed-v0 0 00000000\n").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.idx");
        assert!(matches!(read_sealed(&path).unwrap(), Sealed::Missing));
        write_sealed(&path, body).unwrap();
        assert!(matches!(read_sealed(&path).unwrap(), Sealed::Body(b) if b == body));
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(read_sealed(&path).unwrap(), Sealed::Corrupt(_)));
    }
}
