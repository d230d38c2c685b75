//! Helpers shared by the unit tests: temporary indexes, records, files, proposals.

use std::path::{Path, PathBuf};

use crate::index::{EmbeddedEngine, Index};
use crate::records::{ImageRecord, ImageStatus, IndexMeta, ProposalRecord, StoredVector};
use crate::relpath::RelPath;
use crate::walk::FoundFile;

/// Vector length of the test indexes (16 embedding values and the bias).
pub const D: usize = 16;

/// Index settings for `D + 1`-float vectors of a made-up model.
pub fn test_meta() -> IndexMeta {
    IndexMeta {
        model: "test".into(),
        manifest_hash: "0".repeat(64),
        vector_dim: D + 1,
        half_precision: false,
        hnsw_m: 16,
        hnsw_ef_construction: 100,
    }
}

/// An empty index with `engine` over `roots` (root ids 0, 1, …) in a temporary folder.
pub fn index_in(roots: &[PathBuf], engine: EmbeddedEngine) -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().expect("temp dir");
    let meta = test_meta();
    let index = Index::create(dir.path(), &meta, roots, engine).expect("create index");
    (dir, index)
}

/// An indexed record at `path` of root 0 with `proposals` proposals.
pub fn record(path: &str, proposals: u32) -> ImageRecord {
    ImageRecord {
        root: 0,
        rel_path: RelPath::from_relative(Path::new(path)),
        size: 1,
        mtime_ns: 0,
        hash: *blake3::hash(path.as_bytes()).as_bytes(),
        width: 100,
        height: 100,
        status: ImageStatus::Indexed,
        proposals,
    }
}

/// Writes `bytes` to `root/name`; returns the path.
pub fn write_file(root: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = root.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

/// The walk's entry for `root/name` as it is on disk now.
pub fn found(root: &Path, name: &str) -> FoundFile {
    let path = root.join(name);
    let meta = std::fs::metadata(&path).expect("test file exists");
    FoundFile {
        rel_path: RelPath::from_relative(Path::new(name)),
        size: meta.len(),
        mtime_ns: crate::walk::mtime_ns(&meta),
        path,
    }
}

/// `n` proposals with distinct pseudo-random vectors (seeded by `seed`).
pub fn proposals(n: usize, seed: u64) -> Vec<(ProposalRecord, Vec<f32>)> {
    (0..n)
        .map(|i| {
            let mut v: Vec<f32> = (0..D)
                .map(|j| (((seed * 31 + i as u64 * 7 + j as u64 * 13) % 17) as f32 - 8.0) / 8.0)
                .collect();
            v.push(-2.0);
            let p = ProposalRecord {
                image: 0,
                bbox: [0.0, 0.0, 10.0, i as f32 + 1.0],
                objectness: 0.5,
                level: 0,
                vector: StoredVector::InVectorIndex,
            };
            (p, v)
        })
        .collect()
}
