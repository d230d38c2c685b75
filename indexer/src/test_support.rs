//! Helpers shared by the unit tests: temporary indexes, records, files, proposals.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};

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
        photo: Default::default(),
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

/// An EXIF ASCII field of the primary image.
pub fn ascii_field(tag: Tag, text: &[u8]) -> Field {
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Ascii(vec![text.to_vec()]),
    }
}

/// An EXIF degrees, minutes, seconds (in 1/10 000) field, as GPS positions are written.
pub fn dms_field(tag: Tag, d: u32, m: u32, s_ten_thousandths: u32) -> Field {
    let r = |num, denom| Rational { num, denom };
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Rational(vec![r(d, 1), r(m, 1), r(s_ten_thousandths, 10_000)]),
    }
}

/// A TIFF-structured EXIF block with `fields` (kamadak-exif's writer).
pub fn exif_block_of(fields: &[Field]) -> Vec<u8> {
    let mut writer = Writer::new();
    for f in fields {
        writer.push_field(f);
    }
    let mut out = Cursor::new(Vec::new());
    writer.write(&mut out, false).expect("write exif");
    out.into_inner()
}

/// A minimal JPEG (SOI, APP0, APP1 Exif, SOS, EOI) around `exif`.
pub fn jpeg_with(exif: &[u8]) -> Vec<u8> {
    let mut out = vec![0xff, 0xd8];
    out.extend([0xff, 0xe0, 0, 16]);
    out.extend(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    let len = (exif.len() + 8) as u16;
    out.extend([0xff, 0xe1]);
    out.extend(len.to_be_bytes());
    out.extend(b"Exif\0\0");
    out.extend(exif);
    out.extend([0xff, 0xda, 0, 2, 1, 2, 3, 0xff, 0xd9]);
    out
}
