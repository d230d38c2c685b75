//! One indexing run: walk → plan against the store → parallel read/hash/decode/letterbox →
//! batched inference → a single writer (sled transactions, vector inserts) → deletions.
//!
//! Stages are joined by bounded channels so memory stays flat and the model is the bottleneck.
//! A crash at any point leaves the store consistent (one transaction per image); the next run
//! skips what was written and redoes the rest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rayon::prelude::*;
use serde::Serialize;
use spotter_model::{
    DecodeLimits, ImageFile, ImageTower, ModelError, PreparedImage, Proposal, ProposalParams,
};

use crate::error::{IndexError, Result};
use crate::index::Index;
use crate::records::{ImageRecord, ImageStatus, ProposalRecord, StoredVector, PROPOSAL_BITS};
use crate::relpath::RelPath;
use crate::walk::{walk, FoundFile, WalkOptions};

/// What to index and how.
#[derive(Debug, Clone)]
pub struct IndexRequest {
    /// Archive roots.
    pub roots: Vec<PathBuf>,
    /// Walk options.
    pub walk: WalkOptions,
    /// Images per inference batch.
    pub batch: usize,
    /// Proposal post-processing.
    pub params: ProposalParams,
    /// Decoder limits.
    pub limits: DecodeLimits,
    /// Re-try files that failed before even if unchanged.
    pub retry_failed: bool,
    /// Threads for reading and decoding (0: all cores).
    pub decode_threads: usize,
    /// Save the vector index at least this often during long runs.
    pub checkpoint_every: Duration,
    /// Delete the records of a root even when more than half of them (and at least
    /// [`MASS_DELETION_MIN`]) are gone at once; without it such deletions are skipped with a
    /// warning, since an unmounted or half-synced archive looks just like that.
    pub allow_deletions: bool,
}

/// Deleting at least this many records of a root, and more than half of them, in one run needs
/// [`IndexRequest::allow_deletions`].
pub const MASS_DELETION_MIN: usize = 10;

/// Fresh vectors are handed to the vector index (and become searchable) at least this often.
pub const FRESH_VECTORS_EVERY: Duration = Duration::from_secs(1);

impl IndexRequest {
    /// A request for `roots` with `params` and the defaults: default walk, batch 4, default
    /// decoder limits, no retry of failures, all cores decoding, a checkpoint every 5 minutes.
    pub fn new(roots: Vec<PathBuf>, params: ProposalParams) -> Self {
        IndexRequest {
            roots,
            walk: WalkOptions::default(),
            batch: 4,
            params,
            limits: DecodeLimits::default(),
            retry_failed: false,
            decode_threads: 0,
            checkpoint_every: Duration::from_secs(300),
            allow_deletions: false,
        }
    }
}

/// A file that could not be indexed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    /// The file.
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Image files found by the walk.
    pub files_found: usize,
    /// Unchanged since the last run (not read).
    pub unchanged: usize,
    /// Run through the model.
    pub indexed: usize,
    /// Recognised as moved or renamed (by content hash; no model run).
    pub moved: usize,
    /// Recognised as copies of indexed files (proposals copied; no model run).
    pub copied: usize,
    /// Files that could not be indexed.
    pub failed: Vec<Failure>,
    /// Folders or links the walk could not enter, archive roots that were skipped (missing or
    /// not a folder) and roots whose deletions were skipped, with the reason.
    pub walk_problems: Vec<Failure>,
    /// Records removed because their file is gone.
    pub deleted: usize,
    /// Records of gone files kept because their root looked only partly there (see
    /// [`IndexRequest::allow_deletions`]).
    pub deletions_skipped: usize,
    /// Files whose time or size changed but not their content: record updated, no model run.
    pub touched: usize,
    /// Files that disappeared between the walk and reading them.
    pub vanished: usize,
    /// Proposals written.
    pub proposals_added: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Seconds spent inside the image graph.
    pub model_seconds: f64,
    /// Images through the model per second of wall time.
    pub images_per_second: f64,
    /// Device of the image graph.
    pub device: String,
}

