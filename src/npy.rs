//! Reading numpy `.npy` arrays and `.npz` archives (Gemma Scope's `params.npz`) as f32, safely.
//!
//! Written here rather than taken from a crate so that every malformed input gets a precise error:
//! object arrays (pickles) are refused and never unpickled, sizes are checked against the bytes
//! present before anything is allocated, and members `np.savez` stores uncompressed are read
//! straight from the memory map (they are unaligned, so values are decoded, never cast).

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The element types gemscope reads; floats are widened or narrowed to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F64,
    F16,
    I64,
    I32,
}

impl NpyDtype {
    fn parse(descr: &str) -> Result<Self> {
        // '<' little-endian, '|' not applicable, '=' native (little on every platform we build for).
        // The byte-order mark is one ASCII character; the rest of `descr` may be anything, so it
        // is stripped as a char, never split at a byte index (a fuzzed 'Ē' once panicked here).
        let code = match descr.chars().next() {
            Some('<' | '|' | '=') => &descr[1..],
            Some('>') => bail!("big-endian arrays ({descr}) are not supported"),
            _ => descr,
        };
        Ok(match code {
            "f4" => Self::F32,
            "f8" => Self::F64,
            "f2" => Self::F16,
            "i8" => Self::I64,
            "i4" => Self::I32,
            "O" => bail!(
                "object arrays are refused: they are Python pickles, which gemscope never loads"
            ),
            other => bail!("unsupported dtype {other:?} (expected float32)"),
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
            Self::F16 => 2,
        }
    }
}

/// The parsed header of a `.npy` file and where its data starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

impl NpyHeader {
    pub fn element_count(&self) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .context("array shape overflows")
    }

    /// Parses the magic, version and header dict at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        ensure!(
            bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY",
            "not a .npy array (bad magic)"
        );
        let (header_len, start): (usize, usize) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                ensure!(bytes.len() >= 12, "truncated .npy header");
                (
                    u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                    12,
                )
            }
            v => bail!("unsupported .npy version {v}"),
        };
        let end = start
            .checked_add(header_len)
            .context("npy header length overflows")?;
        ensure!(
            end <= bytes.len(),
            "truncated .npy header ({header_len} bytes declared)"
        );
        let text = std::str::from_utf8(&bytes[start..end]).context(".npy header is not text")?;
        let descr = dict_value(text, "descr")?;
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let fortran = match dict_value(text, "fortran_order")?.trim() {
            "True" => true,
            "False" => false,
            other => bail!("bad fortran_order {other:?} in .npy header"),
        };
        let shape_text = dict_value(text, "shape")?;
        let shape_text = shape_text
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')');
        let shape = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim_end_matches('L')
                    .parse::<usize>()
                    .with_context(|| format!("bad shape entry {s:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dtype: NpyDtype::parse(descr)?,
            fortran_order: fortran,
            shape,
            data_offset: end,
        })
    }
}

/// The text after `'key':` in a Python dict literal, up to the next top-level comma or brace.
fn dict_value<'a>(text: &'a str, key: &str) -> Result<&'a str> {
    let pattern_single = format!("'{key}':");
    let pattern_double = format!("\"{key}\":");
    let at = text
        .find(&pattern_single)
        .map(|i| i + pattern_single.len())
        .or_else(|| text.find(&pattern_double).map(|i| i + pattern_double.len()))
        .with_context(|| format!(".npy header has no {key:?}"))?;
    let rest = &text[at..];
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Ok(&rest[..i]),
            _ => {}
        }
    }
    bail!("unterminated {key:?} in .npy header")
}

/// A dense array in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

fn check_length(header: &NpyHeader, bytes: &[u8]) -> Result<usize> {
    let count = header.element_count()?;
    let needed = count
        .checked_mul(header.dtype.size())
        .context("array size overflows")?;
    let have = bytes.len().saturating_sub(header.data_offset);
    ensure!(
        have >= needed,
        "array data is truncated: shape {:?} needs {needed} bytes, {have} present",
        header.shape
    );
    Ok(count)
}

