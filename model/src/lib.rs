//! Spotter's model layer: the model contract (`model.json`), ONNX Runtime sessions on CPU or
//! CUDA, image decoding and letterboxing, proposal post-processing and the model's scoring rule.
//!
//! ```no_run
//! use spotter_model::{ImageTower, ModelPackage, RuntimeOptions, TextTower};
//! # fn main() -> spotter_model::Result<()> {
//! let package = ModelPackage::open("exported_onnx/starter")?;
//! let options = RuntimeOptions::default();
//! let image_tower = ImageTower::load(&package, &options)?;
//! let text_tower = TextTower::load(&package, &options)?;
//! let image = spotter_model::decode_file("cat.jpg".as_ref(), Default::default())?;
//! let prepared = image_tower.prepare(&image)?;
//! let params = (&package.manifest.proposals).into();
//! let proposals = &image_tower.detect(&[prepared], &params)?[0];
//! let query = image_tower.scoring().query_vector(&text_tower.embed_queries(&["cat"])?[0]);
//! for p in proposals {
//!     println!("{:?} {}", p.bbox, image_tower.scoring().score(&query, &p.vector));
//! }
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod file;
pub mod image_tower;
pub mod manifest;
pub mod postprocess;
pub mod preprocess;
pub mod resize;
pub mod runtime;
pub mod scoring;
pub mod text_tower;

use std::path::PathBuf;

pub use error::{ModelError, Result};
pub use file::{DecodeBudget, FileIdentity, ImageFile, DEFAULT_DECODE_BUDGET};
pub use image_tower::{ImageTower, PreparedImage, Proposal, RawOutputs};
pub use manifest::{Manifest, ModelPackage};
pub use postprocess::ProposalParams;
pub use preprocess::{decode_bytes, decode_file, DecodeLimits, Letterbox, Preprocessor};
pub use runtime::{ActiveDevice, Device, RuntimeOptions};
pub use scoring::{QueryVectorRef, Scoring, StoredVectorRef};
pub use text_tower::TextTower;

/// Environment variable listing extra folders (`:`-separated) that hold model packages.
pub const MODELS_ENV: &str = "SPOTTER_MODELS";

/// Folders searched for model packages: `$SPOTTER_MODELS`, then `exported_onnx/` beside the
/// current directory or the executable (and their ancestors).
pub fn default_model_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(MODELS_ENV)
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(PathBuf::from));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(PathBuf::from));
    }
    for root in roots {
        let dir = root.join("exported_onnx");
        if dir.is_dir() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}
