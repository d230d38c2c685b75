//! Spotter's offline indexer: turns image archives into a persistent object index.
//!
//! - [`walk`]: which files of an archive are images;
//! - [`pipeline`]: one indexing run (decode, model, write), incremental and crash-safe;
//! - [`store`]: the sled database, the source of truth;
//! - [`vectors`]: the vector index interface and its embedded HNSW implementation;
//! - [`index`]: an open index (store + vectors, reconciled at open), stats, compaction.

pub mod error;
pub mod index;
pub mod pipeline;
pub mod records;
pub mod store;
pub mod vectors;
pub mod walk;

pub use error::{IndexError, Result};
pub use index::{Index, IndexSettings, IndexStats};
pub use pipeline::{run, IndexRequest, NoProgress, Progress, RunReport};
pub use vectors::{HnswParams, VectorIndex};
