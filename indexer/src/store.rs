//! The sled database: the index's source of truth.
//!
//! Trees: `meta` (index settings), `roots` (root id → absolute path), `images` (image id →
//! [`ImageRecord`]), `paths` (root id + relative path → image id), `hashes` (content hash + image
//! id → ∅, for move and copy detection), `proposals` (proposal id → [`ProposalRecord`]),
//! `walk_problems` (root path → the last run's [`WalkProblemRecord`]s of that root). Every
//! change of one image touches all its keys in one transaction, so a crash leaves either the old
//! or the new state of that image, never a mix.

use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use crate::error::{IndexError, Result};
use crate::records::{
    decode, encode, proposal_id, version_of, ImageRecord, IndexMeta, ProposalRecord,
    WalkProblemRecord, IMAGE_RECORD_VERSION,
};
use crate::relpath::RelPath;

/// Store format version, in `meta`; bump when tree layout changes.
pub const STORE_VERSION: u32 = 1;

/// `meta` key holding the image record format every image record is known to be in (absent in
/// folders made before format 2: their records are checked and migrated at open).
const IMAGE_FORMAT_KEY: &str = "image_record_format";

/// sled's page cache (its default is 1 GiB): records are small and read a page at a time, so a
/// small cache keeps a served index's memory near its vector engine's.
const SLED_CACHE_BYTES: u64 = 64 << 20;

/// An open index database.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    meta: Tree,
    roots: Tree,
    images: Tree,
    paths: Tree,
    hashes: Tree,
    proposals: Tree,
    walk_problems: Tree,
}

