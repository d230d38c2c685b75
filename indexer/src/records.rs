//! What the index stores, and how: serde + bincode values behind a one-byte format version, so
//! that a later change of layout is detected and explained instead of misread.
//!
//! Versions are per kind of record ([`Record::VERSION`]): image records are at format 2 (photo
//! metadata added) and still decode from format 1, which `Index` rewrites at open; every other
//! kind is at format 1, unchanged since the first index.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::metadata::PhotoMetadata;
use crate::relpath::RelPath;

/// Version byte of the records whose layout never changed (proposals, walk problems, index
/// settings). Bump a kind's [`Record::VERSION`] on any change of its layout.
pub const RECORD_VERSION: u8 = 1;

/// Version byte of image records: 2 added [`ImageRecord::photo`]; 1 still decodes.
pub const IMAGE_RECORD_VERSION: u8 = 2;

/// A kind of stored value, with the format version its records are written in.
pub trait Record: Serialize + DeserializeOwned {
    /// The format version written in front of this kind's records.
    const VERSION: u8 = RECORD_VERSION;

    /// Decodes `body` of an older format `version`; `None` when that version is unknown.
    fn decode_older(_version: u8, _body: &[u8], _what: &str) -> Option<Result<Self>> {
        None
    }
}

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
    /// Capture time, camera and GPS position (record format 2; a format-1 record reads with its
    /// file time until `Index` fills it from the file at open).
    pub photo: PhotoMetadata,
}

/// The layout of image records in format 1 (before [`ImageRecord::photo`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ImageRecordV1 {
    root: u32,
    rel_path: RelPath,
    size: u64,
    mtime_ns: i64,
    hash: [u8; 32],
    width: u32,
    height: u32,
    status: ImageStatus,
    proposals: u32,
}

impl From<ImageRecordV1> for ImageRecord {
    fn from(v1: ImageRecordV1) -> Self {
        ImageRecord {
            photo: PhotoMetadata::file_time(v1.mtime_ns),
            root: v1.root,
            rel_path: v1.rel_path,
            size: v1.size,
            mtime_ns: v1.mtime_ns,
            hash: v1.hash,
            width: v1.width,
            height: v1.height,
            status: v1.status,
            proposals: v1.proposals,
        }
    }
}

/// `record` encoded in format 1, as indexes made before format 2 hold it (its photo metadata
/// is lost).
#[cfg(test)]
pub(crate) fn encode_v1(record: &ImageRecord) -> Result<Vec<u8>> {
    let r = record.clone();
    let v1 = ImageRecordV1 {
        root: r.root,
        rel_path: r.rel_path,
        size: r.size,
        mtime_ns: r.mtime_ns,
        hash: r.hash,
        width: r.width,
        height: r.height,
        status: r.status,
        proposals: r.proposals,
    };
    encode_as(1, &v1)
}

impl Record for ImageRecord {
    const VERSION: u8 = IMAGE_RECORD_VERSION;

    fn decode_older(version: u8, body: &[u8], what: &str) -> Option<Result<Self>> {
        (version == 1).then(|| decode_body::<ImageRecordV1>(body, what).map(ImageRecord::from))
    }
}

impl Record for ProposalRecord {}
impl Record for WalkProblemRecord {}
impl Record for IndexMeta {}
impl<T: Record> Record for Vec<T> {
    const VERSION: u8 = T::VERSION;
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

/// Encodes a record behind its kind's version byte. Fails (instead of writing an empty record)
/// if the value cannot be encoded.
pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>> {
    encode_as(T::VERSION, value)
}

/// Encodes `value` behind the version byte `version` (tests write older formats with it).
pub(crate) fn encode_as<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![version];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| IndexError::Encode(e.to_string()))?;
    out.extend(body);
    Ok(out)
}

/// The format version of an encoded record (its first byte).
pub fn version_of(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

fn decode_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| IndexError::Corrupt {
            what: what.to_string(),
            message: e.to_string(),
        })
}

