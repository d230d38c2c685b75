//! An open index: the sled store (truth) plus the vector index, kept consistent at open.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use spotter_model::{ImageFile, ModelPackage};

use crate::backend::{BackendConfig, Shard, VectorBackend};
use crate::error::{IndexError, Result};
use crate::ivf::{IvfParams, IvfVectors};
use crate::metadata::{PhotoInfo, PhotoMetadata, TimeSource};
use crate::records::{ImageRecord, ImageStatus, IndexMeta, ProposalRecord, StoredVector};
use crate::relpath::RelPath;
use crate::store::Store;
use crate::vectors::{
    HitPayload, HnswParams, HnswVectors, Neighbour, PayloadStore, VectorEntry, VectorIndex,
};

/// The embedded vector engine of an index folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbeddedEngine {
    /// Per-level inverted lists of int8 codes under hnsw_rs centroid graphs, re-ranked from fine
    /// codes on disk ([`IvfVectors`]); the vectors live in it alone (the default for new
    /// indexes).
    #[default]
    Quantised,
    /// hnsw_rs cosine graphs per level and norm band over f32 points ([`HnswVectors`]), the
    /// vectors also in the store: what indexes made before the quantised engine use.
    Hnsw,
}

impl EmbeddedEngine {
    /// Store key holding the engine name; indexes without it predate the quantised engine.
    pub const KEY: &'static str = "embedded_engine";

    /// The name stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            EmbeddedEngine::Quantised => "quantised",
            EmbeddedEngine::Hnsw => "hnsw",
        }
    }
}

impl std::str::FromStr for EmbeddedEngine {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quantised" | "quantized" => Ok(EmbeddedEngine::Quantised),
            "hnsw" => Ok(EmbeddedEngine::Hnsw),
            other => Err(IndexError::Invalid(format!(
                "unknown vector engine '{other}': expected quantised or hnsw"
            ))),
        }
    }
}

/// Vectors queued for engines that take them in batches (see [`Index::flush_vectors`]).
const INSERT_CHUNK: usize = 2048;

/// Image records rewritten per atomic batch when an index migrates to a new record format.
const MIGRATION_BATCH: usize = 512;

/// A migration says how far it is at most this often.
const MIGRATION_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Settings chosen when an index is created (and checked when it is opened for indexing).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexSettings {
    /// Store vectors as f16 on disk.
    pub half_precision: bool,
    /// HNSW parameters (embedded engine).
    pub hnsw: HnswParams,
    /// Vector engine; `None` keeps the index's own (embedded for a new index).
    pub vectors: Option<VectorBackend>,
    /// The part of the archives this machine indexes (shared engines only); `None` keeps the
    /// index's own (the whole archive for a new index).
    pub shard: Option<Shard>,
    /// Only search the shared engine, never index into it (see [`Index::attach`]).
    pub search_only: bool,
    /// Embedded engine of a new index; `None` keeps the index's own (quantised for a new one).
    pub embedded_engine: Option<EmbeddedEngine>,
}

/// One proposal with what a search result shows of its image.
#[derive(Debug, Clone, PartialEq)]
pub struct HitRecord {
    /// Proposal id.
    pub id: u64,
    /// The proposal (box, objectness, level; its `vector` field is the store's, which may only
    /// say that the vector index holds it: use [`HitRecord::vector`]).
    pub proposal: ProposalRecord,
    /// The stored vector (`[scale_l · e ; bias_l]`).
    pub vector: Vec<f32>,
    /// Archive root id (in this index folder's roots table).
    pub root: u32,
    /// Path relative to the root.
    pub rel_path: RelPath,
    /// Displayed image width.
    pub width: u32,
    /// Displayed image height.
    pub height: u32,
    /// The image's capture time, camera and GPS position (for filters and sorting by time).
    pub photo: PhotoInfo,
}

/// An image as the server shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// Archive root id.
    pub root: u32,
    /// Path relative to the root.
    pub rel_path: RelPath,
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Displayed width.
    pub width: u32,
    /// Displayed height.
    pub height: u32,
    /// File size in bytes when indexed (unknown for a shared engine's payloads).
    pub size: Option<u64>,
    /// BLAKE3 of the file's bytes when indexed (unknown for a shared engine's payloads).
    pub hash: Option<[u8; 32]>,
    /// Capture time, camera and GPS position.
    pub photo: PhotoInfo,
}

/// Something the last run of an archive root could not walk, kept until that root's next run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RootProblem {
    /// The archive root.
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    #[schema(value_type = String)]
    pub root: PathBuf,
    /// The folder, link or file (the root itself when it was skipped).
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Counts and sizes of an index.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct IndexStats {
    /// Index folder.
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    #[schema(value_type = String)]
    pub dir: PathBuf,
    /// Model package name.
    pub model: String,
    /// Archive roots.
    #[serde(serialize_with = "crate::relpath::serialize_paths")]
    #[schema(value_type = Vec<String>)]
    pub roots: Vec<PathBuf>,
    /// Image records (indexed + failed).
    pub images: usize,
    /// Images indexed.
    pub indexed: usize,
    /// Images that failed, with reasons.
    pub failed: usize,
    /// Stored proposals.
    pub proposals: usize,
    /// Live vectors in the vector index.
    pub vectors: usize,
    /// Deleted vectors still in the vector index.
    pub tombstones: usize,
    /// Stored vector length.
    pub vector_dim: usize,
    /// f16 storage (the HNSW engine's store copies).
    pub half_precision: bool,
    /// How the stored vectors are kept, in words.
    pub vector_storage: String,
    /// Vector engine description.
    pub vector_engine: String,
    /// Vector engine address (`embedded` or a `milvus://` URL).
    pub backend: String,
    /// The shard this folder indexes (`I/N`), for shared engines.
    pub shard: Option<String>,
    /// Bytes on disk, whole folder.
    pub disk_bytes: u64,
    /// What the last run of each root could not walk (skipped roots, unreadable folders,
    /// deletions kept back).
    pub walk_problems: Vec<RootProblem>,
    /// How many indexed images have each kind of photo metadata.
    pub photos: PhotoStats,
}

/// How many indexed images have each kind of photo metadata (see [`PhotoMetadata`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PhotoStats {
    /// Capture time from the photo's EXIF.
    pub exif_time: usize,
    /// Capture time from the file's modification time (no usable EXIF time).
    pub file_time: usize,
    /// Camera make or model known.
    pub camera: usize,
    /// GPS position known.
    pub gps: usize,
}

impl PhotoStats {
    fn count(&mut self, photo: &PhotoMetadata) {
        match photo.taken.map(|t| t.source) {
            Some(TimeSource::Exif) => self.exif_time += 1,
            Some(TimeSource::FileModified) => self.file_time += 1,
            None => {}
        }
        self.camera += usize::from(photo.make.is_some() || photo.model.is_some());
        self.gps += usize::from(photo.gps.is_some());
    }
}

/// The file a running `spotter serve` keeps in the index folder it holds (its address, so other
/// commands can reach it); not part of the index, so not counted in its size.
pub const SERVER_RECORD: &str = "serve.json";

