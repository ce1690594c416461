//! Checkpoint weights: memory-mapped safetensors shards, read tensor by tensor, pages released after each copy.
//!
//! A tensor is copied (and converted to the compute dtype) when a block is built, and the mapped
//! pages it came from are handed back to the kernel right away (`MADV_DONTNEED`), so resident
//! memory holds only the tensors alive now, not every page ever read. Embedding rows can be
//! gathered without reading the whole matrix.

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Result, Shape, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

struct Shard {
    path: PathBuf,
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

    /// Copies tensor `name` out of its shard, as `dtype` on `device`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let bytes = &self.shards[entry.shard].mmap[entry.start..entry.end];
        let tensor = Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, &Device::Cpu)?;
        self.release(entry.shard, entry.start, entry.end - entry.start);
        tensor.to_dtype(dtype)?.to_device(device)
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
