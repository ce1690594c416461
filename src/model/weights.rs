//! Checkpoint weights: safetensors shards, mapped for their headers, embedding rows and the
//! matrices read in place, read tensor by tensor otherwise.
//!
//! An f32 matrix of an f32 CPU model is not copied at all: [`MappedWeights::matrix`] hands out a
//! [`MappedMatrix`] that the matrix kernels read straight from the page cache. Any other tensor
//! is read (and converted to the compute dtype) when a block is built: with `pread` straight into
//! the tensor's own buffer on Unix (`system::read_values_at`), which copies from the page cache at
//! memcpy speed, where faulting in mapped pages ran at a third of it; elsewhere by copying out of
//! the map and handing its pages back (`MADV_DONTNEED`). Either way resident memory holds only the
//! tensors alive now. [`MappedWeights::uncached`] tells which pages of a block are not in the page
//! cache, and [`MappedWeights::read_into_cache`] pulls them in from disk (for a reader thread that
//! runs ahead of compute). Embedding rows are gathered without reading the whole matrix.

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Result, Shape, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

struct Shard {
    path: PathBuf,
    file: std::fs::File,
    mmap: Mmap,
}

#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the shard's map.
    start: usize,
    end: usize,
}

/// The tensors of one or more safetensors files.
pub struct MappedWeights {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
}

fn candle_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    Some(match dtype {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F16 => DType::F16,
        _ => return None,
    })
}