/// Progress callbacks (the CLI draws a progress bar from these).
pub trait Progress: Sync {
    /// The walk and plan are done: `to_process` files need work.
    fn planned(&self, _found: usize, _to_process: usize) {}
    /// One file finished (any outcome); `proposals` were added.
    fn file_done(&self, _path: &Path, _proposals: usize, _failed: bool) {}
    /// A free-form status line.
    fn note(&self, _message: &str) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

struct WorkItem {
    root: u32,
    file: FoundFile,
    previous: Option<(u64, ImageRecord)>,
}

enum Prepared {
    Model {
        item: WorkItem,
        hash: [u8; 32],
        image: PreparedImage,
    },
    Moved {
        item: WorkItem,
        hash: [u8; 32],
        from: (u64, ImageRecord),
    },
    Copied {
        item: WorkItem,
        hash: [u8; 32],
        source: u64,
    },
    Failed {
        item: WorkItem,
        hash: [u8; 32],
        reason: String,
    },
    Vanished {
        item: WorkItem,
    },
    /// Same content as its own record (a `touch`): `item.previous` is that record.
    Touched {
        item: WorkItem,
    },
    /// The index itself failed while preparing (the run stops with this error).
    Broken(IndexError),
}

enum Written {
    Model {
        item: WorkItem,
        hash: [u8; 32],
        width: u32,
        height: u32,
        proposals: Vec<Proposal>,
    },
    Other(Prepared),
}

/// Files in the store, under the walked roots, that the walk did not find: deleted or moved.
type Missing = Mutex<HashMap<[u8; 32], Vec<(u64, ImageRecord)>>>;

/// Runs one indexing pass of `request` into `index` with `tower`.
pub fn run(
    index: &Index,
    tower: &ImageTower,
    request: &IndexRequest,
    progress: &dyn Progress,
) -> Result<RunReport> {
    let started = Instant::now();
    let mut report = RunReport {
        device: tower.device().to_string(),
        ..Default::default()
    };
    if request.params.max_per_image >= 1 << PROPOSAL_BITS {
        return Err(IndexError::Invalid(format!(
            "at most {} proposals per image can be stored",
            (1u32 << PROPOSAL_BITS) - 1
        )));
    }

    // Walk and plan.
    let mut work = Vec::new();
    let mut gone: Vec<(u64, ImageRecord)> = Vec::new();
    // Per root: the key its walk problems are kept under, its id (None when skipped), the
    // problems of this run and how many records it held before it.
    let mut roots: Vec<RootRun> = Vec::new();
    for given in &request.roots {
        let root = match usable_root(given) {
            Ok(root) => root,
            Err(reason) => {
                tracing::warn!(root = %given.display(), %reason, "archive root skipped");
                progress.note(&format!("skipped {}: {reason}", given.display()));
                let key = std::path::absolute(given).unwrap_or_else(|_| given.clone());
                roots.push(RootRun {
                    key,
                    id: None,
                    records: 0,
                    problems: vec![Failure {
                        path: given.clone(),
                        reason,
                    }],
                });
                continue;
            }
        };
        let root_id = index.register_root(&root)?;
        progress.note(&format!("scanning {}", root.display()));
        let (files, problems) = walk(&root, &request.walk)?;
        let problems: Vec<Failure> = problems
            .into_iter()
            .map(|p| Failure {
                path: p.path,
                reason: p.reason,
            })
            .collect();
        // Files under a folder the walk could not read are not known to be gone.
        let unreadable: Vec<RelPath> = problems
            .iter()
            .filter_map(|p| p.path.strip_prefix(&root).ok())
            .map(RelPath::from_relative)
            .collect();
        let files: Vec<_> = match index.backend().shard {
            Some(shard) => files
                .into_iter()
                .filter(|f| shard.owns(&f.rel_path))
                .collect(),
            None => files,
        };
        report.files_found += files.len();
        let mut seen = std::collections::HashSet::with_capacity(files.len());
        for file in files {
            seen.insert(file.rel_path.clone());
            let previous = index.image_by_path(root_id, &file.rel_path)?;
            let unchanged = previous.as_ref().is_some_and(|(_, r)| {
                r.size == file.size
                    && r.mtime_ns == file.mtime_ns
                    && (r.status == ImageStatus::Indexed || !request.retry_failed)
            });
            if unchanged {
                report.unchanged += 1;
            } else {
                work.push(WorkItem {
                    root: root_id,
                    file,
                    previous,
                });
            }
        }
        let mut records = 0;
        for image in index.images() {
            let (id, record) = image?;
            if record.root != root_id {
                continue;
            }
            records += 1;
            if !seen.contains(&record.rel_path)
                && !unreadable.iter().any(|u| record.rel_path.is_under(u))
            {
                gone.push((id, record));
            }
        }
        roots.push(RootRun {
            key: root,
            id: Some(root_id),
            records,
            problems,
        });
    }
    let mut missing_map: HashMap<[u8; 32], Vec<(u64, ImageRecord)>> = HashMap::new();
    for (id, record) in &gone {
        if record.status == ImageStatus::Indexed {
            missing_map
                .entry(record.hash)
                .or_default()
                .push((*id, record.clone()));
        }
    }
    let missing: Missing = Mutex::new(missing_map);
    progress.planned(report.files_found, work.len());

    // Pipeline.
    let batch = request.batch.max(1);
    let threads = if request.decode_threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        request.decode_threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("spotter-decode-{i}"))
        .build()
        .map_err(|e| IndexError::Invalid(format!("decode threads: {e}")))?;
    let (prepared_tx, prepared_rx) = bounded::<Prepared>(batch * 2 + threads);
    let (written_tx, written_rx) = bounded::<Result<Written>>(batch * 2);
    let model_time = Mutex::new(Duration::ZERO);

