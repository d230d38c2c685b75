//! An open index: the sled store (truth) plus the vector index, kept consistent at open.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use spotter_model::ModelPackage;

use crate::backend::{BackendConfig, Shard, VectorBackend};
use crate::error::{IndexError, Result};
use crate::records::{ImageRecord, IndexMeta, ProposalRecord, StoredVector};
use crate::relpath::RelPath;
use crate::store::Store;
use crate::vectors::{HitPayload, HnswParams, HnswVectors, VectorEntry, VectorIndex};

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
}

/// One proposal with what a search result shows of its image.
#[derive(Debug, Clone, PartialEq)]
pub struct HitRecord {
    /// Proposal id.
    pub id: u64,
    /// The proposal (box, objectness, level, stored vector).
    pub proposal: ProposalRecord,
    /// Archive root id (in this index folder's roots table).
    pub root: u32,
    /// Path relative to the root.
    pub rel_path: RelPath,
    /// Displayed image width.
    pub width: u32,
    /// Displayed image height.
    pub height: u32,
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
}

/// Something the last run of an archive root could not walk, kept until that root's next run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RootProblem {
    /// The archive root.
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    pub root: PathBuf,
    /// The folder, link or file (the root itself when it was skipped).
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Counts and sizes of an index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexStats {
    /// Index folder.
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    pub dir: PathBuf,
    /// Model package name.
    pub model: String,
    /// Archive roots.
    #[serde(serialize_with = "crate::relpath::serialize_paths")]
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
    /// f16 storage.
    pub half_precision: bool,
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
}

/// An index folder: `db/` (sled) and, with the embedded engine, `vectors/` (HNSW dump).
pub struct Index {
    dir: PathBuf,
    store: Store,
    vectors: Box<dyn VectorIndex>,
    meta: IndexMeta,
    backend: BackendConfig,
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
        Self::finish_open(dir, store, meta, backend)
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
        let vectors: Box<dyn VectorIndex> = match &backend.vectors {
            VectorBackend::Embedded => {
                let params = HnswParams {
                    m: meta.hnsw_m,
                    ef_construction: meta.hnsw_ef_construction,
                };
                Box::new(HnswVectors::open(
                    &dir.join("vectors"),
                    meta.vector_dim,
                    params,
                )?)
            }
            VectorBackend::Milvus(config) => open_milvus(config, &meta, backend.shard)?,
        };
        let index = Index {
            dir: dir.to_path_buf(),
            store,
            vectors,
            meta,
            backend,
        };
        // A folder that only searches a shared collection owns none of its vectors.
        if !index.vectors.keeps_payload() || index.backend.shard.is_some() {
            index.reconcile()?;
        }
        Ok(index)
    }

    /// Makes the vector index agree with the store: re-inserts proposals the last dump missed
    /// (crash between the two) and deletes vectors whose proposal is gone. With a shared
    /// engine this covers this folder's shard only.
    fn reconcile(&self) -> Result<()> {
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
                    let image = self.image_cached(&mut images, p.image)?;
                    if let Some(image) = image {
                        items.push(self.vector_entry(id, p.image, &image, &p)?);
                    }
                }
                self.vectors.insert(&items)?;
            }
        }
        if !missing.is_empty() || !extra.is_empty() {
            self.vectors.persist()?;
        }
        Ok(())
    }

    /// The index folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The vector index.
    pub fn vectors(&self) -> &dyn VectorIndex {
        self.vectors.as_ref()
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

    /// The vector to store for proposal `id` of `image` (with its payload when the engine
    /// keeps one).
    pub fn vector_entry(
        &self,
        id: u64,
        image_id: u64,
        image: &ImageRecord,
        proposal: &ProposalRecord,
    ) -> Result<VectorEntry> {
        let payload = if self.vectors.keeps_payload() {
            Some(HitPayload {
                image: image_id,
                root: self.root_path(image.root)?.display().to_string(),
                path: image.rel_path.clone(),
                width: image.width,
                height: image.height,
                bbox: proposal.bbox,
                objectness: proposal.objectness,
                level: proposal.level,
            })
        } else {
            None
        };
        Ok(VectorEntry {
            id,
            vector: proposal.vector.to_f32(),
            payload,
        })
    }

    /// Tells an engine that keeps payloads that image `id` now lives at `record`'s path.
    pub fn image_moved(&self, id: u64, record: &ImageRecord) -> Result<()> {
        if !self.vectors.keeps_payload() {
            return Ok(());
        }
        let mut entries = Vec::new();
        for (pid, p) in self.store.proposals_of(id)? {
            entries.push(self.vector_entry(pid, id, record, &p)?);
        }
        self.vectors.update_payloads(&entries)
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
        if self.vectors.keeps_payload() {
            let mut roots: HashMap<String, u32> = HashMap::new();
            for hit in self.vectors.fetch(ids)? {
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
                        vector: StoredVector::F32(hit.vector),
                    },
                    root,
                    rel_path: hit.payload.path,
                    width: hit.payload.width,
                    height: hit.payload.height,
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
                root: image.root,
                rel_path: image.rel_path,
                width: image.width,
                height: image.height,
            });
        }
        Ok(out)
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
            return Ok(Some(p.vector.to_f32()));
        }
        Ok(self
            .hit_records(&[id])?
            .into_iter()
            .next()
            .map(|h| h.proposal.vector.to_f32()))
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
                rel_path: record.rel_path,
                width: record.width,
                height: record.height,
                size: Some(record.size),
                hash: Some(record.hash),
            }));
        }
        let Some(payload) = self.vectors.image_payload(id)? else {
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

    /// Drops deleted vectors from the vector index and saves it.
    pub fn compact(&self) -> Result<()> {
        self.vectors.compact()?;
        self.vectors.persist()
    }

    /// Saves the vector index and flushes the store.
    pub fn persist(&self) -> Result<()> {
        self.store.flush()?;
        self.vectors.persist()
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<IndexStats> {
        let (mut indexed, mut failed) = (0, 0);
        for image in self.store.images() {
            match image?.1.status {
                crate::records::ImageStatus::Indexed => indexed += 1,
                crate::records::ImageStatus::Failed(_) => failed += 1,
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
            vector_engine: self.vectors.describe(),
            backend: self.backend.vectors.to_string(),
            shard: self.backend.shard.map(|s| s.to_string()),
            disk_bytes: dir_size(&self.dir),
            walk_problems: self.walk_problems()?,
        })
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

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(feature = "milvus")]
fn open_milvus(
    config: &crate::backend::MilvusConfig,
    meta: &IndexMeta,
    shard: Option<Shard>,
) -> Result<Box<dyn VectorIndex>> {
    let identity = crate::milvus::CollectionIdentity {
        model: meta.model.clone(),
        manifest_hash: meta.manifest_hash.clone(),
        dim: meta.vector_dim,
    };
    let scope = shard.unwrap_or(Shard::WHOLE).proposal_ids();
    Ok(Box::new(crate::milvus::MilvusVectors::open(
        config, &identity, scope,
    )?))
}

#[cfg(not(feature = "milvus"))]
fn open_milvus(
    config: &crate::backend::MilvusConfig,
    _meta: &IndexMeta,
    _shard: Option<Shard>,
) -> Result<Box<dyn VectorIndex>> {
    Err(IndexError::Invalid(format!(
        "this build of Spotter has no Milvus support (collection '{}'): rebuild with `cargo build --release --features milvus`",
        config.collection
    )))
}
