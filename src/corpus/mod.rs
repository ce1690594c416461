//! Max-activating examples over a corpus: readers (text, JSONL, Parquet), the bounded per-feature
//! store and its file, shards of a run, merging partial stores, and the job that fills a store
//! (with checkpoints).
//!
//! Reading a store: [`Store::open`] then [`Store::feature`], or [`read_feature`] for one feature
//! without loading the others.

pub mod merge;
pub mod reader;
pub mod run;
pub mod shard;
pub mod store;

pub use reader::{CorpusFormat, CorpusReader, CorpusSpec};
pub use shard::Shard;
pub use store::{read_feature, read_store_header, RunIdentity, Store, StoreHeader};