    let outcome: Result<()> = std::thread::scope(|scope| {
        let missing = &missing;
        let work = &work;
        let pool = &pool;
        scope.spawn(move || {
            pool.install(|| {
                // Stops early when a later stage has failed and dropped its receiver.
                let _ = work.par_iter().try_for_each_with(prepared_tx, |tx, item| {
                    tx.send(prepare(index, tower, request, missing, item))
                        .map_err(|_| ())
                });
            })
        });
        let model_time = &model_time;
        scope.spawn(move || infer(tower, request, batch, prepared_rx, written_tx, model_time));
        write_all(index, request, written_rx, &mut report, progress)
    });
    outcome?;

    // Deletions: what is still missing was neither found nor moved.
    let claimed: std::collections::HashSet<u64> = {
        let left = missing
            .lock()
            .map_err(|_| IndexError::Invalid("lock poisoned".into()))?;
        let still: std::collections::HashSet<u64> =
            left.values().flatten().map(|(id, _)| *id).collect();
        gone.iter()
            .map(|(id, _)| *id)
            .filter(|id| !still.contains(id))
            .collect()
    };
    let doomed: Vec<&(u64, ImageRecord)> = gone
        .iter()
        .filter(|(id, record)| !(claimed.contains(id) && record.status == ImageStatus::Indexed))
        .collect(); // the others moved: already re-pointed
    for root in &mut roots {
        let Some(root_id) = root.id else { continue };
        let mine: Vec<&(u64, ImageRecord)> = doomed
            .iter()
            .copied()
            .filter(|(_, r)| r.root == root_id)
            .collect();
        if mine.is_empty() {
            continue;
        }
        if !request.allow_deletions
            && mine.len() >= MASS_DELETION_MIN
            && mine.len() * 2 > root.records
        {
            let reason = format!(
                "{} of the {} indexed files under this root are gone; their records are kept, \
                 in case the archive is only partly there (an unmounted or half-synced drive). \
                 If the files were really deleted, run again with --allow-deletions",
                mine.len(),
                root.records
            );
            tracing::warn!(root = %root.key.display(), %reason, "deletions skipped");
            progress.note(&reason);
            report.deletions_skipped += mine.len();
            root.problems.push(Failure {
                path: root.key.clone(),
                reason,
            });
            continue;
        }
        for (id, record) in mine {
            index.remove_image(*id, record)?;
            report.deleted += 1;
        }
    }
    // This run's walk problems replace the previous run's, root by root.
    for root in &roots {
        index.set_walk_problems(&root.key, &root.problems)?;
        report.walk_problems.extend(root.problems.iter().cloned());
    }

