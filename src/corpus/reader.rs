//! Corpus readers: plain text (one document per line), JSONL (`--text-field`) and Parquet
//! (`--text-column`, streamed a batch of rows at a time, row group after row group), and `-` for
//! standard input. Each yields records in file order with a running SHA-256 of their content.
//!
//! What happens to a bad record (documented in the README):
//! - skipped and counted: an empty or blank document (`empty`), a line or value that is not
//!   UTF-8 (`not_utf8`), a JSONL object without a string field of that name (`no_text_field`),
//!   a Parquet null (`null`), a document the tokenizer rejects (`tokenizer`, counted by the run);
//! - an error: a JSONL line that is not a JSON object, a Parquet file without that column or
//!   whose column does not hold strings, an unreadable file, a corpus with no records at all, and
//!   a corpus none of whose records is a usable document.

use anyhow::{bail, Context, Result};
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{FileReader, SerializedFileReader};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// How the corpus file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CorpusFormat {
    /// From the extension: `.parquet`, `.jsonl`/`.ndjson`/`.json` (JSON Lines), else text.
    Auto,
    /// One document per line.
    Text,
    /// One JSON object per line; the document is its `--text-field`.
    Jsonl,
    /// A Parquet file (Hugging Face datasets' format); the document is its `--text-column`.
    Parquet,
}

impl CorpusFormat {
    pub fn name(self) -> &'static str {
        match self {
            CorpusFormat::Auto => "auto",
            CorpusFormat::Text => "text",
            CorpusFormat::Jsonl => "jsonl",
            CorpusFormat::Parquet => "parquet",
        }
    }

    /// The format `Auto` means for `path` (`-` is standard input: text).
    pub fn resolve(self, path: &Path) -> CorpusFormat {
        if self != CorpusFormat::Auto {
            return self;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => CorpusFormat::Parquet,
            Some("jsonl" | "ndjson" | "json") => CorpusFormat::Jsonl,
            _ => CorpusFormat::Text,
        }
    }
}

/// Why a record is not a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Empty,
    NotUtf8,
    NoTextField,
    Null,
    Tokenizer,
}

impl Skip {
    /// The key under which the store counts it.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Empty => "empty",
            Skip::NotUtf8 => "not_utf8",
            Skip::NoTextField => "no_text_field",
            Skip::Null => "null",
            Skip::Tokenizer => "tokenizer",
        }
    }
}

/// One record of the corpus: its 0-based index (line or row) and its document, or why it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub index: u64,
    pub text: Result<String, Skip>,
}

/// SHA-256 over every record read: each one as its byte length (u64, little-endian; `u64::MAX`
/// for a Parquet null) followed by its bytes (a line without its `\n`, or the Parquet value).
#[derive(Clone, Default)]
pub struct RecordHasher(Sha256);

impl RecordHasher {
    fn add(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => {
                self.0.update((b.len() as u64).to_le_bytes());
                self.0.update(b);
            }
            None => self.0.update(u64::MAX.to_le_bytes()),
        }
    }

    /// The hex digest of what was read so far (reading can go on).
    pub fn hex(&self) -> String {
        hex(&self.0.clone().finalize())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Raw records of one file layout.
trait RawSource {
    /// The next record's bytes (`None` inside for a null), or `None` at the end.
    fn next_raw(&mut self) -> Result<Option<Option<Vec<u8>>>>;
}

/// Lines of a file or of standard input; a last line without `\n` still counts.
struct Lines {
    reader: Box<dyn BufRead>,
}

impl RawSource for Lines {
    fn next_raw(&mut self) -> Result<Option<Option<Vec<u8>>>> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Ok(Some(Some(line)))
    }
}

/// A Parquet byte-array column, read a batch of rows at a time, row group after row group.
struct ParquetColumn {
    file: SerializedFileReader<File>,
    column: usize,
    optional: bool,
    next_row_group: usize,
    reader: Option<parquet::column::reader::ColumnReaderImpl<parquet::data_type::ByteArrayType>>,
    buffered: VecDeque<Option<Vec<u8>>>,
}

/// Rows decoded at once: bounded memory whatever the row group's size.
const PARQUET_BATCH: usize = 1024;