fn be(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| IndexError::Corrupt {
        what: "id".into(),
        message: format!("{} bytes, expected 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

fn path_key(root: u32, rel_path: &RelPath) -> Vec<u8> {
    let mut key = root.to_be_bytes().to_vec();
    key.extend_from_slice(rel_path.as_bytes());
    key
}

/// The raw bytes of a path (UTF-8 paths are their text, as roots were stored before).
fn root_bytes(root: &Path) -> Vec<u8> {
    root.as_os_str().as_encoded_bytes().to_vec()
}

fn hash_key(hash: &[u8; 32], image: u64) -> Vec<u8> {
    let mut key = hash.to_vec();
    key.extend_from_slice(&be(image));
    key
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<IndexError>>;

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    IndexError::Invalid(format!(
                        "the index {} is open in another Spotter process: a `spotter index` or \
                     `eval` run (wait for it to end), or a server that does not answer (search, \
                     stats, eval, index and compact reach a running server by themselves)",
                        dir.display()
                    ))
                }
                other => IndexError::db(&path, other),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| IndexError::db(&path, e));
        let store = Store {
            meta: tree("meta")?,
            roots: tree("roots")?,
            images: tree("images")?,
            paths: tree("paths")?,
            hashes: tree("hashes")?,
            proposals: tree("proposals")?,
            walk_problems: tree("walk_problems")?,
            path: path.clone(),
            db,
        };
        match store.meta.get("store_version").map_err(|e| store.err(e))? {
            None => {
                store
                    .meta
                    .insert("store_version", &STORE_VERSION.to_be_bytes())
                    .map_err(|e| store.err(e))?;
                // A new database: every image record it will hold is in the current format.
                store.set_image_records_current()?;
            }
            Some(v) if v.as_ref() == STORE_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(IndexError::Incompatible(format!(
                    "{} uses store format {:?}, this Spotter reads format {STORE_VERSION}: re-create the index",
                    path.display(),
                    v.as_ref()
                )))
            }
        }
        Ok(store)
    }

    fn err(&self, e: sled::Error) -> IndexError {
        IndexError::db(&self.path, e)
    }

    fn tx_err(&self, e: TransactionError<IndexError>) -> IndexError {
        match e {
            TransactionError::Abort(inner) => inner,
            TransactionError::Storage(s) => self.err(s),
        }
    }

    /// The index settings, if the index has been initialised.
    pub fn meta(&self) -> Result<Option<IndexMeta>> {
        match self.meta.get("index").map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes, "index settings").map(Some),
        }
    }

    /// Writes the index settings.
    pub fn set_meta(&self, meta: &IndexMeta) -> Result<()> {
        self.meta
            .insert("index", encode(meta)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Reads a small named value of the vector index (e.g. the MIPS norm bound).
    pub fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// Writes a small named value.
    pub fn set_value(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(key, value).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The id of an archive root (absolute, canonical path), created on first use. Two callers
    /// registering different new roots at once (searches of a shared collection meeting other
    /// machines' roots) get different ids: the new id is claimed with a compare-and-swap.
    pub fn root_id(&self, root: &Path) -> Result<u32> {
        let text = root_bytes(root);
        loop {
            let mut next = 0u32;
            for (id, path) in self.root_entries()? {
                if path == text {
                    return Ok(id);
                }
                next = next.max(id + 1);
            }
            let claimed = self
                .roots
                .compare_and_swap(
                    next.to_be_bytes(),
                    None as Option<&[u8]>,
                    Some(text.as_slice()),
                )
                .map_err(|e| self.err(e))?;
            if claimed.is_ok() {
                return Ok(next);
            }
            // Another caller took `next` meanwhile (perhaps for this same root): look again.
        }
    }

    /// Every root entry: id and the stored path bytes.
    fn root_entries(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for entry in self.roots.iter() {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let arr: [u8; 4] = k.as_ref().try_into().map_err(|_| IndexError::Corrupt {
                what: "root id".into(),
                message: format!("{} bytes, expected 4", k.len()),
            })?;
            out.push((u32::from_be_bytes(arr), v.to_vec()));
        }
        Ok(out)
    }

    /// All roots: id → path.
    pub fn roots(&self) -> Result<Vec<(u32, PathBuf)>> {
        Ok(self
            .root_entries()?
            .into_iter()
            .map(|(id, bytes)| (id, RelPath::from_bytes(bytes).to_path()))
            .collect())
    }

    /// A fresh, never reused image id.
    pub fn new_image_id(&self) -> Result<u64> {
        Ok(self.db.generate_id().map_err(|e| self.err(e))? + 1)
    }

    /// Looks an image up by root and relative path.
    pub fn image_by_path(
        &self,
        root: u32,
        rel_path: &RelPath,
    ) -> Result<Option<(u64, ImageRecord)>> {
        let Some(id) = self
            .paths
            .get(path_key(root, rel_path))
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let id = id_of(&id)?;
        Ok(self.image(id)?.map(|r| (id, r)))
    }

    /// Reads an image record.
    pub fn image(&self, id: u64) -> Result<Option<ImageRecord>> {
        match self.images.get(be(id)).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes, &format!("image {id}")).map(Some),
        }
    }

    /// Indexed images whose content hash is `hash`.
    pub fn images_with_hash(&self, hash: &[u8; 32]) -> Result<Vec<(u64, ImageRecord)>> {
        let mut out = Vec::new();
        for entry in self.hashes.scan_prefix(hash) {
            let (k, _) = entry.map_err(|e| self.err(e))?;
            let id = id_of(&k[32..])?;
            if let Some(rec) = self.image(id)? {
                out.push((id, rec));
            }
        }
        Ok(out)
    }

    /// Reads a proposal.
    pub fn proposal(&self, id: u64) -> Result<Option<ProposalRecord>> {
        match self.proposals.get(be(id)).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes, &format!("proposal {id}")).map(Some),
        }
    }

    /// The proposals of an image, in rank order.
    pub fn proposals_of(&self, image: u64) -> Result<Vec<(u64, ProposalRecord)>> {
        let start = be(proposal_id(image, 0));
        let end = be(proposal_id(image + 1, 0));
        let mut out = Vec::new();
        for entry in self.proposals.range(start..end) {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let id = id_of(&k)?;
            out.push((id, decode(&v, &format!("proposal {id}"))?));
        }
        Ok(out)
    }

    /// Iterates every image record.
    pub fn images(&self) -> impl Iterator<Item = Result<(u64, ImageRecord)>> + '_ {
        self.images.iter().map(move |entry| {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let id = id_of(&k)?;
            Ok((id, decode(&v, &format!("image {id}"))?))
        })
    }

    /// Iterates every proposal id (keys only).
    pub fn proposal_ids(&self) -> impl Iterator<Item = Result<u64>> + '_ {
        self.proposals
            .iter()
            .keys()
            .map(move |k| id_of(&k.map_err(|e| self.err(e))?))
    }

    /// Number of images and proposals.
    pub fn counts(&self) -> (usize, usize) {
        (self.images.len(), self.proposals.len())
    }

    /// Writes an image with its proposals in one transaction; `replaces` (an older record of
    /// the same file, under another id) is removed in the same transaction.
    pub fn put_image(
        &self,
        id: u64,
        record: &ImageRecord,
        proposals: &[ProposalRecord],
        replaces: Option<(u64, &ImageRecord)>,
    ) -> Result<()> {
        let encoded: Vec<(u64, Vec<u8>)> = proposals
            .iter()
            .enumerate()
            .map(|(rank, p)| Ok((proposal_id(id, rank as u32), encode(p)?)))
            .collect::<Result<_>>()?;
        let image_bytes = encode(record)?;
        (&self.images, &self.paths, &self.hashes, &self.proposals)
            .transaction(|(images, paths, hashes, props)| -> TxResult<()> {
                if let Some((old_id, old)) = replaces {
                    remove_image_tx(images, paths, hashes, props, old_id, old)?;
                }
                images.insert(&be(id), image_bytes.as_slice())?;
                paths.insert(path_key(record.root, &record.rel_path), &be(id))?;
                if record.status == crate::records::ImageStatus::Indexed {
                    hashes.insert(hash_key(&record.hash, id), &[])?;
                }
                for (pid, bytes) in &encoded {
                    props.insert(&be(*pid), bytes.as_slice())?;
                }
                Ok(())
            })
            .map_err(|e| self.tx_err(e))
    }

    /// Points an image at a new path (a moved or renamed file), keeping its id and proposals.
    pub fn move_image(&self, id: u64, old: &ImageRecord, new: &ImageRecord) -> Result<()> {
        let bytes = encode(new)?;
        (&self.images, &self.paths)
            .transaction(|(images, paths)| -> TxResult<()> {
                paths.remove(path_key(old.root, &old.rel_path))?;
                paths.insert(path_key(new.root, &new.rel_path), &be(id))?;
                images.insert(&be(id), bytes.as_slice())?;
                Ok(())
            })
            .map_err(|e| self.tx_err(e))
    }

    /// Rewrites the record of image `id` whose path, hash and proposals did not change (a file
    /// touched without a content change: new size or time only).
    pub fn update_image(&self, id: u64, record: &ImageRecord) -> Result<()> {
        self.images
            .insert(be(id), encode(record)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether every image record is known to be in the current format
    /// ([`IMAGE_RECORD_VERSION`]): true for folders made or migrated by this version.
    pub fn image_records_current(&self) -> Result<bool> {
        Ok(self
            .meta
            .get(IMAGE_FORMAT_KEY)
            .map_err(|e| self.err(e))?
            .is_some_and(|v| v.first().is_some_and(|f| *f >= IMAGE_RECORD_VERSION)))
    }

    /// Notes that every image record is in the current format (after a migration).
    pub fn set_image_records_current(&self) -> Result<()> {
        self.meta
            .insert(IMAGE_FORMAT_KEY, &[IMAGE_RECORD_VERSION])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ids of the image records written in an older format than [`IMAGE_RECORD_VERSION`].
    pub fn stale_image_ids(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in self.images.iter() {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            if version_of(&v) != Some(IMAGE_RECORD_VERSION) {
                out.push(id_of(&k)?);
            }
        }
        Ok(out)
    }

    /// Rewrites image records whose path, hash and proposals did not change (a migration to a
    /// new record format), all in one atomic batch.
    pub fn rewrite_images(&self, records: &[(u64, ImageRecord)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (id, record) in records {
            batch.insert(&be(*id), encode(record)?);
        }
        self.images.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Writes the encoded image record `bytes` as it is (tests write older formats with it).
    #[cfg(test)]
    pub fn put_raw_image(&self, id: u64, bytes: Vec<u8>) -> Result<()> {
        self.images.insert(be(id), bytes).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets that the image records are in the current format, as in folders made before it.
    #[cfg(test)]
    pub fn forget_image_format(&self) -> Result<()> {
        self.meta
            .remove(IMAGE_FORMAT_KEY)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Replaces the walk problems kept for the archive root `root` (none: forgets them).
    pub fn set_walk_problems(
        &self,
        root: &Path,
        problems: &[crate::pipeline::Failure],
    ) -> Result<()> {
        let key = root_bytes(root);
        if problems.is_empty() {
            self.walk_problems.remove(key).map_err(|e| self.err(e))?;
            return Ok(());
        }
        let records: Vec<WalkProblemRecord> = problems
            .iter()
            .map(|p| WalkProblemRecord {
                path: RelPath::from_bytes(root_bytes(&p.path)),
                reason: p.reason.clone(),
            })
            .collect();
        self.walk_problems
            .insert(key, encode(&records)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The walk problems of every root's last run: root → problems, sorted by root.
    pub fn walk_problems(&self) -> Result<Vec<(PathBuf, Vec<WalkProblemRecord>)>> {
        let mut out = Vec::new();
        for entry in self.walk_problems.iter() {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let root = RelPath::from_bytes(k.to_vec()).to_path();
            let what = format!("walk problems of {}", root.display());
            out.push((root, decode(&v, &what)?));
        }
        Ok(out)
    }

    /// Removes an image and its proposals in one transaction.
    pub fn remove_image(&self, id: u64, record: &ImageRecord) -> Result<()> {
        (&self.images, &self.paths, &self.hashes, &self.proposals)
            .transaction(|(images, paths, hashes, props)| -> TxResult<()> {
                remove_image_tx(images, paths, hashes, props, id, record)
            })
            .map_err(|e| self.tx_err(e))
    }

    /// Flushes to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn remove_image_tx(
    images: &sled::transaction::TransactionalTree,
    paths: &sled::transaction::TransactionalTree,
    hashes: &sled::transaction::TransactionalTree,
    props: &sled::transaction::TransactionalTree,
    id: u64,
    record: &ImageRecord,
) -> TxResult<()> {
    images.remove(&be(id))?;
    // Only drop the path mapping if it still points at this image.
    let key = path_key(record.root, &record.rel_path);
    if paths.get(&key)?.as_deref() == Some(&be(id)[..]) {
        paths.remove(key)?;
    }
    hashes.remove(hash_key(&record.hash, id))?;
    for rank in 0..record.proposals {
        props.remove(&be(proposal_id(id, rank)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ImageStatus, StoredVector};

    fn record(path: &str, n: u32) -> ImageRecord {
        ImageRecord {
            root: 0,
            rel_path: path.into(),
            size: 10,
            mtime_ns: 5,
            hash: [7; 32],
            width: 4,
            height: 3,
            status: ImageStatus::Indexed,
            proposals: n,
            photo: Default::default(),
        }
    }

    fn proposal(image: u64) -> ProposalRecord {
        ProposalRecord {
            image,
            bbox: [0.0, 0.0, 1.0, 1.0],
            objectness: 0.9,
            level: 0,
            vector: StoredVector::new(&[1.0, 2.0], false),
        }
    }

    #[test]
    fn roots_registered_at_once_from_many_threads_get_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (threads, each) = (8, 40);
        let start = std::sync::Barrier::new(threads);
        let got: Vec<Vec<(PathBuf, u32)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (store, start) = (&store, &start);
                    scope.spawn(move || {
                        start.wait();
                        (0..each)
                            .flat_map(|i| {
                                // Every thread also registers the shared roots.
                                [format!("/machine-{t}/{i}"), format!("/shared/{i}")]
                            })
                            .map(|root| {
                                let root = PathBuf::from(root);
                                let id = store.root_id(&root).unwrap();
                                (root, id)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let roots = store.roots().unwrap();
        assert_eq!(
            roots.len(),
            threads * each + each,
            "one entry per distinct root"
        );
        for (root, id) in got.into_iter().flatten() {
            assert!(
                roots.contains(&(id, root.clone())),
                "{} got {id}",
                root.display()
            );
        }
    }

    #[test]
    fn put_move_remove_keep_all_trees_consistent() {
        let dir = std::env::temp_dir().join(format!("spotter-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let id = store.new_image_id().unwrap();
        let rec = record("a/cat.jpg", 2);
        store
            .put_image(id, &rec, &[proposal(id), proposal(id)], None)
            .unwrap();
        assert_eq!(store.counts(), (1, 2));
        assert_eq!(
            store
                .image_by_path(0, &"a/cat.jpg".into())
                .unwrap()
                .unwrap()
                .0,
            id
        );
        assert_eq!(store.images_with_hash(&[7; 32]).unwrap().len(), 1);
        assert_eq!(store.proposals_of(id).unwrap().len(), 2);

        let moved = record("b/cat.jpg", 2);
        store.move_image(id, &rec, &moved).unwrap();
        assert!(store
            .image_by_path(0, &"a/cat.jpg".into())
            .unwrap()
            .is_none());
        assert_eq!(
            store
                .image_by_path(0, &"b/cat.jpg".into())
                .unwrap()
                .unwrap()
                .0,
            id
        );

        let id2 = store.new_image_id().unwrap();
        assert_ne!(id, id2);
        store
            .put_image(
                id2,
                &record("b/cat.jpg", 1),
                &[proposal(id2)],
                Some((id, &moved)),
            )
            .unwrap();
        assert_eq!(store.counts(), (1, 1));
        assert_eq!(
            store
                .image_by_path(0, &"b/cat.jpg".into())
                .unwrap()
                .unwrap()
                .0,
            id2
        );

        store.remove_image(id2, &record("b/cat.jpg", 1)).unwrap();
        assert_eq!(store.counts(), (0, 0));
        assert!(store.images_with_hash(&[7; 32]).unwrap().is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