    let tombstones = index.deleted_vectors()?;
    if tombstones > 1000 && tombstones * 5 > index.vector_count()? {
        progress.note("compacting the vector index (over 20% deleted)");
        index.compact()?;
    }
    progress.note("saving the vector index");
    index.persist()?;
    report.seconds = started.elapsed().as_secs_f64();
    report.model_seconds = model_time.lock().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    report.images_per_second = if report.seconds > 0.0 {
        report.indexed as f64 / report.seconds
    } else {
        0.0
    };
    Ok(report)
}

/// One archive root of a run.
struct RootRun {
    /// Its path: canonical when it could be walked, absolute as given otherwise.
    key: PathBuf,
    /// Its id in the store; `None` when it was skipped.
    id: Option<u32>,
    /// Records it held before the run.
    records: usize,
    /// What went wrong this run.
    problems: Vec<Failure>,
}

/// The canonical path of an archive root, or why it is skipped this run (its records are kept:
/// a missing root is most often an unmounted drive, not a deleted archive).
fn usable_root(given: &Path) -> std::result::Result<PathBuf, String> {
    let skipped = "skipped this run, its records are kept (an unmounted drive?); index it again \
                   when it is back";
    let root = given
        .canonicalize()
        .map_err(|e| format!("archive root cannot be opened ({e}): {skipped}"))?;
    if root.is_dir() {
        Ok(root)
    } else {
        Err(format!("archive root is not a folder: {skipped}"))
    }
}

fn prepare(
    index: &Index,
    tower: &ImageTower,
    request: &IndexRequest,
    missing: &Missing,
    item: &WorkItem,
) -> Prepared {
    let item = WorkItem {
        root: item.root,
        file: item.file.clone(),
        previous: item.previous.clone(),
    };
    // Opened without blocking and checked to be a regular file: a FIFO, a device or (without
    // --follow-symlinks) a symbolic link swapped in since the walk is refused, not waited on.
    let opened =
        ImageFile::open(&item.file.path, request.walk.follow_symlinks).and_then(|mut f| {
            let hash = f.hash()?;
            Ok((f, hash))
        });
    let (mut file, hash) = match opened {
        Ok(opened) => opened,
        Err(ModelError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Prepared::Vanished { item }
        }
        Err(e) => {
            return Prepared::Failed {
                item,
                hash: [0; 32],
                reason: format!("cannot read: {e}"),
            }
        }
    };
    // Touched: the size or time changed but the content hash equals the file's own record, so
    // only the record's size and time need updating (no decode, no model run, no vector churn).
    if item
        .previous
        .as_ref()
        .is_some_and(|(_, r)| r.status == ImageStatus::Indexed && r.hash == hash)
    {
        return Prepared::Touched { item };
    }
    // A moved or renamed file: same content as a record whose file is gone.
    match missing.lock() {
        Ok(mut map) => {
            if let Some(list) = map.get_mut(&hash) {
                if let Some(from) = list.pop() {
                    if list.is_empty() {
                        map.remove(&hash);
                    }
                    return Prepared::Moved { item, hash, from };
                }
            }
        }
        Err(_) => {
            return Prepared::Broken(IndexError::Invalid(
                "the list of missing files is poisoned (a worker panicked)".into(),
            ))
        }
    }
    // A copy of an indexed file.
    let same = match index.images_with_hash(&hash) {
        Ok(same) => same,
        Err(e) => return Prepared::Broken(e),
    };
    let previous_id = item.previous.as_ref().map(|(id, _)| *id);
    if let Some((source, _)) = same
        .into_iter()
        .find(|(id, r)| r.status == ImageStatus::Indexed && Some(*id) != previous_id)
    {
        return Prepared::Copied { item, hash, source };
    }
    let (image, _reserved) = match file.decode(request.limits) {
        Ok(decoded) => decoded,
        Err(e) => {
            return Prepared::Failed {
                item,
                hash,
                reason: e.to_string(),
            }
        }
    };
    drop(file);
    match tower.prepare(&image) {
        Ok(image) => Prepared::Model { item, hash, image },
        Err(e) => Prepared::Failed {
            item,
            hash,
            reason: e.to_string(),
        },
    }
}