impl ParquetColumn {
    fn open(path: &Path, name: &str) -> Result<(Self, u64)> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let file = SerializedFileReader::new(file)
            .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
        let schema = file.metadata().file_metadata().schema_descr();
        let columns: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
        let Some(column) = columns.iter().position(|c| c == name) else {
            bail!(
                "{} has no column {name:?} (its columns: {}); choose one with --text-column",
                path.display(),
                columns.join(", ")
            );
        };
        let descr = schema.column(column);
        if descr.physical_type() != parquet::basic::Type::BYTE_ARRAY || descr.max_rep_level() > 0 {
            bail!(
                "column {name:?} of {} holds {}{}, not strings",
                path.display(),
                if descr.max_rep_level() > 0 {
                    "lists of "
                } else {
                    ""
                },
                descr.physical_type()
            );
        }
        let rows = file.metadata().file_metadata().num_rows().max(0) as u64;
        let optional = descr.max_def_level() > 0;
        Ok((
            Self {
                file,
                column,
                optional,
                next_row_group: 0,
                reader: None,
                buffered: VecDeque::new(),
            },
            rows,
        ))
    }

    fn fill(&mut self) -> Result<bool> {
        loop {
            if self.reader.is_none() {
                if self.next_row_group >= self.file.num_row_groups() {
                    return Ok(false);
                }
                let group = self.file.get_row_group(self.next_row_group)?;
                self.next_row_group += 1;
                match group.get_column_reader(self.column)? {
                    ColumnReader::ByteArrayColumnReader(r) => self.reader = Some(r),
                    _ => bail!("the Parquet column is not a byte array"),
                }
            }
            let reader = self.reader.as_mut().expect("set above");
            let mut defs: Vec<i16> = Vec::new();
            let mut values: Vec<ByteArray> = Vec::new();
            let (records, _, _) = reader.read_records(
                PARQUET_BATCH,
                self.optional.then_some(&mut defs),
                None,
                &mut values,
            )?;
            if records == 0 {
                self.reader = None;
                continue;
            }
            let mut values = values.into_iter();
            let presence: Vec<bool> = if self.optional {
                defs.iter().take(records).map(|&level| level > 0).collect()
            } else {
                vec![true; records]
            };
            for present in presence {
                let value = if present {
                    let v = values
                        .next()
                        .context("a Parquet page holds fewer values than rows")?;
                    Some(v.data().to_vec())
                } else {
                    None
                };
                self.buffered.push_back(value);
            }
            return Ok(true);
        }
    }
}

impl RawSource for ParquetColumn {
    fn next_raw(&mut self) -> Result<Option<Option<Vec<u8>>>> {
        if self.buffered.is_empty() && !self.fill()? {
            return Ok(None);
        }
        Ok(self.buffered.pop_front())
    }
}

/// Where the corpus comes from and how to read its documents.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    pub path: PathBuf,
    pub format: CorpusFormat,
    /// The JSONL field or Parquet column holding the text.
    pub field: String,
    pub limit: Option<u64>,
}

impl CorpusSpec {
    pub fn is_stdin(&self) -> bool {
        self.path.as_os_str() == "-"
    }

    fn name(&self) -> String {
        if self.is_stdin() {
            "standard input".to_string()
        } else {
            self.path.display().to_string()
        }
    }
}

/// Records of a corpus in order, with their running hash.
pub struct CorpusReader {
    source: Box<dyn RawSource>,
    format: CorpusFormat,
    field: String,
    name: String,
    next_index: u64,
    limit: Option<u64>,
    hasher: RecordHasher,
    /// Records in the corpus (after `--limit`), when known before reading.
    pub size_hint: Option<u64>,
}