/// An index folder: `db/` (sled) and, with an embedded engine, `vectors/`.
///
/// The one reader and writer of both: every change of an image (commit, move, removal) goes
/// through one method here, which orders the store and vector writes so that a crash between
/// them leaves a state [`Index::reconcile`] repairs at the next open.
pub struct Index {
    dir: PathBuf,
    store: Store,
    vectors: std::sync::Arc<dyn VectorIndex>,
    /// The quantised engine, when it is the one (it alone holds the vectors).
    quantised: Option<std::sync::Arc<IvfVectors>>,
    /// The payload side of an engine shared between machines (Milvus).
    payloads: Option<std::sync::Arc<dyn PayloadStore>>,
    meta: IndexMeta,
    backend: BackendConfig,
    /// Vectors written to the store but not yet to a batching engine.
    pending: std::sync::Mutex<Vec<VectorEntry>>,
}

/// Stable hash of a manifest (BLAKE3 of its re-serialised JSON): the one rule that tells
/// whether a model package is the one an index was built with.
pub fn manifest_hash(package: &ModelPackage) -> Result<String> {
    let text = serde_json::to_string(&package.manifest).map_err(|e| {
        IndexError::Invalid(format!(
            "cannot hash the manifest of {}: {e}",
            package.dir.display()
        ))
    })?;
    Ok(blake3::hash(text.as_bytes()).to_hex().to_string())
}

