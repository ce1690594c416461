//! Neuronpedia's bulk export: the S3 listing of an SAE's explanation batches and the batches
//! themselves (gzipped JSONL, one explanation per line), parsed as a stream.
//!
//! Layout (Neuronpedia's `utils/neuronpedia-utils/neuronpedia_utils/export-data.py`):
//! `v1/{modelId}/{saeId}/explanations/batch-{N}.jsonl.gz`; each line holds `modelId`, `layer`
//! (the SAE id), `index` (a string), `description`, `typeName`, `explanationModelName`, and a
//! 256-d `embedding` that gemscope skips without keeping.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};

/// One object of an S3 `ListObjectsV2` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
}

/// One page of an S3 `ListObjectsV2` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingPage {
    pub objects: Vec<ListedObject>,
    /// Set when the listing continues on another page (`continuation-token`).
    pub next: Option<String>,
}

/// Parses a `ListBucketResult` document.
pub fn parse_listing(xml: &str) -> Result<ListingPage> {
    let doc = roxmltree::Document::parse(xml).context("the listing is not XML")?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListBucketResult" {
        bail!(
            "the listing is a <{}> document, not an S3 ListBucketResult",
            root.tag_name().name()
        );
    }
    let child_text = |node: roxmltree::Node, name: &str| {
        node.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::trim)
            .map(str::to_string)
    };
    let mut objects = Vec::new();
    for node in root
        .children()
        .filter(|c| c.tag_name().name() == "Contents")
    {
        let key = child_text(node, "Key").context("a listed object has no <Key>")?;
        let size = child_text(node, "Size")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("listed object {key} has no valid <Size>"))?;
        objects.push(ListedObject { key, size });
    }
    let truncated = child_text(root, "IsTruncated").is_some_and(|t| t == "true");
    let next = if truncated {
        Some(
            child_text(root, "NextContinuationToken")
                .context("the listing is truncated but names no NextContinuationToken")?,
        )
    } else {
        None
    };
    Ok(ListingPage { objects, next })
}

/// `N` of a key ending in `batch-N.jsonl.gz`.
pub fn batch_number(key: &str) -> Option<u32> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix("batch-")?
        .strip_suffix(".jsonl.gz")?
        .parse()
        .ok()
}

#[derive(Deserialize)]
struct ExportLine {
    index: IndexValue,
    #[serde(default)]
    description: Option<String>,
}

/// The export writes `index` as a string; a number is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum IndexValue {
    Text(String),
    Number(u64),
}

/// The explanations of one batch, in the order of its lines, and what was skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParsedBatch {
    /// `(feature, description)` in line order.
    pub explanations: Vec<(u32, String)>,
    /// Lines that were not a JSON object with an `index`.
    pub not_json: usize,
    /// Explanations of a feature the SAE does not have.
    pub out_of_range: usize,
}

/// Reads a gzipped JSONL batch. Lines that are not JSON, have no usable index, or name a feature
/// at or past `d_sae` are counted and skipped; a damaged gzip stream (truncated, bad checksum)
/// is an error.
pub fn parse_batch(gzipped: impl Read, d_sae: Option<usize>) -> Result<ParsedBatch> {
    let reader = BufReader::new(flate2::read::MultiGzDecoder::new(gzipped));
    let mut batch = ParsedBatch::default();
    for line in reader.split(b'\n') {
        let line = line.context("the gzip stream is damaged or cut short")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(parsed) = serde_json::from_slice::<ExportLine>(&line) else {
            batch.not_json += 1;
            continue;
        };
        let index = match parsed.index {
            IndexValue::Text(text) => text.trim().parse::<u64>().ok(),
            IndexValue::Number(n) => Some(n),
        };
        let Some(index) = index else {
            batch.not_json += 1;
            continue;
        };
        if d_sae.is_some_and(|d| index >= d as u64) || index > u32::MAX as u64 {
            batch.out_of_range += 1;
            continue;
        }
        let description = parsed.description.unwrap_or_default();
        let description = description.trim();
        if !description.is_empty() {
            batch
                .explanations
                .push((index as u32, description.to_string()));
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(text: &str) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn listings_parse_with_sizes_and_continuation() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Prefix>v1/m/s/explanations/</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>
<NextContinuationToken>tok</NextContinuationToken>
<Contents><Key>v1/m/s/explanations/batch-1.jsonl.gz</Key><Size>10</Size></Contents>
<Contents><Key>v1/m/s/explanations/batch-0.jsonl.gz</Key><Size>7</Size></Contents>
</ListBucketResult>"#;
        let page = parse_listing(xml).unwrap();
        assert_eq!(page.objects.len(), 2);
        assert_eq!(page.objects[1].size, 7);
        assert_eq!(page.next.as_deref(), Some("tok"));
        assert_eq!(batch_number(&page.objects[0].key), Some(1));
        assert_eq!(batch_number("v1/x/batch-x.jsonl.gz"), None);
        assert!(parse_listing("<Error><Code>AccessDenied</Code></Error>").is_err());
        assert!(parse_listing("not xml").is_err());
    }

    #[test]
    fn batches_keep_order_and_count_what_they_skip() {
        let text = concat!(
            r#"{"modelId":"m","layer":"s","index":"3","description":" time travel ","embedding":[0.1,0.2]}"#,
            "\n",
            "not json\n\n",
            r#"{"index":"99999","description":"outside"}"#,
            "\n",
            r#"{"index":7,"description":"seven"}"#,
            "\n",
            r#"{"index":"3","description":"again"}"#,
            "\n",
            r#"{"index":"x","description":"bad index"}"#,
        );
        let batch = parse_batch(&gzip(text)[..], Some(16384)).unwrap();
        assert_eq!(
            batch.explanations,
            vec![
                (3, "time travel".to_string()),
                (7, "seven".to_string()),
                (3, "again".to_string())
            ]
        );
        assert_eq!((batch.not_json, batch.out_of_range), (2, 1));

        let whole = gzip(text);
        let err = parse_batch(&whole[..whole.len() / 2], None).unwrap_err();
        assert!(format!("{err:#}").contains("cut short"), "{err:#}");
    }
}