impl CorpusReader {
    pub fn open(spec: &CorpusSpec) -> Result<Self> {
        let format = spec.format.resolve(&spec.path);
        let name = spec.name();
        let (source, size): (Box<dyn RawSource>, Option<u64>) = match format {
            CorpusFormat::Parquet => {
                if spec.is_stdin() {
                    bail!("a Parquet corpus cannot come from standard input: give its path");
                }
                let (column, rows) = ParquetColumn::open(&spec.path, &spec.field)?;
                (Box::new(column), Some(rows))
            }
            _ if spec.is_stdin() => (
                Box::new(Lines {
                    reader: Box::new(BufReader::new(std::io::stdin())),
                }),
                None,
            ),
            _ => {
                let open = || {
                    File::open(&spec.path)
                        .with_context(|| format!("cannot open corpus {}", spec.path.display()))
                };
                let lines = count_lines(open()?)
                    .with_context(|| format!("cannot read corpus {}", spec.path.display()))?;
                (
                    Box::new(Lines {
                        reader: Box::new(BufReader::with_capacity(1 << 20, open()?)),
                    }),
                    Some(lines),
                )
            }
        };
        let size_hint = match (size, spec.limit) {
            (Some(n), Some(limit)) => Some(n.min(limit)),
            (n, _) => n,
        };
        Ok(Self {
            source,
            format,
            field: spec.field.clone(),
            name,
            next_index: 0,
            limit: spec.limit,
            hasher: RecordHasher::default(),
            size_hint,
        })
    }

    pub fn format(&self) -> CorpusFormat {
        self.format
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.next_index
    }

    /// The hash of the records read so far.
    pub fn hasher(&self) -> &RecordHasher {
        &self.hasher
    }

    /// The next record, `None` at the end of the corpus (or of `--limit`).
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.limit.is_some_and(|limit| self.next_index >= limit) {
            return Ok(None);
        }
        let index = self.next_index;
        let raw = self
            .source
            .next_raw()
            .with_context(|| format!("cannot read record {} of {}", index + 1, self.name))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        self.hasher.add(raw.as_deref());
        self.next_index += 1;
        let text = self
            .document(raw)
            .with_context(|| format!("{}, line {}", self.name, index + 1))?;
        Ok(Some(Record { index, text }))
    }

    fn document(&self, raw: Option<Vec<u8>>) -> Result<Result<String, Skip>> {
        let Some(mut bytes) = raw else {
            return Ok(Err(Skip::Null));
        };
        if self.format != CorpusFormat::Parquet && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let Ok(text) = String::from_utf8(bytes) else {
            return Ok(Err(Skip::NotUtf8));
        };
        if text.trim().is_empty() {
            return Ok(Err(Skip::Empty));
        }
        if self.format != CorpusFormat::Jsonl {
            return Ok(Ok(text));
        }
        let value: serde_json::Value =
            serde_json::from_str(&text).context("not a JSON object (the corpus is JSONL)")?;
        let serde_json::Value::Object(object) = value else {
            bail!("not a JSON object (the corpus is JSONL)");
        };
        Ok(match object.get(&self.field) {
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Err(Skip::Empty),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => Err(Skip::NoTextField),
        })
    }
}

fn count_lines(file: File) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut lines, mut last) = (0u64, b'\n');
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(format: CorpusFormat, bytes: &[u8]) -> Result<Vec<Record>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.txt");
        std::fs::write(&path, bytes)?;
        let spec = CorpusSpec {
            path,
            format,
            field: "text".into(),
            limit: None,
        };
        let mut reader = CorpusReader::open(&spec)?;
        let mut out = Vec::new();
        while let Some(r) = reader.next_record()? {
            out.push(r);
        }
        assert_eq!(reader.size_hint, Some(out.len() as u64));
        Ok(out)
    }

    #[test]
    fn text_lines_keep_their_index_and_skip_blank_and_invalid_ones() {
        let records = read_all(CorpusFormat::Text, b"one\r\n\n \xff\xfe\nlast").unwrap();
        let texts: Vec<_> = records.iter().map(|r| (r.index, r.text.clone())).collect();
        assert_eq!(
            texts,
            vec![
                (0, Ok("one".to_string())),
                (1, Err(Skip::Empty)),
                (2, Err(Skip::NotUtf8)),
                (3, Ok("last".to_string())),
            ]
        );
    }

    #[test]
    fn jsonl_reads_the_field_and_rejects_non_objects() {
        let records = read_all(
            CorpusFormat::Jsonl,
            b"{\"text\":\"a\"}\n{\"t\":1}\n{\"text\":null}\n",
        )
        .unwrap();
        let texts: Vec<_> = records.into_iter().map(|r| r.text).collect();
        assert_eq!(
            texts,
            vec![
                Ok("a".to_string()),
                Err(Skip::NoTextField),
                Err(Skip::NoTextField)
            ]
        );
        let err = read_all(CorpusFormat::Jsonl, b"{\"text\":\"a\"}\n[1]\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }
}
