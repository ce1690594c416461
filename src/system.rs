//! What the machine has (available memory), the memory plan a job is checked against before
//! loading, how large buffers are filled from files, and the one way gemscope writes a file
//! (atomically).

use anyhow::{bail, Result};

/// Bytes of memory available to new allocations (`MemAvailable`), where the OS reports it, capped
/// by `GEMSCOPE_MEMORY_LIMIT` (bytes, or with a K, M or G suffix) when set: a job plans as if the
/// machine had no more, e.g. to leave room for other work or to force the layer-major path.
pub fn available_memory() -> Option<u64> {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| parse_meminfo_available(&meminfo));
    let limit = std::env::var("GEMSCOPE_MEMORY_LIMIT")
        .ok()
        .and_then(|v| parse_bytes(&v));
    match (available, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

/// `123`, `64K`, `512M`, `2G` (binary units) as bytes.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The most resident memory this process has held so far (`VmHWM`), where the OS reports it.
pub fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Values a file holds, read raw (native byte order): plain numbers with no invalid bit patterns.
///
/// # Safety
/// Implement only for types where every bit pattern is a valid value.
pub unsafe trait PlainValue: Copy {}
// Safety: IEEE floats and integers accept every bit pattern.
unsafe impl PlainValue for f32 {}
unsafe impl PlainValue for half::bf16 {}
unsafe impl PlainValue for half::f16 {}

/// `count` values read from `file` at byte `offset` with `pread`, straight into a new vector's
/// memory: no zeroing pass before the read, and on Linux the buffer asks for transparent huge
/// pages, so that a fresh 300 MB buffer takes ~150 page faults instead of ~75,000. Measured on the
/// 2B shape: the whole model (10.4 GB, `generate`) loads in 5.4-6.3 s against 15-24 s with
/// zeroed 4 KiB pages, and a 16k SAE in 0.13 s against 0.23 s.
#[cfg(unix)]
pub fn read_values_at<T: PlainValue>(
    file: &std::fs::File,
    offset: u64,
    count: usize,
) -> std::io::Result<Vec<T>> {
    use std::os::unix::io::AsRawFd;
    let len = count * std::mem::size_of::<T>();
    let mut values: Vec<T> = Vec::with_capacity(count);
    let base = values.as_mut_ptr() as *mut u8;
    advise_huge_pages(base, len);
    let mut done = 0usize;
    while done < len {
        // Safety: `base..base + len` is the vector's allocation; pread writes only within it.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                base.add(done) as *mut libc::c_void,
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    // Safety: all `count` values were written by pread above, and any bit pattern is a valid T.
    unsafe { values.set_len(count) };
    Ok(values)
}

/// Asks the kernel to back the 2 MiB-aligned part of `ptr..ptr + len` with huge pages (Linux,
/// where transparent huge pages are `madvise`d, as on most distributions). Only advice: nothing
/// changes where the kernel declines.
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // Safety: advice on pages of an allocation the caller owns; it changes no contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The large allocations a job will make, with what could shrink each.
#[derive(Debug, Default)]
pub struct MemoryPlan {
    items: Vec<(String, u64)>,
    /// Ways to need less, each with the bytes it saves.
    savings: Vec<(String, u64)>,
}

impl MemoryPlan {
    pub fn add(&mut self, what: impl Into<String>, bytes: u64) {
        self.items.push((what.into(), bytes));
    }

    pub fn saving(&mut self, option: impl Into<String>, bytes: u64) {
        if bytes > 0 {
            self.savings.push((option.into(), bytes));
        }
    }

    pub fn total(&self) -> u64 {
        self.items.iter().map(|(_, b)| b).sum()
    }

    /// Whether the plan fits in what the machine has now (yes where the OS does not say).
    pub fn fits(&self) -> bool {
        available_memory().is_none_or(|available| self.total() <= available)
    }

    /// [`MemoryPlan::check`] against what the machine has now (no check where the OS does not say).
    pub fn check_available(&self) -> Result<()> {
        match available_memory() {
            Some(available) => self.check(available),
            None => Ok(()),
        }
    }

    /// Fails, before anything large is allocated, when the plan exceeds `available` bytes; the
    /// message lists what takes the memory and which options would make the job fit.
    pub fn check(&self, available: u64) -> Result<()> {
        let total = self.total();
        if total <= available {
            return Ok(());
        }
        let parts: Vec<String> = self
            .items
            .iter()
            .map(|(what, b)| format!("{what} {}", gib(*b)))
            .collect();
        let fits: Vec<String> = self
            .savings
            .iter()
            .filter(|(_, saved)| total - saved <= available)
            .map(|(option, saved)| format!("{option} (saves {})", gib(*saved)))
            .collect();
        let advice = if fits.is_empty() {
            let all: Vec<&str> = self.savings.iter().map(|(o, _)| o.as_str()).collect();
            if all.is_empty() {
                "a machine with more memory is needed".to_string()
            } else {
                format!(
                    "even {} would not be enough; a machine with more memory is needed",
                    all.join(" and ")
                )
            }
        } else {
            format!("try {}", fits.join(", or "))
        };
        bail!(
            "this job needs about {} ({}), but only {} of memory is available: {advice}",
            gib(total),
            parts.join(", "),
            gib(available)
        )
    }
}

/// Writes a file through a temporary file in the same directory, renamed into place once
/// complete, so a failure never leaves a partial file that looks finished.
pub fn write_file_atomically(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let written = (|| -> std::io::Result<()> {
        let mut writer = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut writer)?;
        writer.flush()?;
        drop(writer);
        tmp.as_file().sync_all()
    })();
    written.with_context(|| format!("cannot write {}", path.display()))?;
    // The temporary file is private (0600); what gemscope writes is meant to be read and shared
    // (reports, dashboards, caches), so it gets a plain file's 0644.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits_parse_with_binary_units() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("64K"), Some(64 << 10));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("2T"), None);
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn reads_mem_available() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_plan_that_does_not_fit_names_the_options_that_would() {
        let gb = 1u64 << 30;
        let mut plan = MemoryPlan::default();
        plan.add("SAE encoder", 9 * gb);
        plan.add("SAE decoder", 9 * gb);
        plan.add("one block", gb);
        plan.saving("--encode-only", 9 * gb);
        plan.saving("--dtype bf16", gb / 2);
        assert!(plan.check(20 * gb).is_ok());
        let err = plan.check(12 * gb).unwrap_err().to_string();
        assert!(err.contains("needs about 19.0 GiB"), "{err}");
        assert!(err.contains("try --encode-only"), "{err}");
        assert!(
            !err.contains("--dtype bf16"),
            "bf16 alone would not fit: {err}"
        );
        let err = plan.check(2 * gb).unwrap_err().to_string();
        assert!(
            err.contains("even --encode-only and --dtype bf16 would not be enough"),
            "{err}"
        );
    }
}
