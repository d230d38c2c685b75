//! An open index: the sled store (truth) plus the vector index, kept consistent at open.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use spotter_model::ModelPackage;

use crate::error::{IndexError, Result};
use crate::records::{ImageRecord, IndexMeta};
use crate::store::Store;
use crate::vectors::{HnswParams, HnswVectors, VectorIndex};

/// Settings chosen when an index is created.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IndexSettings {
    /// Store vectors as f16 on disk.
    pub half_precision: bool,
    /// HNSW parameters.
    pub hnsw: HnswParams,
}

/// Counts and sizes of an index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexStats {
    /// Index folder.
    pub dir: PathBuf,
    /// Model package name.
    pub model: String,
    /// Archive roots.
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
    /// Bytes on disk, whole folder.
    pub disk_bytes: u64,
}

/// An index folder: `db/` (sled) and `vectors/` (HNSW dump).
pub struct Index {
    dir: PathBuf,
    store: Store,
    vectors: HnswVectors,
    meta: IndexMeta,
}

/// Stable hash of a manifest, to tell models apart.
pub fn manifest_hash(package: &ModelPackage) -> String {
    let text = serde_json::to_string(&package.manifest).unwrap_or_default();
    blake3::hash(text.as_bytes()).to_hex().to_string()
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
        let hash = manifest_hash(package);
        let meta = match store.meta()? {
            Some(meta) => {
                if meta.manifest_hash != hash {
                    return Err(IndexError::Incompatible(format!(
                        "{} was built with model '{}' (manifest {}), not '{}' (manifest {}): \
                         use --model {} or another --index folder",
                        dir.display(),
                        meta.model,
                        &meta.manifest_hash[..12],
                        package.manifest.name,
                        &hash[..12],
                        meta.model
                    )));
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
        Self::finish_open(dir, store, meta)
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
        Self::finish_open(dir, store, meta)
    }

    fn finish_open(dir: &Path, store: Store, meta: IndexMeta) -> Result<Self> {
        let params = HnswParams {
            m: meta.hnsw_m,
            ef_construction: meta.hnsw_ef_construction,
        };
        let vectors = HnswVectors::open(&dir.join("vectors"), meta.vector_dim, params)?;
        let index = Index {
            dir: dir.to_path_buf(),
            store,
            vectors,
            meta,
        };
        index.reconcile()?;
        Ok(index)
    }

    /// Makes the vector index agree with the store: re-inserts proposals the last dump missed
    /// (crash between the two) and deletes vectors whose proposal is gone.
    fn reconcile(&self) -> Result<()> {
        let in_vectors = self.vectors.ids();
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
                for &id in chunk {
                    if let Some(p) = self.store.proposal(id)? {
                        items.push((id, p.vector.to_f32()));
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
    pub fn vectors(&self) -> &HnswVectors {
        &self.vectors
    }

    /// Index settings.
    pub fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    /// Absolute path of an image record.
    pub fn image_path(&self, image: &ImageRecord) -> Result<PathBuf> {
        let roots = self.store.roots()?;
        let root = roots
            .iter()
            .find(|(id, _)| *id == image.root)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| IndexError::Corrupt {
                what: format!("root {}", image.root),
                message: "unknown root".into(),
            })?;
        Ok(root.join(&image.rel_path))
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
            vectors: self.vectors.len(),
            tombstones: self.vectors.tombstones(),
            vector_dim: self.meta.vector_dim,
            half_precision: self.meta.half_precision,
            vector_engine: self.vectors.describe(),
            disk_bytes: dir_size(&self.dir),
        })
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