impl MappedWeights {
    /// Maps every file and reads (and validates) its header; no tensor data is read yet.
    pub fn open(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            // Safety: mapped read-only; gemscope never writes to weight files. A file truncated
            // by another process while mapped would fault, as with any mmap-based loader.
            let mmap = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            let tensors = safetensors::SafeTensors::deserialize(&mmap)
                .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in tensors.tensors() {
                let Some(dtype) = candle_dtype(view.dtype()) else {
                    bail!("{}: tensor {name} has dtype {:?}; only F32, BF16 and F16 weights are supported", path.display(), view.dtype());
                };
                let start = view.data().as_ptr() as usize - base;
                let entry = Entry {
                    shard: index,
                    dtype,
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                };
                ensure!(
                    entries.insert(name.clone(), entry).is_none(),
                    "tensor {name} appears in more than one weight file"
                );
            }
            shards.push(Shard {
                path: path.clone(),
                file,
                mmap,
            });
        }
        Ok(Self { shards, entries })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| {
            let files: Vec<String> = self
                .shards
                .iter()
                .map(|s| s.path.display().to_string())
                .collect();
            candle_core::Error::Msg(format!(
                "tensor {name} is missing from the weights ({})",
                files.join(", ")
            ))
        })
    }

    /// Releases the process's hold on mapped pages already copied out; the page cache keeps them.
    fn release(&self, shard: usize, start: usize, len: usize) {
        // Safety: the range lies in a read-only file mapping and nothing borrows it any more (the
        // bytes were copied); later reads simply fault the pages back in from the file.
        let _ = unsafe {
            self.shards[shard]
                .mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
        };
    }

    /// Reads tensor `name` out of its shard, as `dtype` on `device`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let tensor = self.read_entry(entry)?;
        tensor.to_dtype(dtype)?.to_device(device)
    }

    /// The tensor's bytes, read with `pread` into a buffer of its own dtype (no second copy).
    #[cfg(unix)]
    fn read_entry(&self, entry: &Entry) -> Result<Tensor> {
        fn read<T: candle_core::WithDType + crate::system::PlainValue>(
            file: &std::fs::File,
            entry: &Entry,
        ) -> Result<Tensor> {
            let count = entry.shape.iter().product::<usize>();
            if count * std::mem::size_of::<T>() != entry.end - entry.start {
                candle_core::bail!("tensor byte length does not match its shape");
            }
            let values = crate::system::read_values_at::<T>(file, entry.start as u64, count)
                .map_err(candle_core::Error::wrap)?;
            Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu)
        }
        // `start` is an offset in the map, which covers the whole file from byte 0.
        let file = &self.shards[entry.shard].file;
        match entry.dtype {
            DType::F32 => read::<f32>(file, entry),
            DType::BF16 => read::<half::bf16>(file, entry),
            DType::F16 => read::<half::f16>(file, entry),
            other => candle_core::bail!("unsupported weight dtype {other:?}"),
        }
    }

    #[cfg(not(unix))]
    fn read_entry(&self, entry: &Entry) -> Result<Tensor> {
        let bytes = &self.shards[entry.shard].mmap[entry.start..entry.end];
        let tensor = Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, &Device::Cpu)?;
        self.release(entry.shard, entry.start, entry.end - entry.start);
        Ok(tensor)
    }

    /// The parts of tensors `names` whose pages are not in the page cache (`mincore` on the map),
    /// as maximal runs of missing pages. Names that are absent are skipped; where residency
    /// cannot be told, nothing is reported missing.
    ///
    /// Why runs, not a yes/no per block: on the VMs this is measured on, the host trims a few
    /// pages of a warm page cache every second, so most blocks of a "warm" checkpoint miss a few
    /// pages; reading only those keeps a warm run warm.
    pub fn uncached<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<MissingRange> {
        let mut missing = Vec::new();
        for name in names {
            if let Some(e) = self.entries.get(name) {
                let map = &self.shards[e.shard].mmap;
                for (start, end) in uncached_runs(map, e.start, e.end - e.start) {
                    missing.push(MissingRange {
                        shard: e.shard,
                        start,
                        end,
                    });
                }
            }
        }
        missing
    }

    /// Reads `ranges` from disk into the page cache and waits for it (`pread` through a small
    /// scratch buffer), so that using them afterwards costs no disk wait. For a thread that reads
    /// ahead while another computes; errors are left for the real read to report.
    #[cfg(unix)]
    pub fn read_into_cache(&self, ranges: &[MissingRange]) {
        use std::os::unix::fs::FileExt;
        let mut scratch = vec![0u8; 8 << 20];
        for range in ranges {
            let file = &self.shards[range.shard].file;
            let mut at = range.start;
            while at < range.end {
                let n = scratch.len().min(range.end - at);
                match file.read_at(&mut scratch[..n], at as u64) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => at += read,
                }
            }
        }
    }

    /// Elsewhere, asks the kernel to read `ranges` in the background (`MADV_WILLNEED`).
    #[cfg(not(unix))]
    pub fn read_into_cache(&self, ranges: &[MissingRange]) {
        for range in ranges {
            let _ = self.shards[range.shard].mmap.advise_range(
                memmap2::Advice::WillNeed,
                range.start,
                range.end - range.start,
            );
        }
    }

    /// Rows `start..start + len` of the 2-D tensor `name`, copied out and their mapped pages
    /// released: a large matrix read in slices never sits in memory whole.
    pub fn load_row_range(
        &self,
        name: &str,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let [n_rows, cols] = entry.shape[..] else {
            candle_core::bail!("{name} is not a matrix: shape {:?}", entry.shape);
        };
        if start + len > n_rows {
            candle_core::bail!(
                "rows {start}..{} of {name} do not exist ({n_rows} rows)",
                start + len
            );
        }
        let row_bytes = cols * entry.dtype.size_in_bytes();
        let (from, to) = (
            entry.start + start * row_bytes,
            entry.start + (start + len) * row_bytes,
        );
        let bytes = &self.shards[entry.shard].mmap[from..to];
        let tensor = Tensor::from_raw_buffer(bytes, entry.dtype, &[len, cols], &Device::Cpu)?;
        self.release(entry.shard, from, to - from);
        tensor.to_dtype(dtype)?.to_device(device)
    }

    /// Rows `rows` of the 2-D tensor `name` (`[rows.len(), cols]`), reading only those rows.
    pub fn load_rows(
        &self,
        name: &str,
        rows: &[u32],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let [n_rows, cols] = entry.shape[..] else {
            candle_core::bail!("{name} is not a matrix: shape {:?}", entry.shape);
        };
        let row_bytes = cols * entry.dtype.size_in_bytes();
        let map = &self.shards[entry.shard].mmap;
        let mut gathered = Vec::with_capacity(rows.len() * row_bytes);
        for &row in rows {
            let row = row as usize;
            if row >= n_rows {
                candle_core::bail!(
                    "token id {row} is outside the embedding matrix ({n_rows} rows)"
                );
            }
            let start = entry.start + row * row_bytes;
            gathered.extend_from_slice(&map[start..start + row_bytes]);
        }
        let tensor =
            Tensor::from_raw_buffer(&gathered, entry.dtype, &[rows.len(), cols], &Device::Cpu)?;
        tensor.to_dtype(dtype)?.to_device(device)
    }
}