/// Decodes a record, checking the version byte: its kind's version, or an older one the kind
/// still reads.
pub fn decode<T: Record>(bytes: &[u8], what: &str) -> Result<T> {
    match bytes.first() {
        Some(&v) if v == T::VERSION => decode_body(&bytes[1..], what),
        Some(&other) => T::decode_older(other, &bytes[1..], what).unwrap_or_else(|| {
            Err(IndexError::Incompatible(format!(
                "{what} was written in record format {other}, this Spotter reads format {}: \
                 re-create the index (spotter index --rebuild) or use the Spotter version that wrote it",
                T::VERSION
            )))
        }),
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
        // The layout of format 1 as the first versions wrote it, whose path was a `String`.
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
        let bytes = encode_as(1, &old).unwrap();
        let new: ImageRecord = decode(&bytes, "image").unwrap();
        assert_eq!(new.rel_path, RelPath::from("2023/Überlingen/IMG 1.jpg"));
        assert_eq!((new.size, new.mtime_ns, new.width), (1234, -5, 640));
        // Until it is migrated, a format-1 record's capture time is its file time.
        assert_eq!(new.photo, PhotoMetadata::file_time(-5));
        // Written again, it is format 2 with the same fields and a format-1 body inside.
        let again = encode(&new).unwrap();
        assert_eq!(again[0], IMAGE_RECORD_VERSION);
        assert!(again[1..].starts_with(&bytes[1..]));
        assert_eq!(decode::<ImageRecord>(&again, "image").unwrap(), new);
    }

    #[test]
    fn only_image_records_moved_to_format_2() {
        use crate::metadata::{CaptureTime, TimeSource};
        let record = ImageRecord {
            root: 3,
            rel_path: "a/b.jpg".into(),
            size: 10,
            mtime_ns: 1_000_000_000,
            hash: [1; 32],
            width: 4,
            height: 3,
            status: ImageStatus::Indexed,
            proposals: 2,
            photo: PhotoMetadata {
                taken: Some(CaptureTime {
                    seconds: 1_625_412_600,
                    offset_minutes: Some(-210),
                    source: TimeSource::Exif,
                }),
                make: Some("Canon".into()),
                model: Some("Canon EOS 5D".into()),
                gps: Some([-33.8568, -151.2153]),
            },
        };
        let bytes = encode(&record).unwrap();
        assert_eq!(version_of(&bytes), Some(2));
        assert_eq!(decode::<ImageRecord>(&bytes, "image").unwrap(), record);
        // A format-1 image record of the same file decodes (without its metadata).
        let v1 = ImageRecordV1 {
            root: 3,
            rel_path: "a/b.jpg".into(),
            size: 10,
            mtime_ns: 1_000_000_000,
            hash: [1; 32],
            width: 4,
            height: 3,
            status: ImageStatus::Indexed,
            proposals: 2,
        };
        let old: ImageRecord = decode(&encode_as(1, &v1).unwrap(), "image").unwrap();
        assert_eq!(
            old,
            ImageRecord {
                photo: PhotoMetadata::file_time(1_000_000_000),
                ..record.clone()
            }
        );
        // Proposals, walk problems and settings stay format 1; image format 3 is refused.
        let p = ProposalRecord {
            image: 1,
            bbox: [0.0; 4],
            objectness: 0.5,
            level: 0,
            vector: StoredVector::InVectorIndex,
        };
        assert_eq!(version_of(&encode(&p).unwrap()), Some(1));
        let problems = vec![WalkProblemRecord {
            path: "/x".into(),
            reason: "denied".into(),
        }];
        assert_eq!(version_of(&encode(&problems).unwrap()), Some(1));
        let mut future = bytes;
        future[0] = 3;
        let err = decode::<ImageRecord>(&future, "image 9").unwrap_err();
        assert!(
            err.to_string()
                .contains("record format 3, this Spotter reads format 2"),
            "{err}"
        );
        let mut image_as_proposal = encode(&p).unwrap();
        image_as_proposal[0] = 2;
        assert!(decode::<ProposalRecord>(&image_as_proposal, "p").is_err());
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
