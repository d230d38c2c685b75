//! The one error type of the indexer.

use std::path::PathBuf;

/// Everything that can go wrong while building, opening or searching an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The model layer failed (loading a package, running a graph).
    #[error(transparent)]
    Model(#[from] spotter_model::ModelError),
    /// The sled database failed.
    #[error("index database {path}: {source}")]
    Db {
        /// The database folder.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored record could not be decoded (corruption or a format change).
    #[error("index record {what}: {message}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why it cannot be read.
        message: String,
    },
    /// A record could not be encoded for storage.
    #[error("cannot encode an index record: {0}")]
    Encode(String),
    /// The index was written by another format version or model.
    #[error("{0}")]
    Incompatible(String),
    /// The vector index failed.
    #[error("vector index: {0}")]
    Vectors(String),
    /// Bad input from the caller (globs, roots, parameters).
    #[error("{0}")]
    Invalid(String),
}

impl IndexError {
    /// Wraps a sled error with the database path.
    pub fn db(path: &std::path::Path, source: sled::Error) -> Self {
        IndexError::Db {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias of the indexer.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;