fn infer(
    tower: &ImageTower,
    request: &IndexRequest,
    batch: usize,
    input: Receiver<Prepared>,
    output: Sender<Result<Written>>,
    model_time: &Mutex<Duration>,
) {
    // The batch's files and their prepared tensors, side by side (the tensors go to the model
    // as one slice, without copying them).
    let mut pending: (Vec<(WorkItem, [u8; 32])>, Vec<PreparedImage>) =
        (Vec::with_capacity(batch), Vec::with_capacity(batch));
    let flush = |pending: &mut (Vec<(WorkItem, [u8; 32])>, Vec<PreparedImage>)| -> bool {
        if pending.0.is_empty() {
            return true;
        }
        let t = Instant::now();
        let result = tower.detect(&pending.1, &request.params);
        if let Ok(mut total) = model_time.lock() {
            *total += t.elapsed();
        }
        match result {
            Ok(all) => {
                let images = std::mem::take(&mut pending.1);
                for (((item, hash), prepared), proposals) in
                    pending.0.drain(..).zip(images).zip(all)
                {
                    let msg = Written::Model {
                        item,
                        hash,
                        width: prepared.letterbox.src_width,
                        height: prepared.letterbox.src_height,
                        proposals,
                    };
                    if output.send(Ok(msg)).is_err() {
                        return false;
                    }
                }
                true
            }
            Err(e) => {
                pending.0.clear();
                pending.1.clear();
                let _ = output.send(Err(e.into()));
                false
            }
        }
    };
    loop {
        match input.recv_timeout(Duration::from_millis(100)) {
            Ok(Prepared::Model { item, hash, image }) => {
                pending.0.push((item, hash));
                pending.1.push(image);
                if pending.0.len() >= batch && !flush(&mut pending) {
                    return;
                }
            }
            Ok(other) => {
                if output.send(Ok(Written::Other(other))).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if !flush(&mut pending) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut pending);
                return;
            }
        }
    }
}

