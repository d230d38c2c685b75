//! Spotter indexer.
pub mod error;
pub mod records;
pub mod store;
pub mod vectors;
