//! The one error type of the `spotter` crate (CLI and, later, the server).

/// Errors surfaced to users of the `spotter` binary.
#[derive(Debug, thiserror::Error)]
pub enum SpotterError {
    /// The model layer failed.
    #[error(transparent)]
    Model(#[from] spotter_model::ModelError),
    /// The index failed.
    #[error(transparent)]
    Index(spotter_indexer::IndexError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Bad command-line or request input.
    #[error("{0}")]
    Usage(String),
    /// A request was cancelled (it timed out or its client went away).
    #[error("the request was cancelled: it took longer than the server's request timeout")]
    Cancelled,
    /// The server is at its limit of concurrent work of this kind; retry shortly.
    #[error("{0}")]
    Busy(String),
    /// Something inside Spotter failed that the caller could not have caused.
    #[error("internal error: {0}")]
    Internal(String),
    /// The server that holds the index (see `served`) could not be reached or sent an answer
    /// that is not JSON.
    #[error("cannot talk to the Spotter server at {url}: {source}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// What went wrong.
        #[source]
        source: Box<ureq::Error>,
    },
    /// An id that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An image could not be encoded.
    #[error("cannot write image {path}: {message}")]
    Encode {
        /// The output file.
        path: std::path::PathBuf,
        /// The encoder's message.
        message: String,
    },
}

/// Result alias of the `spotter` crate.
pub type Result<T, E = SpotterError> = std::result::Result<T, E>;
