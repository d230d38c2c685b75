//! The one error type of the model layer.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model package.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file of the package (or an image) could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// `model.json` is missing, malformed or inconsistent.
    #[error("invalid model manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// No package of that name or path exists.
    #[error("model package '{name}' not found (looked in: {searched})")]
    PackageNotFound {
        /// The name or path asked for.
        name: String,
        /// Where the engine looked.
        searched: String,
    },
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime library: {0}")]
    Runtime(String),
    /// An ONNX Runtime call failed.
    #[error("ONNX Runtime: {context}: {message}")]
    Ort {
        /// What the engine was doing.
        context: String,
        /// The runtime's message.
        message: String,
    },
    /// A requested execution provider is not available.
    #[error("execution provider: {0}")]
    Device(String),
    /// The tokenizer file could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A graph produced outputs that do not match the manifest.
    #[error("graph output '{name}': {message}")]
    GraphOutput {
        /// The output tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An image could not be decoded.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// An image exceeds the configured pixel limits (decompression-bomb guard).
    #[error("image is {width}x{height} pixels, over the limit of {limit} pixels (raise --max-pixels to accept it)")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The configured limit in pixels.
        limit: u64,
    },
    /// A path that should be an image file is something else (a FIFO, a device, a folder, a
    /// symbolic link where none is followed).
    #[error("{path} is {kind}, not a regular image file: skipped")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Invalid argument from the caller.
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
    /// Wraps an ONNX Runtime error with what the engine was doing.
    pub fn ort(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        ModelError::Ort {
            context: context.into(),
            message: err.to_string(),
        }
    }
}

/// Result alias of the model layer.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
