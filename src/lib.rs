//! Spotter: a self-hosted search engine for objects in image archives.
//!
//! This crate holds the `spotter` command line; the model layer is the `spotter-model` crate.

pub mod cli;
pub mod draw;
pub mod error;

pub use error::{Result, SpotterError};
