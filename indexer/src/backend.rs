//! Where an index keeps its vectors (the embedded HNSW or a Milvus collection), and which part of
//! an archive this machine indexes (`--shard I/N`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::records::PROPOSAL_BITS;

/// Default Milvus gRPC port.
pub const MILVUS_DEFAULT_PORT: u16 = 19530;

/// Bits of an image id below the shard number: each shard numbers its images in its own range,
/// so N machines can write one collection without id clashes.
pub const SHARD_SHIFT: u32 = 36;

/// Largest shard count (shard numbers must fit above [`SHARD_SHIFT`] in a positive i64 proposal
/// id).
pub const MAX_SHARDS: u32 = 1 << (63 - SHARD_SHIFT - PROPOSAL_BITS);

/// The vector engine of an index.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum VectorBackend {
    /// hnsw_rs graphs in the index folder (the default).
    #[default]
    Embedded,
    /// A Milvus collection (standalone or cluster).
    Milvus(MilvusConfig),
}

/// A Milvus collection and the index Spotter builds on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MilvusConfig {
    /// Host name or address.
    pub host: String,
    /// gRPC port.
    pub port: u16,
    /// Collection name.
    pub collection: String,
    /// Vector index built on the collection.
    pub index: MilvusIndex,
    /// How fresh searches must be.
    #[serde(default)]
    pub consistency: Consistency,
}

/// Milvus's consistency level for searches: how recent a write a search is guaranteed to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Consistency {
    /// Every acknowledged write (each search waits for the next time tick, ~200 ms).
    Strong,
    /// Writes older than Milvus's graceful time (5 s by default): the fast default.
    #[default]
    Bounded,
    /// Whatever the query nodes hold now.
    Eventually,
}

impl Consistency {
    fn name(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Bounded => "bounded",
            Consistency::Eventually => "eventually",
        }
    }
}

/// The Milvus vector index type (always on the inner-product metric: the model's logit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MilvusIndex {
    /// HNSW with `M` and `efConstruction`.
    Hnsw {
        /// Max connections per node.
        m: usize,
        /// Candidate list size during construction.
        ef_construction: usize,
    },
    /// IVF-Flat with `nlist` clusters (searched with `nprobe` = ef / 4, at least 8).
    IvfFlat {
        /// Number of clusters.
        nlist: usize,
    },
    /// IVF-SQ8: `nlist` clusters of 8-bit scalar-quantised vectors, a quarter of IVF-Flat's
    /// memory (searched like IVF-Flat; hits are re-scored from the stored f32 vectors).
    IvfSq8 {
        /// Number of clusters.
        nlist: usize,
    },
    /// Exact scan.
    Flat,
}

impl MilvusConfig {
    /// `http://host:port`, what the SDK connects to.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

impl fmt::Display for VectorBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VectorBackend::Embedded => write!(f, "embedded"),
            VectorBackend::Milvus(c) => {
                write!(f, "milvus://{}:{}/{}", c.host, c.port, c.collection)?;
                match c.index {
                    MilvusIndex::Hnsw { m, ef_construction } => {
                        write!(f, "?index=hnsw&m={m}&ef_construction={ef_construction}")?
                    }
                    MilvusIndex::IvfFlat { nlist } => write!(f, "?index=ivf_flat&nlist={nlist}")?,
                    MilvusIndex::IvfSq8 { nlist } => write!(f, "?index=ivf_sq8&nlist={nlist}")?,
                    MilvusIndex::Flat => write!(f, "?index=flat")?,
                }
                if c.consistency != Consistency::default() {
                    write!(f, "&consistency={}", c.consistency.name())?;
                }
                Ok(())
            }
        }
    }
}

const BACKEND_HELP: &str = "expected `embedded` or `milvus://HOST[:PORT]/COLLECTION[?index=hnsw&m=16&ef_construction=200 | ?index=ivf_flat&nlist=1024 | ?index=ivf_sq8&nlist=1024 | ?index=flat][&consistency=bounded|strong|eventually]`";

impl FromStr for VectorBackend {
    type Err = IndexError;

    fn from_str(text: &str) -> Result<Self> {
        let bad =
            |why: &str| IndexError::Invalid(format!("--vectors '{text}': {why}; {BACKEND_HELP}"));
        if text == "embedded" {
            return Ok(VectorBackend::Embedded);
        }
        let rest = text
            .strip_prefix("milvus://")
            .ok_or_else(|| bad("unknown engine"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, collection) = location
            .split_once('/')
            .ok_or_else(|| bad("no collection name"))?;
        let valid_name = !collection.is_empty()
            && collection.len() <= 255
            && collection
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && collection
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(bad(
                "a collection name is a letter or _ followed by letters, digits and _",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (authority, MILVUS_DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let mut params = std::collections::HashMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| bad("bad parameter"))?;
            params.insert(k.to_string(), v.to_string());
        }
        let number = |key: &str, default: usize| -> Result<usize> {
            match params.get(key) {
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(&format!("{key} must be a positive integer"))),
                None => Ok(default),
            }
        };
        let index = match params
            .get("index")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("hnsw") => MilvusIndex::Hnsw {
                m: number("m", 16)?,
                ef_construction: number("ef_construction", 200)?,
            },
            Some("ivf_flat") => MilvusIndex::IvfFlat {
                nlist: number("nlist", 1024)?,
            },
            Some("ivf_sq8") => MilvusIndex::IvfSq8 {
                nlist: number("nlist", 1024)?,
            },
            Some("flat") => MilvusIndex::Flat,
            Some(other) => return Err(bad(&format!("unknown index type '{other}'"))),
        };
        let consistency = match params
            .get("consistency")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("bounded") => Consistency::Bounded,
            Some("strong") => Consistency::Strong,
            Some("eventually") => Consistency::Eventually,
            Some(other) => return Err(bad(&format!("unknown consistency '{other}'"))),
        };
        if let Some(key) = params.keys().find(|k| {
            !["index", "m", "ef_construction", "nlist", "consistency"].contains(&k.as_str())
        }) {
            return Err(bad(&format!("unknown parameter '{key}'")));
        }
        Ok(VectorBackend::Milvus(MilvusConfig {
            host: host.to_string(),
            port,
            collection: collection.to_string(),
            index,
            consistency,
        }))
    }
}

