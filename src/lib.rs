//! Spotter: a self-hosted search engine for objects in image archives.
//!
//! This crate holds the `spotter` command line, the query language, the search engine and the
//! HTTP server; the model layer is `spotter-model`, the indexer `spotter-indexer`.

pub mod cli;
pub mod draw;
pub mod engine;
pub mod error;
pub mod eval;
pub mod image_query;
pub mod jobs;
pub mod lru;
pub mod query;
pub mod served;
pub mod server;
pub mod text_cache;
pub mod together;
pub mod watch;

pub use error::{Result, SpotterError};
