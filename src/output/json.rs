//! The machine-readable views: one pretty JSON document, or one compact JSON object per line.

use serde::Serialize;
use std::io::{self, Write};

/// One pretty-printed JSON document and a newline.
pub fn write_json<T: Serialize>(w: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, value).map_err(io::Error::from)?;
    writeln!(w)
}

/// One compact JSON object on its own line.
pub fn write_jsonl_line<T: Serialize>(w: &mut dyn Write, line: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *w, line).map_err(io::Error::from)?;
    writeln!(w)
}