/// Decodes `.npy` bytes into f32 values in C order (Fortran-ordered arrays are reordered).
pub fn decode_f32(bytes: &[u8]) -> Result<Array<f32>> {
    let header = NpyHeader::parse(bytes)?;
    let count = check_length(&header, bytes)?;
    let data = &bytes[header.data_offset..];
    let size = header.dtype.size();
    let values: Vec<f32> = match header.dtype {
        NpyDtype::F32 => {
            // Untouched zeroed pages, advised huge, then one pass that writes each value once.
            let mut values = vec![0f32; count];
            crate::system::advise_huge_pages(values.as_mut_ptr() as *mut u8, count * 4);
            for (v, c) in values.iter_mut().zip(data[..count * size].chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            values
        }
        NpyDtype::F64 => data[..count * size]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        NpyDtype::F16 => data[..count * size]
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        NpyDtype::I64 | NpyDtype::I32 => bail!("integer array where float32 weights were expected"),
    };
    let data = if header.fortran_order {
        fortran_to_c(&header.shape, values)
    } else {
        values
    };
    Ok(Array {
        shape: header.shape,
        data,
    })
}

/// One element of a float dtype, decoded from little-endian bytes. A trait (not a function
/// pointer) so that the transposing loop is compiled once per dtype with the read inlined.
trait LeFloat {
    const SIZE: usize;
    fn read(bytes: &[u8]) -> f32;
}

struct F32Le;
struct F64Le;
struct F16Le;

impl LeFloat for F32Le {
    const SIZE: usize = 4;
    #[inline(always)]
    fn read(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl LeFloat for F64Le {
    const SIZE: usize = 8;
    #[inline(always)]
    fn read(b: &[u8]) -> f32 {
        f64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as f32
    }
}

impl LeFloat for F16Le {
    const SIZE: usize = 2;
    #[inline(always)]
    fn read(b: &[u8]) -> f32 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f32()
    }
}

/// Rows `r0..r1` of a C-ordered `[rows, cols]` array, written transposed into `out`
/// (`[cols, rows]`), the columns split into one band per thread: each thread writes a disjoint,
/// contiguous part of `out`. Tiles of 64 x 64 keep both sides in cache.
fn transpose_rows<T: LeFloat>(
    data: &[u8],
    (rows, cols): (usize, usize),
    (r0, r1): (usize, usize),
    out: &mut [f32],
    threads: usize,
) {
    const TILE: usize = 64;
    let band = cols.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (b, out_band) in out.chunks_mut(band * rows).enumerate() {
            let c_start = b * band;
            let c_end = (c_start + band).min(cols);
            scope.spawn(move || {
                for c0 in (c_start..c_end).step_by(TILE) {
                    let c1 = (c0 + TILE).min(c_end);
                    for r in r0..r1 {
                        let row = &data[r * cols * T::SIZE..(r + 1) * cols * T::SIZE];
                        for c in c0..c1 {
                            out_band[(c - c_start) * rows + r] =
                                T::read(&row[c * T::SIZE..(c + 1) * T::SIZE]);
                        }
                    }
                }
            });
        }
    });
}

/// Decodes a 2-D float `.npy` array `[rows, cols]` straight into its transpose `[cols, rows]`
/// (C order), in one allocation, on every core. `release(offset, len)` is told each byte range
/// of `bytes` that has been consumed, so a caller reading from a memory map can hand those pages
/// back.
pub fn decode_f32_transposed(
    bytes: &[u8],
    release: &mut dyn FnMut(usize, usize),
) -> Result<Array<f32>> {
    let header = NpyHeader::parse(bytes)?;
    let count = check_length(&header, bytes)?;
    let [rows, cols] = header.shape[..] else {
        bail!("expected a 2-D array, got shape {:?}", header.shape);
    };
    if matches!(header.dtype, NpyDtype::I64 | NpyDtype::I32) {
        bail!("integer array where float32 weights were expected");
    }
    let data = &bytes[header.data_offset..header.data_offset + count * header.dtype.size()];
    if header.fortran_order {
        // Column-major [rows, cols] is already row-major [cols, rows]: decode in file order.
        let out: Vec<f32> = match header.dtype {
            NpyDtype::F32 => data.chunks_exact(4).map(F32Le::read).collect(),
            NpyDtype::F64 => data.chunks_exact(8).map(F64Le::read).collect(),
            NpyDtype::F16 => data.chunks_exact(2).map(F16Le::read).collect(),
            NpyDtype::I64 | NpyDtype::I32 => unreachable!("refused above"),
        };
        release(header.data_offset, count * header.dtype.size());
        return Ok(Array {
            shape: vec![cols, rows],
            data: out,
        });
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Zeroed pages come from the kernel untouched until written, so this costs no extra pass; as
    // huge pages where the kernel allows, so that the first writes take few page faults.
    let mut out = vec![0f32; count];
    crate::system::advise_huge_pages(out.as_mut_ptr() as *mut u8, count * 4);
    // Row blocks of 256: the mapped pages of each are released as soon as it is copied.
    const BLOCK: usize = 256;
    let row_bytes = cols * header.dtype.size();
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        let shape = (rows, cols);
        match header.dtype {
            NpyDtype::F32 => transpose_rows::<F32Le>(data, shape, (r0, r1), &mut out, threads),
            NpyDtype::F64 => transpose_rows::<F64Le>(data, shape, (r0, r1), &mut out, threads),
            NpyDtype::F16 => transpose_rows::<F16Le>(data, shape, (r0, r1), &mut out, threads),
            NpyDtype::I64 | NpyDtype::I32 => unreachable!("refused above"),
        }
        release(header.data_offset + r0 * row_bytes, (r1 - r0) * row_bytes);
    }
    Ok(Array {
        shape: vec![cols, rows],
        data: out,
    })
}