/// One of N machines indexing one archive: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This machine's shard, `0..count`.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// The whole archive on one machine.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// True when this shard indexes the file at `rel_path` (relative to its archive root).
    /// Deterministic and stable as files come and go: a file's shard depends on its path only.
    pub fn owns(&self, rel_path: &crate::relpath::RelPath) -> bool {
        if self.count <= 1 {
            return true;
        }
        let hash = blake3::hash(rel_path.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first) % u64::from(self.count) == u64::from(self.index)
    }

    /// The range of proposal ids this shard writes.
    pub fn proposal_ids(&self) -> std::ops::Range<u64> {
        let shift = SHARD_SHIFT + PROPOSAL_BITS;
        (u64::from(self.index) << shift)..((u64::from(self.index) + 1) << shift)
    }

    /// The image id of this shard's `counter`-th image.
    pub fn image_id(&self, counter: u64) -> Result<u64> {
        if counter >= 1 << SHARD_SHIFT {
            return Err(IndexError::Invalid(format!(
                "shard {self} has used all of its {} image ids",
                1u64 << SHARD_SHIFT
            )));
        }
        Ok((u64::from(self.index) << SHARD_SHIFT) | counter)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = IndexError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            IndexError::Invalid(format!(
                "--shard '{text}': expected I/N with 0 <= I < N <= {MAX_SHARDS}, e.g. 0/4"
            ))
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count || count > MAX_SHARDS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// How an index folder is attached to its vector engine (kept in its store).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BackendConfig {
    /// The vector engine.
    pub vectors: VectorBackend,
    /// For a shared engine: the shard this folder indexes, or `None` for a folder that only
    /// searches the collection (the query server of a sharded deployment).
    pub shard: Option<Shard>,
}

impl BackendConfig {
    /// Key of the configuration in the store.
    pub const KEY: &'static str = "backend";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milvus_urls_parse_with_defaults_and_options() {
        let b: VectorBackend = "milvus://db.local/photos".parse().unwrap();
        let VectorBackend::Milvus(c) = &b else {
            panic!("{b:?}")
        };
        assert_eq!((c.host.as_str(), c.port), ("db.local", 19530));
        assert_eq!(c.collection, "photos");
        assert_eq!(
            c.index,
            MilvusIndex::Hnsw {
                m: 16,
                ef_construction: 200
            }
        );
        assert_eq!(b.to_string().parse::<VectorBackend>().unwrap(), b);
        let b: VectorBackend = "milvus://10.0.0.5:1234/a_1?index=ivf_flat&nlist=64"
            .parse()
            .unwrap();
        assert_eq!(
            b.to_string(),
            "milvus://10.0.0.5:1234/a_1?index=ivf_flat&nlist=64"
        );
        let b: VectorBackend = "milvus://h/c?index=IVF_SQ8&nlist=2048".parse().unwrap();
        let VectorBackend::Milvus(c) = &b else {
            panic!("{b:?}")
        };
        assert_eq!(c.index, MilvusIndex::IvfSq8 { nlist: 2048 });
        assert_eq!(b.to_string(), "milvus://h:19530/c?index=ivf_sq8&nlist=2048");
        for bad in [
            "milvus://h",
            "milvus://h/",
            "milvus://h/1abc",
            "milvus://h/a-b",
            "milvus://h:x/a",
            "milvus://h/a?index=lsh",
            "milvus://h/a?m=0",
            "milvus://h/a?consistency=weak",
            "milvus://h/a?nlists=3",
            "qdrant://h/a",
        ] {
            let err = bad.parse::<VectorBackend>().unwrap_err().to_string();
            assert!(err.contains("expected `embedded`"), "{bad}: {err}");
        }
    }

    #[test]
    fn shards_split_files_deterministically_and_completely() {
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        let mut counts = [0usize; 3];
        for n in 0..3000 {
            let path = format!("album-{}/IMG_{n:05}.jpg", n % 17);
            let owners: Vec<usize> = (0..3)
                .filter(|&i| shards[i].owns(&path.as_str().into()))
                .collect();
            assert_eq!(owners.len(), 1, "{path}");
            counts[owners[0]] += 1;
        }
        assert!(counts.iter().all(|&c| c > 900), "{counts:?}");
        for bad in ["3/3", "1/0", "a/2", "1", "0/100000"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_id_ranges_do_not_overlap_and_stay_positive() {
        let a: Shard = "0/2".parse().unwrap();
        let b: Shard = "1/2".parse().unwrap();
        assert!(a.proposal_ids().end <= b.proposal_ids().start);
        let last = Shard {
            index: MAX_SHARDS - 1,
            count: MAX_SHARDS,
        };
        assert!(last.proposal_ids().end - 1 <= i64::MAX as u64);
        let image = b.image_id(7).unwrap();
        assert!(b
            .proposal_ids()
            .contains(&crate::records::proposal_id(image, 3)));
        assert!(b.image_id(1 << SHARD_SHIFT).is_err());
    }
}