/// The refusal of a package whose manifest hash is not the index's.
fn model_mismatch(dir: &Path, meta: &IndexMeta, package: &ModelPackage, hash: &str) -> IndexError {
    IndexError::Incompatible(format!(
        "{} was built with model '{}' (manifest hash {}); the package at {} ('{}') has manifest \
         hash {}: re-index into a new --index folder with --model {}, or point --model at the \
         package the index was built with",
        dir.display(),
        meta.model,
        short(&meta.manifest_hash),
        package.dir.display(),
        package.manifest.name,
        short(hash),
        package.manifest.name,
    ))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

impl Index {
    /// Opens the index in `dir` for writing with `package`, creating it if needed.
    /// Refuses an index built with another model.
    pub fn open_for_model(
        dir: &Path,
        package: &ModelPackage,
        settings: &IndexSettings,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let store = Store::open(dir)?;
        let hash = manifest_hash(package)?;
        let meta = match store.meta()? {
            Some(meta) => {
                if meta.manifest_hash != hash {
                    return Err(model_mismatch(dir, &meta, package, &hash));
                }
                meta
            }
            None => {
                let meta = IndexMeta {
                    model: package.manifest.name.clone(),
                    manifest_hash: hash,
                    vector_dim: package.manifest.embedding_dim + 1,
                    half_precision: settings.half_precision,
                    hnsw_m: settings.hnsw.m,
                    hnsw_ef_construction: settings.hnsw.ef_construction,
                };
                store.set_meta(&meta)?;
                meta
            }
        };
        let backend = Self::settle_backend(dir, &store, settings)?;
        Self::settle_engine(dir, &store, settings)?;
        Self::finish_open(dir, store, meta, backend)
    }

    /// Creates an empty index in `dir` for the same model (and roots) as `like`, with the
    /// embedded `engine`: for fixtures and benchmarks that copy an index's proposals.
    pub fn create_like(dir: &Path, like: &Index, engine: EmbeddedEngine) -> Result<Self> {
        let roots: Vec<PathBuf> = like.store.roots()?.into_iter().map(|(_, p)| p).collect();
        Self::create(dir, &like.meta, &roots, engine)
    }

    /// Creates an empty index in `dir` with `meta` (model, vector length) and archive `roots`,
    /// without a model package: for tools that write proposals they did not compute (fixtures)
    /// and for tests.
    pub fn create(
        dir: &Path,
        meta: &IndexMeta,
        roots: &[PathBuf],
        engine: EmbeddedEngine,
    ) -> Result<Self> {
        if dir.join("db").exists() {
            return Err(IndexError::Invalid(format!(
                "{} already holds an index",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let store = Store::open(dir)?;
        store.set_meta(meta)?;
        for root in roots {
            store.root_id(root)?;
        }
        let settings = IndexSettings {
            embedded_engine: Some(engine),
            ..Default::default()
        };
        let backend = Self::settle_backend(dir, &store, &settings)?;
        Self::settle_engine(dir, &store, &settings)?;
        Self::finish_open(dir, store, meta.clone(), backend)
    }

    /// Records the embedded engine of a new index; refuses another one for an existing index.
    fn settle_engine(dir: &Path, store: &Store, settings: &IndexSettings) -> Result<()> {
        let recorded = store.get_value(EmbeddedEngine::KEY)?.is_some();
        let holds_images = store.counts().0 > 0;
        let have = Self::stored_engine(store)?;
        match settings.embedded_engine {
            Some(wanted) if (recorded || holds_images) && wanted != have => {
                Err(IndexError::Incompatible(format!(
                    "{} uses the {} vector engine, not {}: leave out --vector-engine or index into a new --index folder",
                    dir.display(),
                    have.name(),
                    wanted.name()
                )))
            }
            _ if recorded || holds_images => Ok(()),
            wanted => store.set_value(
                EmbeddedEngine::KEY,
                wanted.unwrap_or_default().name().as_bytes(),
            ),
        }
    }

    /// The embedded engine a folder uses (HNSW for folders made before the key existed).
    fn stored_engine(store: &Store) -> Result<EmbeddedEngine> {
        match store.get_value(EmbeddedEngine::KEY)? {
            None => Ok(EmbeddedEngine::Hnsw),
            Some(bytes) => String::from_utf8_lossy(&bytes).parse(),
        }
    }

    /// The index's engine and shard, after checking `settings` against what the folder holds.
    fn settle_backend(
        dir: &Path,
        store: &Store,
        settings: &IndexSettings,
    ) -> Result<BackendConfig> {
        let stored = Self::stored_backend(store)?;
        let holds_images = store.counts().0 > 0;
        let vectors = match (&settings.vectors, &stored) {
            (Some(wanted), Some(have)) if *wanted != have.vectors => {
                return Err(IndexError::Incompatible(format!(
                    "{} keeps its vectors in {}, not {wanted}: leave out --vectors or use another --index folder",
                    dir.display(),
                    have.vectors
                )))
            }
            (Some(wanted), None) if holds_images && *wanted != VectorBackend::Embedded => {
                return Err(IndexError::Incompatible(format!(
                    "{} already holds an embedded index; index into a new --index folder to use {wanted}",
                    dir.display()
                )))
            }
            (Some(wanted), _) => wanted.clone(),
            (None, Some(have)) => have.vectors.clone(),
            (None, None) => VectorBackend::Embedded,
        };
        let stored_shard = stored.as_ref().and_then(|b| b.shard);
        let shard = if vectors == VectorBackend::Embedded {
            if settings.shard.is_some() || settings.search_only {
                return Err(IndexError::Invalid(
                    "--shard and search-only folders need a vector engine shared by the machines, e.g. --vectors milvus://HOST:19530/COLLECTION".into(),
                ));
            }
            None
        } else if settings.search_only {
            if let (Some(have), true) = (stored_shard, holds_images) {
                return Err(IndexError::Incompatible(format!(
                    "{} indexes shard {have} of {vectors}; a search-only folder must be another one",
                    dir.display()
                )));
            }
            None
        } else {
            match (settings.shard, stored_shard) {
                (Some(wanted), Some(have)) if wanted != have && holds_images => {
                    return Err(IndexError::Incompatible(format!(
                        "{} indexes shard {have}, not {wanted}: every shard needs its own --index folder",
                        dir.display()
                    )))
                }
                (Some(wanted), _) => Some(wanted),
                (None, Some(have)) => Some(have),
                (None, None) if stored.is_some() => {
                    return Err(IndexError::Invalid(format!(
                        "{} only searches {vectors}; to index into it give --shard I/N (0/1 when no other machine writes the collection)",
                        dir.display()
                    )))
                }
                (None, None) => Some(Shard::WHOLE),
            }
        };
        let backend = BackendConfig { vectors, shard };
        if stored.as_ref() != Some(&backend) {
            let text = serde_json::to_vec(&backend)
                .map_err(|e| IndexError::Invalid(format!("backend settings: {e}")))?;
            store.set_value(BackendConfig::KEY, &text)?;
        }
        Ok(backend)
    }

    fn stored_backend(store: &Store) -> Result<Option<BackendConfig>> {
        match store.get_value(BackendConfig::KEY)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| IndexError::Corrupt {
                        what: "backend settings".into(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Creates (or reopens) a folder that searches a shared collection without indexing into
    /// it: the query server of a sharded deployment.
    pub fn attach(dir: &Path, package: &ModelPackage, vectors: &VectorBackend) -> Result<Self> {
        Self::open_for_model(
            dir,
            package,
            &IndexSettings {
                vectors: Some(vectors.clone()),
                search_only: true,
                ..Default::default()
            },
        )
    }

    /// Opens an existing index (for searching).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("db").exists() {
            return Err(IndexError::Invalid(format!(
                "{} is not a Spotter index (no db/ inside): create it with `spotter index ARCHIVE --index {}`",
                dir.display(),
                dir.display()
            )));
        }
        let store = Store::open(dir)?;
        let meta = store.meta()?.ok_or_else(|| {
            IndexError::Invalid(format!("{} holds no index settings yet", dir.display()))
        })?;
        let backend = Self::stored_backend(&store)?.unwrap_or_default();
        Self::finish_open(dir, store, meta, backend)
    }

    fn finish_open(
        dir: &Path,
        store: Store,
        meta: IndexMeta,
        backend: BackendConfig,
    ) -> Result<Self> {
        let mut quantised = None;
        let mut payloads: Option<std::sync::Arc<dyn PayloadStore>> = None;
        let vectors: std::sync::Arc<dyn VectorIndex> = match &backend.vectors {
            VectorBackend::Embedded => match Self::stored_engine(&store)? {
                EmbeddedEngine::Hnsw => {
                    let params = HnswParams {
                        m: meta.hnsw_m,
                        ef_construction: meta.hnsw_ef_construction,
                    };
                    std::sync::Arc::new(HnswVectors::open(
                        &dir.join("vectors"),
                        meta.vector_dim,
                        params,
                    )?)
                }
                EmbeddedEngine::Quantised => {
                    let engine = std::sync::Arc::new(IvfVectors::open(
                        &dir.join("vectors").join("ivf"),
                        meta.vector_dim,
                        IvfParams::default(),
                    )?);
                    quantised = Some(engine.clone());
                    engine
                }
            },
            VectorBackend::Milvus(config) => {
                let (engine, payload_side) = open_milvus(config, &meta, backend.shard)?;
                payloads = Some(payload_side);
                engine
            }
        };
        let index = Index {
            dir: dir.to_path_buf(),
            store,
            vectors,
            quantised,
            payloads,
            meta,
            backend,
            pending: std::sync::Mutex::new(Vec::new()),
        };
        // A folder that only searches a shared collection owns none of its vectors.
        if index.payloads.is_none() || index.backend.shard.is_some() {
            index.reconcile()?;
        }
        index.migrate_image_records(MIGRATION_BATCH, usize::MAX)?;
        Ok(index)
    }

    /// Rewrites image records of an older format in the current one, filling in what the old
    /// format lacked from the files themselves (photo metadata: only each file's headers are
    /// read, the model is not run; a file that is gone or unreadable keeps its recorded
    /// modification time as capture time). Each batch of `batch` records is one atomic write,
    /// so a crash leaves a readable index (old and new records both decode) whose next open goes
    /// on where this one stopped. Stops after `max_batches` (tests); returns whether it finished.
    fn migrate_image_records(&self, batch: usize, max_batches: usize) -> Result<bool> {
        if self.store.image_records_current()? {
            return Ok(true);
        }
        let stale = self.store.stale_image_ids()?;
        let started = std::time::Instant::now();
        if !stale.is_empty() {
            tracing::info!(
                "migrating {} image records to record format {} (photo metadata from the files' \
                 headers; the model is not run)",
                stale.len(),
                crate::records::IMAGE_RECORD_VERSION
            );
        }
        let roots: HashMap<u32, PathBuf> = self.store.roots()?.into_iter().collect();
        let (mut done, mut said) = (0usize, started);
        for (n, ids) in stale.chunks(batch.max(1)).enumerate() {
            if n == max_batches {
                return Ok(false);
            }
            let mut records = Vec::with_capacity(ids.len());
            for &id in ids {
                if let Some(record) = self.store.image(id)? {
                    records.push((id, record));
                }
            }
            let migrated: Vec<(u64, ImageRecord)> = records
                .into_par_iter()
                .map(|(id, record)| {
                    let path = roots
                        .get(&record.root)
                        .map(|r| record.rel_path.join_onto(r));
                    let photo = photo_of_file(path.as_deref(), &record);
                    (id, ImageRecord { photo, ..record })
                })
                .collect();
            self.store.rewrite_images(&migrated)?;
            for (id, record) in &migrated {
                // Engines shared between machines show hits from their payloads.
                self.image_moved(*id, record)?;
            }
            done += migrated.len();
            if said.elapsed() >= MIGRATION_PROGRESS_EVERY {
                tracing::info!("migrated {done} of {} image records", stale.len());
                said = std::time::Instant::now();
            }
        }
        self.store.flush()?;
        self.store.set_image_records_current()?;
        self.store.flush()?;
        if !stale.is_empty() {
            tracing::info!(
                "migrated {done} image records to record format {} in {:.1} s",
                crate::records::IMAGE_RECORD_VERSION,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(true)
    }

    /// Makes the vector index agree with the store: re-inserts proposals the last dump missed
    /// (crash between the two) and deletes vectors whose proposal is gone. With a shared
    /// engine this covers this folder's shard only. When the vector index alone held a missing
    /// vector (the quantised engine, after a power loss before its files were synced), the
    /// image's record is dropped so that the next run indexes the file again.
    fn reconcile(&self) -> Result<()> {
        if let Some(engine) = &self.quantised {
            if self.reconcile_by_images(engine)? {
                return Ok(());
            }
        }
        let in_vectors = self.vectors.ids()?;
        let mut in_store = HashSet::with_capacity(in_vectors.len());
        let mut missing = Vec::new();
        for id in self.store.proposal_ids() {
            let id = id?;
            in_store.insert(id);
            if !in_vectors.contains(&id) {
                missing.push(id);
            }
        }
        let extra: Vec<u64> = in_vectors.difference(&in_store).copied().collect();
        if !extra.is_empty() {
            self.vectors.remove(&extra)?;
        }
        let mut lost_images: HashMap<u64, ImageRecord> = HashMap::new();
        if !missing.is_empty() {
            tracing::info!(
                count = missing.len(),
                "adding proposals missing from the vector index"
            );
            for chunk in missing.chunks(4096) {
                let mut items = Vec::with_capacity(chunk.len());
                let mut images: HashMap<u64, Option<ImageRecord>> = HashMap::new();
                for &id in chunk {
                    let Some(p) = self.store.proposal(id)? else {
                        continue;
                    };
                    let Some(image) = self.image_cached(&mut images, p.image)? else {
                        continue;
                    };
                    match p.vector.to_f32() {
                        Some(v) => items.push(self.vector_entry(id, p.image, &image, &p, v)?),
                        None => {
                            lost_images.insert(p.image, image);
                        }
                    }
                }
                self.vectors.insert(&items)?;
            }
        }
        self.drop_lost_images(lost_images)?;
        if !missing.is_empty() || !extra.is_empty() {
            self.vectors.persist()?;
        }
        Ok(())
    }

    /// Writes image `id`'s record and its proposals (`proposals[rank]` with its vector, image
    /// field ignored), replacing `previous` (another record at the same path). The vector index
    /// learns of them in the order that survives a crash: an engine that alone holds the vectors
    /// gets them before the store commits (an orphan vector is dropped at open), any other after
    /// (a missing vector is re-inserted from the store at open).
    pub fn commit_image(
        &self,
        id: u64,
        record: &ImageRecord,
        proposals: &[(ProposalRecord, Vec<f32>)],
        previous: Option<(u64, &ImageRecord)>,
    ) -> Result<()> {
        let mut records = Vec::with_capacity(proposals.len());
        let mut entries = Vec::with_capacity(proposals.len());
        let in_engine = self.quantised.is_some();
        for (rank, (p, v)) in proposals.iter().enumerate() {
            let stored = ProposalRecord {
                image: id,
                vector: if in_engine {
                    StoredVector::InVectorIndex
                } else {
                    StoredVector::new(v, self.meta.half_precision)
                },
                ..p.clone()
            };
            entries.push(self.vector_entry(
                crate::records::proposal_id(id, rank as u32),
                id,
                record,
                &stored,
                v.clone(),
            )?);
            records.push(stored);
        }
        if in_engine {
            self.vectors.insert(&entries)?;
            self.store.put_image(id, record, &records, previous)?;
        } else {
            self.store.put_image(id, record, &records, previous)?;
            self.queue_vectors(entries)?;
        }
        if let Some((old_id, old)) = previous {
            self.retire_vectors(old_id, old)?;
        }
        Ok(())
    }

    /// Drops image `id` (its record, path, hash and proposals) and its vectors.
    pub fn remove_image(&self, id: u64, record: &ImageRecord) -> Result<()> {
        self.store.remove_image(id, record)?;
        self.retire_vectors(id, record)
    }

    /// Moves image `id` from `old`'s path to `new`'s (same content, same proposals).
    pub fn move_image(&self, id: u64, old: &ImageRecord, new: &ImageRecord) -> Result<()> {
        self.store.move_image(id, old, new)?;
        self.image_moved(id, new)
    }

    /// Replaces image `id`'s record by `record` without touching its proposals (a `touch`).
    pub fn update_image(&self, id: u64, record: &ImageRecord) -> Result<()> {
        self.store.update_image(id, record)
    }

    fn retire_vectors(&self, id: u64, record: &ImageRecord) -> Result<()> {
        let ids: Vec<u64> = (0..record.proposals)
            .map(|r| crate::records::proposal_id(id, r))
            .collect();
        if let Ok(mut pending) = self.pending.lock() {
            pending.retain(|e| !ids.contains(&e.id));
        }
        self.vectors.remove(&ids)
    }

    fn queue_vectors(&self, entries: Vec<VectorEntry>) -> Result<()> {
        let full = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| IndexError::Vectors("lock poisoned".into()))?;
            pending.extend(entries);
            pending.len() >= INSERT_CHUNK
        };
        if full {
            self.flush_vectors()?;
        }
        Ok(())
    }

    /// Hands queued vectors to the engine (they become searchable). Engines that hold the
    /// vectors alone never queue.
    pub fn flush_vectors(&self) -> Result<()> {
        let batch = std::mem::take(
            &mut *self
                .pending
                .lock()
                .map_err(|_| IndexError::Vectors("lock poisoned".into()))?,
        );
        if batch.is_empty() {
            return Ok(());
        }
        self.vectors.insert(&batch)
    }

    /// The index folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every image record (indexed and failed), in id order.
    pub fn images(&self) -> impl Iterator<Item = Result<(u64, ImageRecord)>> + '_ {
        self.store.images()
    }

    /// Image `id`'s record, if it exists.
    pub fn image(&self, id: u64) -> Result<Option<ImageRecord>> {
        self.store.image(id)
    }

    /// The record at `rel` under root `root`, with its id.
    pub fn image_by_path(&self, root: u32, rel: &RelPath) -> Result<Option<(u64, ImageRecord)>> {
        self.store.image_by_path(root, rel)
    }

    /// The record of the file at absolute `path`, found under whichever archive root holds it.
    pub fn image_at(&self, path: &Path) -> Result<Option<(u64, ImageRecord)>> {
        for (id, root) in self.store.roots()? {
            if let Ok(rel) = path.strip_prefix(&root) {
                if let Some(found) = self.store.image_by_path(id, &RelPath::from_relative(rel))? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// Records with content hash `hash` (copies of one file).
    pub fn images_with_hash(&self, hash: &[u8; 32]) -> Result<Vec<(u64, ImageRecord)>> {
        self.store.images_with_hash(hash)
    }

    /// The archive roots this index knows, with their ids.
    pub fn roots(&self) -> Result<Vec<(u32, PathBuf)>> {
        self.store.roots()
    }

    /// The id of archive root `root` (canonical path), registering it when new.
    pub fn register_root(&self, root: &Path) -> Result<u32> {
        self.store.root_id(root)
    }

    /// Records what the walk of `root` could not reach this run (replacing the last run's).
    pub fn set_walk_problems(
        &self,
        root: &Path,
        problems: &[crate::pipeline::Failure],
    ) -> Result<()> {
        self.store.set_walk_problems(root, problems)
    }

    /// Image and proposal records in the store.
    pub fn record_counts(&self) -> (usize, usize) {
        self.store.counts()
    }

    /// Live vectors in the vector engine (this folder's and, with a shared engine, others').
    pub fn vector_count(&self) -> Result<usize> {
        self.vectors.len()
    }

    /// Deleted vectors not yet compacted away.
    pub fn deleted_vectors(&self) -> Result<usize> {
        self.vectors.tombstones()
    }

    /// The `k` proposals with the highest logit `q · v` (`ef`: search breadth), best first.
    pub fn search_vectors(&self, q: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbour>> {
        self.vectors.search(q, k, ef)
    }

    /// The vector engine in words (kind, parameters, layout).
    pub fn describe_vectors(&self) -> String {
        self.vectors.describe()
    }

    /// The vector engine and shard of this folder.
    pub fn backend(&self) -> &BackendConfig {
        &self.backend
    }

    /// A fresh image id (in this folder's shard range with a shared engine).
    pub fn new_image_id(&self) -> Result<u64> {
        let counter = self.store.new_image_id()?;
        match self.backend.shard {
            Some(shard) => shard.image_id(counter),
            None => Ok(counter),
        }
    }

    /// The vector entry of proposal `id` of `image` (with its payload when the engine keeps
    /// one).
    fn vector_entry(
        &self,
        id: u64,
        image_id: u64,
        image: &ImageRecord,
        proposal: &ProposalRecord,
        vector: Vec<f32>,
    ) -> Result<VectorEntry> {
        let payload = if self.payloads.is_some() {
            Some(HitPayload {
                image: image_id,
                root: self.root_path(image.root)?.display().to_string(),
                path: image.rel_path.clone(),
                width: image.width,
                height: image.height,
                bbox: proposal.bbox,
                objectness: proposal.objectness,
                level: proposal.level,
                photo: PhotoInfo::from(&image.photo),
            })
        } else {
            None
        };
        Ok(VectorEntry {
            id,
            vector,
            payload,
        })
    }

    /// Tells an engine that keeps payloads that image `id` now lives at `record`'s path.
    fn image_moved(&self, id: u64, record: &ImageRecord) -> Result<()> {
        let Some(payloads) = &self.payloads else {
            return Ok(());
        };
        let mut entries = Vec::new();
        for (pid, p, v) in self.proposals_of(id)? {
            entries.push(self.vector_entry(pid, id, record, &p, v)?);
        }
        payloads.update_payloads(&entries)
    }

    /// The proposals of image `id` with their stored vectors, in rank order.
    pub fn proposals_of(&self, id: u64) -> Result<Vec<(u64, ProposalRecord, Vec<f32>)>> {
        let records = self.store.proposals_of(id)?;
        let ids: Vec<u64> = records.iter().map(|(pid, _)| *pid).collect();
        let vectors = self.vectors_of(&ids, records.iter().map(|(_, p)| &p.vector))?;
        Ok(records
            .into_iter()
            .zip(vectors)
            .map(|((pid, p), v)| (pid, p, v))
            .collect())
    }

    /// The stored vectors of proposals `ids`, whose records hold `held` (each the record's own
    /// copy, or a note that the quantised engine holds it). A vector that neither has is
    /// corruption: the store and the vector files disagree after open.
    fn vectors_of<'a>(
        &self,
        ids: &[u64],
        held: impl Iterator<Item = &'a StoredVector>,
    ) -> Result<Vec<Vec<f32>>> {
        let held: Vec<Option<Vec<f32>>> = held.map(StoredVector::to_f32).collect();
        let wanted: Vec<u64> = ids
            .iter()
            .zip(&held)
            .filter(|(_, v)| v.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut fetched = match (&self.quantised, wanted.is_empty()) {
            (_, true) => Vec::new(),
            (Some(engine), false) => engine.stored_vectors(&wanted)?,
            (None, false) => vec![None; wanted.len()],
        }
        .into_iter();
        ids.iter()
            .zip(held)
            .map(|(id, v)| match v {
                Some(v) => Ok(v),
                None => fetched.next().flatten().ok_or_else(|| IndexError::Corrupt {
                    what: format!("proposal {id}"),
                    message: "its vector is in neither the store nor the vector index".into(),
                }),
            })
            .collect()
    }

    fn root_path(&self, root: u32) -> Result<PathBuf> {
        self.store
            .roots()?
            .into_iter()
            .find(|(id, _)| *id == root)
            .map(|(_, p)| p)
            .ok_or_else(|| IndexError::Corrupt {
                what: format!("root {root}"),
                message: "unknown root".into(),
            })
    }

    /// The proposals `ids` (those that exist) with their images: from this folder's store, or
    /// from the payloads of a shared engine (which also holds other machines' proposals).
    pub fn hit_records(&self, ids: &[u64]) -> Result<Vec<HitRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        if let Some(payloads) = &self.payloads {
            let mut roots: HashMap<String, u32> = HashMap::new();
            for hit in payloads.fetch(ids)? {
                let root = match roots.get(&hit.payload.root) {
                    Some(r) => *r,
                    None => {
                        let r = self.store.root_id(Path::new(&hit.payload.root))?;
                        roots.insert(hit.payload.root.clone(), r);
                        r
                    }
                };
                out.push(HitRecord {
                    id: hit.id,
                    proposal: ProposalRecord {
                        image: hit.payload.image,
                        bbox: hit.payload.bbox,
                        objectness: hit.payload.objectness,
                        level: hit.payload.level,
                        vector: StoredVector::InVectorIndex,
                    },
                    vector: hit.vector,
                    root,
                    rel_path: hit.payload.path,
                    width: hit.payload.width,
                    height: hit.payload.height,
                    photo: hit.payload.photo,
                });
            }
            return Ok(out);
        }
        let mut images: HashMap<u64, Option<ImageRecord>> = HashMap::new();
        for &id in ids {
            let Some(p) = self.store.proposal(id)? else {
                continue;
            };
            let image = self.image_cached(&mut images, p.image)?;
            let Some(image) = image else { continue };
            out.push(HitRecord {
                id,
                proposal: p,
                vector: Vec::new(), // filled below, all at once
                root: image.root,
                photo: PhotoInfo::from(&image.photo),
                rel_path: image.rel_path,
                width: image.width,
                height: image.height,
            });
        }
        let found: Vec<u64> = out.iter().map(|h| h.id).collect();
        let vectors = self.vectors_of(&found, out.iter().map(|h| &h.proposal.vector))?;
        for (hit, v) in out.iter_mut().zip(vectors) {
            hit.vector = v;
        }
        Ok(out)
    }

    /// [`Index::reconcile`] for the quantised engine without holding every id in memory (at 1M
    /// proposals two id sets and a scan of every proposal record through sled's cache cost
    /// ~100 MB of peak memory at each open): each indexed image's proposal ids follow from its
    /// record, and the engine answers membership from its own tables. Images whose vectors
    /// were lost are dropped (the next run indexes them again). Returns `false`, having changed
    /// nothing, when the engine holds vectors the images do not account for (orphans of a
    /// crash between the vector write and the store commit); the general path removes them.
    fn reconcile_by_images(&self, engine: &IvfVectors) -> Result<bool> {
        let (mut expected, mut missing) = (0usize, 0usize);
        let mut lost: Vec<(u64, ImageRecord)> = Vec::new();
        let mut ids = Vec::new();
        for image in self.store.images() {
            let (id, record) = image?;
            if record.proposals == 0 {
                continue;
            }
            ids.clear();
            ids.extend((0..record.proposals).map(|r| crate::records::proposal_id(id, r)));
            expected += ids.len();
            let absent = engine
                .contains_each(&ids)?
                .iter()
                .filter(|held| !**held)
                .count();
            if absent > 0 {
                missing += absent;
                lost.push((id, record));
            }
        }
        // Live vectors = expected − missing + orphans: orphans exist exactly when this differs.
        // (An image's record and its proposal records are one transaction, so the records
        // themselves agree; sled's own counts would scan every key.)
        if engine.len()? + missing != expected {
            return Ok(false);
        }
        if !lost.is_empty() {
            self.drop_lost_images(lost)?;
            self.vectors.persist()?;
        }
        Ok(true)
    }

    /// Drops the records of images whose vectors only the vector files held and lost (a crash
    /// before they were saved), so that the next `spotter index` run indexes them again.
    fn drop_lost_images(&self, lost: impl IntoIterator<Item = (u64, ImageRecord)>) -> Result<()> {
        let lost: Vec<(u64, ImageRecord)> = lost.into_iter().collect();
        if lost.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            images = lost.len(),
            "the vector files lost the vectors of some images (a crash before they were saved); \
             their records are dropped and the next `spotter index` run indexes them again"
        );
        for (id, record) in &lost {
            self.remove_image(*id, record)?;
        }
        self.store.flush()
    }

    /// An image record through a per-call cache (proposals of one image come together).
    fn image_cached(
        &self,
        cache: &mut HashMap<u64, Option<ImageRecord>>,
        id: u64,
    ) -> Result<Option<ImageRecord>> {
        if let Some(record) = cache.get(&id) {
            return Ok(record.clone());
        }
        let record = self.store.image(id)?;
        cache.insert(id, record.clone());
        Ok(record)
    }

    /// The stored vector of proposal `id`, if it exists.
    pub fn proposal_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        if let Some(p) = self.store.proposal(id)? {
            return Ok(self.vectors_of(&[id], std::iter::once(&p.vector))?.pop());
        }
        Ok(self
            .hit_records(&[id])?
            .into_iter()
            .next()
            .map(|h| h.vector))
    }

    /// Image `id` as the server shows it: from the store, or from a shared engine's payloads.
    /// `None` for unknown ids and for images that failed to index.
    pub fn image_info(&self, id: u64) -> Result<Option<ImageInfo>> {
        if let Some(record) = self.store.image(id)? {
            if record.status != crate::records::ImageStatus::Indexed {
                return Ok(None);
            }
            return Ok(Some(ImageInfo {
                root: record.root,
                path: self.image_path(&record)?,
                photo: PhotoInfo::from(&record.photo),
                rel_path: record.rel_path,
                width: record.width,
                height: record.height,
                size: Some(record.size),
                hash: Some(record.hash),
            }));
        }
        let Some(payloads) = &self.payloads else {
            return Ok(None);
        };
        let Some(payload) = payloads.image_payload(id)? else {
            return Ok(None);
        };
        let root_path = PathBuf::from(&payload.root);
        Ok(Some(ImageInfo {
            root: self.store.root_id(&root_path)?,
            path: payload.path.join_onto(&root_path),
            rel_path: payload.path,
            width: payload.width,
            height: payload.height,
            size: None,
            hash: None,
            photo: payload.photo,
        }))
    }

    /// Checks that `package` is the model this index was built with, by manifest hash (the
    /// same rule as [`Index::open_for_model`]). Every command that embeds text or runs the
    /// model calls it before using the package; a rebuilt package under the same name is
    /// refused, since its vectors would not be comparable with the stored ones.
    pub fn check_model(&self, package: &ModelPackage) -> Result<()> {
        let hash = manifest_hash(package)?;
        if hash == self.meta.manifest_hash {
            Ok(())
        } else {
            Err(model_mismatch(&self.dir, &self.meta, package, &hash))
        }
    }

    /// Index settings.
    pub fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    /// Absolute path of an image record.
    pub fn image_path(&self, image: &ImageRecord) -> Result<PathBuf> {
        Ok(image.rel_path.join_onto(&self.root_path(image.root)?))
    }

    /// Drops deleted vectors from the vector index (the quantised engine also retrains its
    /// lists for the index's size) and saves it.
    pub fn compact(&self) -> Result<()> {
        self.flush_vectors()?;
        self.vectors.compact()?;
        self.vectors.persist()
    }

    /// Saves the vector index and flushes the store, in the order that survives a crash
    /// between the two (see [`Index::commit_image`]).
    pub fn persist(&self) -> Result<()> {
        self.flush_vectors()?;
        if self.quantised.is_some() {
            self.vectors.persist()?;
            self.store.flush()
        } else {
            self.store.flush()?;
            self.vectors.persist()
        }
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<IndexStats> {
        let (mut indexed, mut failed) = (0, 0);
        let mut photos = PhotoStats::default();
        for image in self.store.images() {
            let record = image?.1;
            match record.status {
                ImageStatus::Indexed => {
                    indexed += 1;
                    photos.count(&record.photo);
                }
                ImageStatus::Failed(_) => failed += 1,
            }
        }
        let (images, proposals) = self.store.counts();
        Ok(IndexStats {
            dir: self.dir.clone(),
            model: self.meta.model.clone(),
            roots: self.store.roots()?.into_iter().map(|(_, p)| p).collect(),
            images,
            indexed,
            failed,
            proposals,
            vectors: self.vectors.len()?,
            tombstones: self.vectors.tombstones()?,
            vector_dim: self.meta.vector_dim,
            half_precision: self.meta.half_precision,
            vector_storage: self.vector_storage(),
            vector_engine: self.vectors.describe(),
            backend: self.backend.vectors.to_string(),
            shard: self.backend.shard.map(|s| s.to_string()),
            disk_bytes: dir_size(&self.dir),
            walk_problems: self.walk_problems()?,
            photos,
        })
    }

    fn vector_storage(&self) -> String {
        if self.quantised.is_some() {
            "int8 codes (coarse in memory, fine residual on disk; finer than f16)".into()
        } else if self.payloads.is_some() {
            "f32 in the shared collection".into()
        } else if self.meta.half_precision {
            "f16 (store) and f32 (HNSW graphs)".into()
        } else {
            "f32".into()
        }
    }

    /// Every file that failed to index, with its reason, in image-id order.
    pub fn failures(&self) -> Result<Vec<crate::pipeline::Failure>> {
        let mut out = Vec::new();
        for image in self.store.images() {
            let (_, record) = image?;
            if let crate::records::ImageStatus::Failed(reason) = &record.status {
                out.push(crate::pipeline::Failure {
                    path: self.image_path(&record)?,
                    reason: reason.clone(),
                });
            }
        }
        Ok(out)
    }

    /// What the last run of each root could not walk (see [`IndexStats::walk_problems`]).
    pub fn walk_problems(&self) -> Result<Vec<RootProblem>> {
        let mut out = Vec::new();
        for (root, problems) in self.store.walk_problems()? {
            out.extend(problems.into_iter().map(|p| RootProblem {
                root: root.clone(),
                path: p.path.to_path(),
                reason: p.reason,
            }));
        }
        Ok(out)
    }
}

/// The photo metadata of an indexed image's file at `path`, read from its headers; the recorded
/// modification time when the file is gone or unreadable (and for failed images, which are read
/// again when they change).
fn photo_of_file(path: Option<&Path>, record: &ImageRecord) -> PhotoMetadata {
    let from_file = match (path, &record.status) {
        (Some(path), ImageStatus::Indexed) => ImageFile::open(path, true).ok().and_then(|mut f| {
            let mut reader = f.header_reader().ok()?;
            Some(PhotoMetadata::read(&mut reader, record.mtime_ns))
        }),
        _ => None,
    };
    from_file.unwrap_or_else(|| PhotoMetadata::file_time(record.mtime_ns))
}

/// Bytes of every file under `dir` (what `IndexStats::disk_bytes` counts).
pub fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !(e.depth() == 1 && e.file_name() == SERVER_RECORD))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// A Milvus engine: its vector side and its payload side (one collection).
type SharedEngine = (
    std::sync::Arc<dyn VectorIndex>,
    std::sync::Arc<dyn PayloadStore>,
);

#[cfg(feature = "milvus")]
fn open_milvus(
    config: &crate::backend::MilvusConfig,
    meta: &IndexMeta,
    shard: Option<Shard>,
) -> Result<SharedEngine> {
    let identity = crate::milvus::CollectionIdentity {
        model: meta.model.clone(),
        manifest_hash: meta.manifest_hash.clone(),
        dim: meta.vector_dim,
    };
    let scope = shard.unwrap_or(Shard::WHOLE).proposal_ids();
    let engine = std::sync::Arc::new(crate::milvus::MilvusVectors::open(
        config, &identity, scope,
    )?);
    Ok((engine.clone(), engine))
}

#[cfg(not(feature = "milvus"))]
fn open_milvus(
    config: &crate::backend::MilvusConfig,
    _meta: &IndexMeta,
    _shard: Option<Shard>,
) -> Result<SharedEngine> {
    Err(IndexError::Invalid(format!(
        "this build of Spotter has no Milvus support (collection '{}'): rebuild with `cargo build --release --features milvus`",
        config.collection
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::proposal_id;

    use crate::test_support::{proposals, record, test_meta, D};

    /// A temporary folder, removed when the returned guard drops.
    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    fn meta() -> IndexMeta {
        test_meta()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn every_engine_keeps_store_and_vectors_in_step_through_commit_replace_move_and_remove() {
        for engine in [EmbeddedEngine::Quantised, EmbeddedEngine::Hnsw] {
            let tmp = temp();
            let dir = tmp.path().to_path_buf();
            let roots = [PathBuf::from("/archive")];
            let index = Index::create(&dir, &meta(), &roots, engine).unwrap();
            let (a, b) = (proposals(3, 1), proposals(2, 2));
            let ra = record("a.jpg", 3);
            index.commit_image(1, &ra, &a, None).unwrap();
            index
                .commit_image(2, &record("b.jpg", 2), &b, None)
                .unwrap();
            index.flush_vectors().unwrap();
            assert_eq!(index.vectors.len().unwrap(), 5);
            // Readers get the vectors back whichever engine holds them.
            let got = index.proposals_of(1).unwrap();
            assert_eq!(got.len(), 3);
            for ((id, p, v), (want_p, want_v)) in got.iter().zip(&a) {
                assert_eq!((p.bbox, p.image), (want_p.bbox, 1));
                assert!(close(v, want_v), "{engine:?} {id}");
            }
            let stored_in_sled = matches!(
                index
                    .store
                    .proposal(proposal_id(1, 0))
                    .unwrap()
                    .unwrap()
                    .vector,
                StoredVector::F32(_)
            );
            assert_eq!(stored_in_sled, engine == EmbeddedEngine::Hnsw);
            let hits = index.hit_records(&[proposal_id(2, 1), 999]).unwrap();
            assert_eq!(hits.len(), 1);
            assert!(close(&hits[0].vector, &b[1].1));

            // A new version of a.jpg replaces the old one: old vectors retired.
            let a2 = proposals(1, 3);
            index
                .commit_image(3, &record("a.jpg", 1), &a2, Some((1, &ra)))
                .unwrap();
            index.flush_vectors().unwrap();
            assert_eq!(index.vectors.len().unwrap(), 3);
            let search = index.vectors.search(&a[0].1, 10, 64).unwrap();
            assert!(search.iter().all(|n| n.id >> 16 != 1), "{search:?}");
            // Moves keep the proposals; removals drop both sides.
            let moved = record("c/b.jpg", 2);
            index.move_image(2, &record("b.jpg", 2), &moved).unwrap();
            assert_eq!(
                index.image_info(2).unwrap().unwrap().rel_path,
                moved.rel_path
            );
            index.remove_image(3, &record("a.jpg", 1)).unwrap();
            assert_eq!(index.vectors.len().unwrap(), 2);
            assert_eq!(index.store.counts(), (1, 2));
            index.persist().unwrap();
            drop(index);
            let index = Index::open(&dir).unwrap();
            assert_eq!(index.vectors.len().unwrap(), 2);
            assert_eq!(index.proposals_of(2).unwrap().len(), 2);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn lost_vector_files_drop_their_images_for_re_indexing_and_orphans_are_removed() {
        let tmp = temp();
        let dir = tmp.path().to_path_buf();
        let index = Index::create(
            &dir,
            &meta(),
            &[PathBuf::from("/archive")],
            EmbeddedEngine::Quantised,
        )
        .unwrap();
        index
            .commit_image(1, &record("a.jpg", 2), &proposals(2, 1), None)
            .unwrap();
        index
            .commit_image(2, &record("b.jpg", 2), &proposals(2, 2), None)
            .unwrap();
        index.persist().unwrap();
        drop(index);
        // A power loss that kept sled's records but not the last vectors appended: cut the
        // vector files back to image 1's two slots.
        let ivf = dir.join("vectors/ivf");
        for (name, row) in [("codes.i8", D), ("fine.i8", D), ("slots.bin", 16)] {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(ivf.join(name))
                .unwrap();
            f.set_len((2 * row) as u64).unwrap();
        }
        let index = Index::open(&dir).unwrap();
        assert_eq!(
            index.store.counts(),
            (1, 2),
            "image 2 dropped, to be indexed again"
        );
        assert!(index.store.image(2).unwrap().is_none());
        assert_eq!(index.vectors.len().unwrap(), 2);
        drop(index);

        // A crash after the vectors but before the sled commit leaves orphans: removed at open.
        let index = Index::open(&dir).unwrap();
        index
            .vectors
            .insert(&[VectorEntry::bare(
                proposal_id(9, 0),
                proposals(1, 9)[0].1.clone(),
            )])
            .unwrap();
        index.vectors.persist().unwrap();
        let engine = index.quantised.clone().unwrap();
        assert!(
            !index.reconcile_by_images(&engine).unwrap(),
            "an orphan needs the general path"
        );
        drop((index, engine));
        let index = Index::open(&dir).unwrap();
        assert_eq!(index.vectors.len().unwrap(), 2);
        let engine = index.quantised.clone().unwrap();
        assert!(
            index.reconcile_by_images(&engine).unwrap(),
            "a consistent index opens without id sets"
        );
    }

    #[test]
    fn format_1_image_records_migrate_at_open_in_crash_safe_batches_without_touching_vectors() {
        use crate::test_support::{
            ascii_field, dms_field, exif_block_of, index_in, jpeg_with, write_file,
        };
        use exif::Tag;
        for engine in [EmbeddedEngine::Quantised, EmbeddedEngine::Hnsw] {
            let archive = temp();
            let root = archive.path().canonicalize().unwrap();
            let exif = exif_block_of(&[
                ascii_field(Tag::Make, b"Canon"),
                ascii_field(Tag::Model, b"Canon EOS 5D"),
                ascii_field(Tag::DateTimeOriginal, b"2021:07:04 15:30:00"),
                ascii_field(Tag::OffsetTimeOriginal, b"+02:00"),
                ascii_field(Tag::GPSLatitudeRef, b"S"),
                dms_field(Tag::GPSLatitude, 33, 51, 244_800),
                ascii_field(Tag::GPSLongitudeRef, b"W"),
                dms_field(Tag::GPSLongitude, 151, 12, 550_800),
            ]);
            write_file(&root, "exif.jpg", &jpeg_with(&exif));
            write_file(&root, "plain.jpg", b"\xff\xd8\xff\xd9");
            write_file(&root, "failed.jpg", &jpeg_with(&exif));
            // gone.jpg: indexed, then deleted (not written at all).
            let (tmp, index) = index_in(std::slice::from_ref(&root), engine);
            let mtime = |i: i64| 1_500_000_000_000_000_000 + i * 1_000_000_000;
            let names = ["exif.jpg", "plain.jpg", "gone.jpg", "failed.jpg"];
            for (i, name) in names.iter().enumerate() {
                let id = i as u64 + 1;
                let mut rec = record(name, if i < 3 { 2 } else { 0 });
                rec.mtime_ns = mtime(i as i64);
                if i == 3 {
                    rec.status = crate::records::ImageStatus::Failed("truncated".into());
                }
                let props = proposals(rec.proposals as usize, id);
                index.commit_image(id, &rec, &props, None).unwrap();
            }
            index.persist().unwrap();
            let query = proposals(1, 2)[0].1.clone();
            let before = index.search_vectors(&query, 10, 64).unwrap();
            let proposals_before: Vec<_> =
                (1..=4).map(|id| index.proposals_of(id).unwrap()).collect();

            assert!(
                index.store.image_records_current().unwrap(),
                "a new index has nothing to migrate"
            );
            // The image records written back in format 1, as older folders hold them.
            for image in index.images().collect::<Vec<_>>() {
                let (id, rec) = image.unwrap();
                let bytes = crate::records::encode_v1(&rec).unwrap();
                index.store.put_raw_image(id, bytes).unwrap();
            }
            index.store.forget_image_format().unwrap();
            assert_eq!(index.store.stale_image_ids().unwrap(), vec![1, 2, 3, 4]);

            // A migration that stops after its first batch (a crash) leaves every record readable.
            assert!(!index.migrate_image_records(1, 1).unwrap());
            assert_eq!(index.store.stale_image_ids().unwrap(), vec![2, 3, 4]);
            assert_eq!(index.images().filter(|r| r.is_ok()).count(), 4);
            assert_eq!(
                photo_of(&index, 3),
                PhotoMetadata::file_time(mtime(2)),
                "a format-1 record reads with its file time"
            );
            index.persist().unwrap();
            drop(index);

            // The next open finishes the migration.
            let index = Index::open(tmp.path()).unwrap();
            assert!(index.store.stale_image_ids().unwrap().is_empty());
            assert!(index.store.image_records_current().unwrap());
            let exif_photo = photo_of(&index, 1);
            let taken = exif_photo.taken.unwrap();
            assert_eq!(taken.source, TimeSource::Exif);
            assert_eq!(taken.utc_seconds(), Some(1_625_412_600 - 7200));
            assert_eq!(exif_photo.camera().as_deref(), Some("Canon EOS 5D"));
            let [lat, lon] = exif_photo.gps.unwrap();
            assert!((lat + 33.8568).abs() < 1e-6 && (lon + 151.2153).abs() < 1e-6);
            // No EXIF, file gone, failed image: the recorded modification time.
            assert_eq!(photo_of(&index, 2), PhotoMetadata::file_time(mtime(1)));
            assert_eq!(photo_of(&index, 3), PhotoMetadata::file_time(mtime(2)));
            assert_eq!(photo_of(&index, 4), PhotoMetadata::file_time(mtime(3)));
            let info = index.image_info(1).unwrap().unwrap().photo;
            assert_eq!(info.camera.as_deref(), Some("Canon EOS 5D"));
            assert_eq!(
                index.stats().unwrap().photos,
                PhotoStats {
                    exif_time: 1,
                    file_time: 2,
                    camera: 1,
                    gps: 1,
                }
            );

            // Proposals and vectors are what they were.
            assert_eq!(index.search_vectors(&query, 10, 64).unwrap(), before);
            let proposals_after: Vec<_> =
                (1..=4).map(|id| index.proposals_of(id).unwrap()).collect();
            assert_eq!(proposals_after, proposals_before);
            // Opening again has nothing left to do.
            drop(index);
            let index = Index::open(tmp.path()).unwrap();
            assert_eq!(photo_of(&index, 1), exif_photo);
        }
    }

    fn photo_of(index: &Index, id: u64) -> PhotoMetadata {
        index.image(id).unwrap().unwrap().photo
    }

    #[test]
    fn the_engine_of_an_index_is_fixed_when_it_is_created() {
        let tmp = temp();
        let dir = tmp.path().to_path_buf();
        let index = Index::create(&dir, &meta(), &[], EmbeddedEngine::Hnsw).unwrap();
        drop(index);
        let store = Store::open(&dir).unwrap();
        let settings = IndexSettings {
            embedded_engine: Some(EmbeddedEngine::Quantised),
            ..Default::default()
        };
        let err = Index::settle_engine(&dir, &store, &settings).unwrap_err();
        assert!(
            err.to_string().contains("uses the hnsw vector engine"),
            "{err}"
        );
        assert!("lsh".parse::<EmbeddedEngine>().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