fn write_all(
    index: &Index,
    request: &IndexRequest,
    input: Receiver<Result<Written>>,
    report: &mut RunReport,
    progress: &dyn Progress,
) -> Result<()> {
    let mut last_checkpoint = Instant::now();
    let record_of = |item: &WorkItem,
                     hash: [u8; 32],
                     width: u32,
                     height: u32,
                     status: ImageStatus,
                     proposals: u32| ImageRecord {
        root: item.root,
        rel_path: item.file.rel_path.clone(),
        size: item.file.size,
        mtime_ns: item.file.mtime_ns,
        hash,
        width,
        height,
        status,
        proposals,
    };
    // A new record for `item` (replacing its previous one) with its proposals.
    let write_new = |item: &WorkItem,
                     record: &ImageRecord,
                     proposals: &[(ProposalRecord, Vec<f32>)]|
     -> Result<u64> {
        let id = index.new_image_id()?;
        index.commit_image(
            id,
            record,
            proposals,
            item.previous.as_ref().map(|(i, r)| (*i, r)),
        )?;
        Ok(id)
    };
    let mut last_insert = Instant::now();
    loop {
        let message = match input.recv_timeout(FRESH_VECTORS_EVERY / 4) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                // Nothing arrives (a slow model or slow disks): make what was written searchable.
                index.flush_vectors()?;
                last_insert = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let (path, added, failed) = match message? {
            Written::Model {
                item,
                hash,
                width,
                height,
                proposals,
            } => {
                let records: Vec<(ProposalRecord, Vec<f32>)> = proposals
                    .into_iter()
                    .map(|p| {
                        let record = ProposalRecord {
                            image: 0, // set by commit_image
                            bbox: p.bbox,
                            objectness: p.objectness,
                            level: p.level,
                            vector: StoredVector::InVectorIndex, // set by commit_image
                        };
                        (record, p.vector)
                    })
                    .collect();
                let record = record_of(
                    &item,
                    hash,
                    width,
                    height,
                    ImageStatus::Indexed,
                    records.len() as u32,
                );
                write_new(&item, &record, &records)?;
                report.indexed += 1;
                report.proposals_added += records.len();
                (item.file.path, records.len(), false)
            }
            Written::Other(Prepared::Moved { item, hash, from }) => {
                let (id, old) = from;
                let record = record_of(
                    &item,
                    hash,
                    old.width,
                    old.height,
                    old.status.clone(),
                    old.proposals,
                );
                if let Some((prev_id, prev)) = &item.previous {
                    // The destination path held another file: drop that record first.
                    index.remove_image(*prev_id, prev)?;
                }
                index.move_image(id, &old, &record)?;
                report.moved += 1;
                (item.file.path, 0, false)
            }
            Written::Other(Prepared::Copied { item, hash, source }) => {
                let src = index.image(source)?.ok_or_else(|| IndexError::Corrupt {
                    what: format!("image {source}"),
                    message: "vanished while copying".into(),
                })?;
                let records: Vec<(ProposalRecord, Vec<f32>)> = index
                    .proposals_of(source)?
                    .into_iter()
                    .map(|(_, p, v)| (p, v))
                    .collect();
                let record = record_of(
                    &item,
                    hash,
                    src.width,
                    src.height,
                    ImageStatus::Indexed,
                    records.len() as u32,
                );
                write_new(&item, &record, &records)?;
                report.copied += 1;
                report.proposals_added += records.len();
                (item.file.path, records.len(), false)
            }
            Written::Other(Prepared::Failed { item, hash, reason }) => {
                let record = record_of(&item, hash, 0, 0, ImageStatus::Failed(reason.clone()), 0);
                write_new(&item, &record, &[])?;
                report.failed.push(Failure {
                    path: item.file.path.clone(),
                    reason,
                });
                (item.file.path, 0, true)
            }
            Written::Other(Prepared::Vanished { item }) => {
                if let Some((id, old)) = &item.previous {
                    index.remove_image(*id, old)?;
                }
                report.vanished += 1;
                (item.file.path, 0, false)
            }
            Written::Other(Prepared::Touched { item }) => {
                if let Some((id, old)) = &item.previous {
                    let record = ImageRecord {
                        size: item.file.size,
                        mtime_ns: item.file.mtime_ns,
                        ..old.clone()
                    };
                    index.update_image(*id, &record)?;
                }
                report.touched += 1;
                (item.file.path, 0, false)
            }
            Written::Other(Prepared::Broken(e)) => return Err(e),
            Written::Other(Prepared::Model { .. }) => unreachable!("model work is never forwarded"),
        };
        progress.file_done(&path, added, failed);
        // Fresh vectors become searchable within about a second (engines that batch them get
        // chunks of at most 2048 from `Index`).
        if last_insert.elapsed() >= FRESH_VECTORS_EVERY {
            index.flush_vectors()?;
            last_insert = Instant::now();
        }
        if last_checkpoint.elapsed() >= request.checkpoint_every {
            index.persist()?;
            last_checkpoint = Instant::now();
        }
    }
    index.flush_vectors()
}