/// Reorders column-major values to row-major for any rank.
fn fortran_to_c(shape: &[usize], values: Vec<f32>) -> Vec<f32> {
    if shape.len() < 2 {
        return values;
    }
    let count = values.len();
    let mut out = vec![0f32; count];
    // Fortran strides: dimension 0 varies fastest.
    let mut f_strides = vec![1usize; shape.len()];
    for d in 1..shape.len() {
        f_strides[d] = f_strides[d - 1] * shape[d - 1];
    }
    let mut index = vec![0usize; shape.len()];
    for slot in out.iter_mut() {
        let src: usize = index.iter().zip(&f_strides).map(|(i, s)| i * s).sum();
        *slot = values[src];
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// A `.npz` archive, memory-mapped; members are read on demand by name (without `.npy`).
pub struct NpzArchive {
    path: PathBuf,
    mmap: Mmap,
    members: BTreeMap<String, Member>,
}

#[derive(Debug, Clone)]
struct Member {
    zip_index: usize,
    stored: bool,
    data_start: u64,
    size: u64,
}

/// The largest member we will inflate: a declared size beyond this is a zip bomb, not an SAE.
const MAX_INFLATED_MEMBER: u64 = 64 << 30;

impl NpzArchive {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // Safety: the file is opened read-only; gemscope never writes to files it maps.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&mmap[..]))
            .with_context(|| format!("{} is not a valid .npz (zip) archive", path.display()))?;
        let mut members = BTreeMap::new();
        for i in 0..zip.len() {
            let entry = zip
                .by_index_raw(i)
                .with_context(|| format!("{}: bad zip entry {i}", path.display()))?;
            let name = entry
                .name()
                .with_context(|| format!("{}: bad member name in entry {i}", path.display()))?
                .to_string();
            let Some(array_name) = name.strip_suffix(".npy") else {
                bail!("{}: member {name:?} is not a .npy array", path.display());
            };
            let stored = entry.compression() == zip::CompressionMethod::Stored;
            let size = entry.size();
            ensure!(
                size <= MAX_INFLATED_MEMBER,
                "{}: member {name:?} declares {size} bytes",
                path.display()
            );
            let data_start = entry
                .data_start()
                .with_context(|| format!("{}: member {name:?} has no data", path.display()))?;
            if stored {
                let end = data_start
                    .checked_add(size)
                    .context("zip member offset overflows")?;
                ensure!(
                    end <= mmap.len() as u64 && entry.compressed_size() == size,
                    "{}: member {name:?} is truncated",
                    path.display()
                );
            }
            members.insert(
                array_name.to_string(),
                Member {
                    zip_index: i,
                    stored,
                    data_start,
                    size,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            members,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    fn member(&self, name: &str) -> Result<&Member> {
        self.members.get(name).with_context(|| {
            let have: Vec<_> = self.names().collect();
            format!(
                "{} has no array {name:?} (it has {})",
                self.path.display(),
                have.join(", ")
            )
        })
    }

    /// The first `limit` bytes of a member's `.npy` data (all of it when `limit` is `None`):
    /// borrowed from the map when stored, inflated otherwise. A compressed member is inflated only
    /// if its declared size fits in memory: a zip bomb is refused before anything is allocated.
    fn member_bytes_up_to(&self, name: &str, limit: Option<u64>) -> Result<Cow<'_, [u8]>> {
        let member = self.member(name)?;
        let wanted = limit.map_or(member.size, |l| l.min(member.size));
        if member.stored {
            let start = member.data_start as usize;
            return Ok(Cow::Borrowed(&self.mmap[start..start + wanted as usize]));
        }
        if let Some(available) = crate::system::available_memory() {
            ensure!(
                wanted <= available,
                "{}: array {name:?} declares {wanted} bytes uncompressed, more than the {available} bytes of memory available; refusing to inflate it",
                self.path.display()
            );
        }
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&self.mmap[..]))?;
        let mut entry = zip.by_index(member.zip_index)?;
        // Reserve no more than 64 MiB up front: the declared size is only a claim until inflated.
        let mut out = Vec::with_capacity(wanted.min(64 << 20) as usize);
        entry
            .by_ref()
            .take(wanted)
            .read_to_end(&mut out)
            .with_context(|| format!("{}: cannot inflate {name:?}", self.path.display()))?;
        Ok(Cow::Owned(out))
    }

    fn member_bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.member_bytes_up_to(name, None)
    }

    /// The header of one member, without decoding its data.
    pub fn header(&self, name: &str) -> Result<NpyHeader> {
        // Headers are padded to a few hundred bytes; 64 KiB covers any numpy writes.
        let bytes = self.member_bytes_up_to(name, Some(64 << 10))?;
        NpyHeader::parse(&bytes).with_context(|| format!("{}: array {name:?}", self.path.display()))
    }

    /// Hands mapped pages of a stored member back to the kernel once their values are copied out.
    fn release(&self, name: &str, offset: usize, len: usize) {
        if let Some(member) = self.members.get(name).filter(|m| m.stored) {
            // Safety: a read-only file mapping whose bytes were copied; re-reading faults them in.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    member.data_start as usize + offset,
                    len,
                )
            };
        }
    }

    pub fn read_f32(&self, name: &str) -> Result<Array<f32>> {
        let bytes = self.member_bytes(name)?;
        let array = decode_f32(&bytes)
            .with_context(|| format!("{}: array {name:?}", self.path.display()))?;
        self.release(name, 0, bytes.len());
        Ok(array)
    }

    /// A 2-D array's transpose, decoded in one allocation (see [`decode_f32_transposed`]).
    pub fn read_f32_transposed(&self, name: &str) -> Result<Array<f32>> {
        let bytes = self.member_bytes(name)?;
        decode_f32_transposed(&bytes, &mut |offset, len| self.release(name, offset, len))
            .with_context(|| format!("{}: array {name:?}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        let mut header = dict.into_bytes();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_c_and_fortran_order_the_same() {
        let c = npy(
            "<f4",
            false,
            "(2, 3)",
            &f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        );
        let f = npy("<f4", true, "(2, 3)", &f32_bytes(&[1., 4., 2., 5., 3., 6.]));
        assert_eq!(decode_f32(&c).unwrap(), decode_f32(&f).unwrap());
        assert_eq!(decode_f32(&c).unwrap().shape, vec![2, 3]);
    }

    #[test]
    fn converts_f64_and_f16() {
        let d: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            decode_f32(&npy("<f8", false, "(2,)", &d)).unwrap().data,
            vec![1.5, -2.0]
        );
        let h: Vec<u8> = [half::f16::from_f32(0.5)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            decode_f32(&npy("<f2", false, "(1,)", &h)).unwrap().data,
            vec![0.5]
        );
    }

    #[test]
    fn refuses_pickles_truncation_and_absurd_shapes() {
        let err = decode_f32(&npy("|O", false, "(1,)", &[0; 8]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pickle"), "{err}");
        let err = decode_f32(&npy("<f4", false, "(4,)", &[0; 8]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = decode_f32(&npy(
            "<f4",
            false,
            "(1152921504606846976, 1152921504606846976)",
            &[],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
        assert!(decode_f32(b"PK\x03\x04 not numpy").is_err());
        assert!(decode_f32(&npy(">f4", false, "(1,)", &[0; 4]))
            .unwrap_err()
            .to_string()
            .contains("big-endian"));
    }

    #[test]
    fn transposed_decode_matches_decode_then_transpose_in_both_orders() {
        let (rows, cols) = (70, 131);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5).collect();
        let c = npy(
            "<f4",
            false,
            &format!("({rows}, {cols})"),
            &f32_bytes(&values),
        );
        let mut released = 0;
        let t = decode_f32_transposed(&c, &mut |_, len| released += len).unwrap();
        assert_eq!(t.shape, vec![cols, rows]);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t.data[c * rows + r], values[r * cols + c]);
            }
        }
        assert_eq!(released, rows * cols * 4, "every byte is released once");
        // The same array stored column-major.
        let fortran: Vec<f32> = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| (r * cols + c) as f32 * 0.5))
            .collect();
        let f = npy(
            "<f4",
            true,
            &format!("({rows}, {cols})"),
            &f32_bytes(&fortran),
        );
        assert_eq!(decode_f32_transposed(&f, &mut |_, _| {}).unwrap(), t);
    }

    #[test]
    fn a_non_ascii_dtype_is_an_error_not_a_panic() {
        // Found by `cargo fuzz run npz`: a descr starting with a multi-byte character.
        let err = decode_f32(&npy("\u{112}f4", false, "(1,)", &[0; 4]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported dtype"), "{err}");
        assert!(decode_f32(&npy("", false, "(1,)", &[0; 4])).is_err());
    }

    #[test]
    fn scalar_shape_is_one_element() {
        let a = decode_f32(&npy("<f4", false, "()", &f32_bytes(&[7.0]))).unwrap();
        assert!(a.shape.is_empty());
        assert_eq!(a.data, vec![7.0]);
    }
}
