//! Spotter's offline indexer: turns image archives into a persistent object index.
//!
//! - [`walk`]: which files of an archive are images;
//! - [`relpath`]: paths relative to a root, kept byte for byte;
//! - [`metadata`]: capture time, camera and GPS position from a photo's EXIF block;
//! - [`pipeline`]: one indexing run (decode, model, write), incremental and crash-safe;
//! - [`store`]: the sled database, the source of truth;
//! - [`vectors`]: the vector index interface and its embedded HNSW implementation;
//! - [`ivf`] and [`quant`]: the quantised embedded engine (the default) and its int8 codes;
//! - [`backend`]: which vector engine an index uses (embedded or Milvus) and `--shard I/N`;
//! - `milvus` (cargo feature `milvus`): the vector index on a Milvus collection;
//! - [`index`]: an open index (store + vectors, reconciled at open), stats, compaction.

pub mod backend;
pub mod error;
pub mod index;
pub mod ivf;
pub mod metadata;
#[cfg(feature = "milvus")]
pub mod milvus;
pub mod pipeline;
pub mod quant;
pub mod records;
pub mod relpath;
pub(crate) mod store;
#[cfg(test)]
mod test_support;
pub mod vectors;
pub mod walk;

pub use backend::{BackendConfig, Shard, VectorBackend};
pub use error::{IndexError, Result};
pub use index::{
    EmbeddedEngine, HitRecord, ImageInfo, Index, IndexSettings, IndexStats, PhotoStats, RootProblem,
};
pub use metadata::{PhotoInfo, PhotoMetadata, TimeSource};
pub use pipeline::{run, Failure, IndexRequest, NoProgress, Progress, RunReport};
pub use relpath::RelPath;
pub use vectors::{HnswParams, VectorEntry, VectorIndex};
