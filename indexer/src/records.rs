//! What the index stores, and how: serde + bincode values behind a one-byte format version, so
//! that a later change of layout is detected and explained instead of misread.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::relpath::RelPath;

/// Version byte written in front of every record. Bump on any layout change.
pub const RECORD_VERSION: u8 = 1;

/// Bits of a proposal id that hold its rank within the image (so an image's proposals are one
/// contiguous key range, and at most 65536 proposals are kept per image).
pub const PROPOSAL_BITS: u32 = 16;

/// The proposal id of the `rank`-th proposal of `image`.
pub fn proposal_id(image: u64, rank: u32) -> u64 {
    (image << PROPOSAL_BITS) | u64::from(rank)
}

/// The image a proposal id belongs to.
pub fn image_of_proposal(proposal: u64) -> u64 {
    proposal >> PROPOSAL_BITS
}

/// Outcome of indexing one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ImageStatus {
    /// Decoded and run through the model.
    Indexed,
    /// Could not be indexed; the reason is shown to users and the file is retried when it changes.
    Failed(String),
}

/// One file of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Archive root id (see the `roots` tree).
    pub root: u32,
    /// Path relative to the root, with `/` separators, byte for byte.
    pub rel_path: RelPath,
    /// File size in bytes when indexed.
    pub size: u64,
    /// Modification time (ns since the Unix epoch) when indexed.
    pub mtime_ns: i64,
    /// BLAKE3 hash of the file's bytes (zero when the file could not be read).
    pub hash: [u8; 32],
    /// Displayed width (after EXIF orientation); 0 when unknown.
    pub width: u32,
    /// Displayed height; 0 when unknown.
    pub height: u32,
    /// Indexed or failed.
    pub status: ImageStatus,
    /// Number of proposals stored for this image (ids `proposal_id(image, 0..n)`).
    pub proposals: u32,
}

/// A stored vector, full or half precision, or a note that the vector index holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoredVector {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// IEEE half floats (bits), half the disk of `F32`.
    F16(Vec<u16>),
    /// Kept by the vector index only (the quantised embedded engine); `Index` fills it in when
    /// it reads the record.
    InVectorIndex,
}

impl StoredVector {
    /// Encodes `v` at the requested precision.
    pub fn new(v: &[f32], half_precision: bool) -> Self {
        if half_precision {
            StoredVector::F16(
                v.iter()
                    .map(|x| half::f16::from_f32(*x).to_bits())
                    .collect(),
            )
        } else {
            StoredVector::F32(v.to_vec())
        }
    }

    /// The vector as f32; `None` when the record does not hold it ([`StoredVector::InVectorIndex`]).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            StoredVector::F32(v) => Some(v.clone()),
            StoredVector::F16(v) => Some(
                v.iter()
                    .map(|b| half::f16::from_bits(*b).to_f32())
                    .collect(),
            ),
            StoredVector::InVectorIndex => None,
        }
    }
}

/// One kept proposal of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposalRecord {
    /// The image id.
    pub image: u64,
    /// `x1, y1, x2, y2` in original (displayed) pixels.
    pub bbox: [f32; 4],
    /// Objectness probability.
    pub objectness: f32,
    /// Scoring level.
    pub level: u32,
    /// The stored vector (`[scale_l · e ; bias_l]`, see the model contract).
    pub vector: StoredVector,
}

/// A path the last run of a root could not walk (or the root itself, skipped), with why: kept
/// per root until that root's next run, for `spotter stats --failures`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalkProblemRecord {
    /// The absolute path, byte for byte.
    pub path: RelPath,
    /// What went wrong.
    pub reason: String,
}

/// Index-wide settings, fixed when the index is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// Model package name.
    pub model: String,
    /// BLAKE3 of the model's manifest JSON (as re-serialised), to refuse a different model.
    pub manifest_hash: String,
    /// Length of stored vectors (`D + 1`).
    pub vector_dim: usize,
    /// Whether vectors are stored as f16.
    pub half_precision: bool,
    /// HNSW: max connections per node.
    pub hnsw_m: usize,
    /// HNSW: candidate list size at construction.
    pub hnsw_ef_construction: usize,
}

/// Encodes a record with the version byte. Fails (instead of writing an empty record) if the
/// value cannot be encoded.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_VERSION];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| IndexError::Encode(e.to_string()))?;
    out.extend(body);
    Ok(out)
}

/// Decodes a record, checking the version byte.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    match bytes.first() {
        Some(&RECORD_VERSION) => {
            bincode::serde::decode_from_slice(&bytes[1..], bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| IndexError::Corrupt {
                    what: what.to_string(),
                    message: e.to_string(),
                })
        }
        Some(&other) => Err(IndexError::Incompatible(format!(
            "{what} was written in record format {other}, this Spotter reads format {RECORD_VERSION}: \
             re-create the index (spotter index --rebuild) or use the Spotter version that wrote it"
        ))),
        None => Err(IndexError::Corrupt {
            what: what.to_string(),
            message: "empty record".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_versions_are_checked() {
        let rec = ProposalRecord {
            image: 7,
            bbox: [1.0, 2.0, 3.0, 4.0],
            objectness: 0.5,
            level: 2,
            vector: StoredVector::new(&[0.25, -1.5, 3.0], false),
        };
        let bytes = encode(&rec).unwrap();
        assert_eq!(decode::<ProposalRecord>(&bytes, "p").unwrap(), rec);
        let mut future = bytes.clone();
        future[0] = 9;
        let err = decode::<ProposalRecord>(&future, "proposal 7").unwrap_err();
        assert!(err.to_string().contains("record format 9"), "{err}");
        assert!(decode::<ProposalRecord>(&bytes[..3], "p").is_err());
    }

    #[test]
    fn image_records_written_with_a_string_path_decode_with_rel_path() {
        // The layout of earlier versions, whose path was a `String`.
        #[derive(Serialize)]
        struct OldImageRecord {
            root: u32,
            rel_path: String,
            size: u64,
            mtime_ns: i64,
            hash: [u8; 32],
            width: u32,
            height: u32,
            status: ImageStatus,
            proposals: u32,
        }
        let old = OldImageRecord {
            root: 1,
            rel_path: "2023/Überlingen/IMG 1.jpg".into(),
            size: 1234,
            mtime_ns: -5,
            hash: [9; 32],
            width: 640,
            height: 480,
            status: ImageStatus::Failed("truncated".into()),
            proposals: 0,
        };
        let bytes = encode(&old).unwrap();
        let new: ImageRecord = decode(&bytes, "image").unwrap();
        assert_eq!(new.rel_path, RelPath::from("2023/Überlingen/IMG 1.jpg"));
        assert_eq!((new.size, new.mtime_ns, new.width), (1234, -5, 640));
        assert_eq!(encode(&new).unwrap(), bytes);
    }

    #[test]
    fn half_precision_vectors_are_close() {
        let v = [0.1f32, -2.75, 13.0, 1e-3];
        let back = StoredVector::new(&v, true).to_f32().unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * 1e-3 + 1e-6);
        }
    }

    #[test]
    fn proposal_ids_pack_image_and_rank() {
        let id = proposal_id(12345, 99);
        assert_eq!(image_of_proposal(id), 12345);
        assert_eq!(id & 0xffff, 99);
    }
}