/// An f32 matrix `[rows, cols]` that stays in the mapped checkpoint: matrix kernels read it in
/// place (`model::in_place`), so a block costs no copy out of the page cache. Dropping it hands
/// its mapped pages back (the page cache keeps them), so that resident memory holds only the
/// matrices alive now, as with copied tensors.
pub struct MappedMatrix {
    weights: Arc<MappedWeights>,
    shard: usize,
    start: usize,
    rows: usize,
    cols: usize,
}

impl MappedMatrix {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, row-major.
    pub fn values(&self) -> &[f32] {
        let bytes = &self.weights.shards[self.shard].mmap[self.start..];
        // Safety: `MappedWeights::matrix` checked that `rows * cols` f32 values lie in the map
        // from `start`, at an address aligned for f32; the map is read-only and lives as long as
        // `self.weights`. Any bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, self.rows * self.cols) }
    }
}

impl Drop for MappedMatrix {
    fn drop(&mut self) {
        self.weights
            .release(self.shard, self.start, std::mem::size_of_val(self.values()));
    }
}

impl std::fmt::Debug for MappedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedMatrix")
            .field("path", &self.weights.shards[self.shard].path)
            .field("start", &self.start)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl MappedWeights {
    /// Tensor `name` as an f32 matrix read in place, when the file stores it as f32 at an
    /// f32-aligned address; `None` when it must be copied (another dtype, or safetensors put it
    /// at an odd offset). A missing tensor or a wrong shape is an error.
    pub fn matrix(
        self: &Arc<Self>,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<MappedMatrix>> {
        let entry = self.entry(name)?;
        if entry.shape != [rows, cols] {
            candle_core::bail!(
                "tensor {name} has shape {:?}, expected [{rows}, {cols}]",
                entry.shape
            );
        }
        let address = self.shards[entry.shard].mmap.as_ptr() as usize + entry.start;
        if entry.dtype != DType::F32 || !address.is_multiple_of(std::mem::align_of::<f32>()) {
            return Ok(None);
        }
        Ok(Some(MappedMatrix {
            weights: self.clone(),
            shard: entry.shard,
            start: entry.start,
            rows,
            cols,
        }))
    }
}

/// Shares one [`MappedWeights`] between the model and candle's `VarBuilder`.
#[derive(Clone)]
pub struct SharedWeights(pub Arc<MappedWeights>);

impl candle_nn::var_builder::SimpleBackend for SharedWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let entry = self.0.entry(name)?;
        if entry.shape != shape.dims() {
            candle_core::bail!(
                "tensor {name} has shape {:?}, expected {:?}",
                entry.shape,
                shape.dims()
            );
        }
        self.0.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.0.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Byte ranges of a weight file not in the page cache (see [`MappedWeights::uncached`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingRange {
    shard: usize,
    start: usize,
    end: usize,
}

impl MissingRange {
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }
}

/// The runs of pages of `map[offset..offset + len]` that are not resident, as byte ranges clipped
/// to that span.
#[cfg(unix)]
fn uncached_runs(map: &Mmap, offset: usize, len: usize) -> Vec<(usize, usize)> {
    // Safety: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return Vec::new(),
    };
    if len == 0 {
        return Vec::new();
    }
    let first = offset / page * page;
    let span = offset + len - first;
    let mut resident = vec![0u8; span.div_ceil(page)];
    // Safety: `first..first + span` lies within the map (page-aligned start, the map's own pages);
    // mincore writes one byte per page into `resident`, which has room for all of them.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(first) as *mut libc::c_void,
            span,
            resident.as_mut_ptr() as *mut _,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (index, _) in resident.iter().enumerate().filter(|(_, b)| *b & 1 == 0) {
        let start = (first + index * page).max(offset);
        let end = (first + (index + 1) * page).min(offset + len);
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

#[cfg(not(unix))]
fn uncached_runs(_map: &Mmap, _offset: usize, _len: usize) -> Vec<(usize, usize)> {
    Vec::new()
}
