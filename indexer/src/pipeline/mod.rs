//! One indexing run, in stages: [`plan`] (walk, compare with the store) → [`prepare`] (parallel
//! read, hash, recognise moves and copies, decode, letterbox) → [`infer`] (batched model runs)
//! → [`write`] (the single writer, through [`Index`]) → deletions (held back when a root looks
//! only partly there) → walk problems, compaction and a final save.
//!
//! Stages are joined by bounded channels so memory stays flat and the model is the bottleneck.
//! A crash at any point leaves the index consistent (one commit per image); the next run skips
//! what was written and redoes the rest. Each stage is unit-tested on temporary folders; the
//! model stage is tested end to end.

mod infer;
mod plan;
mod prepare;
mod write;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use rayon::prelude::*;
use serde::Serialize;
use spotter_model::{DecodeLimits, ImageTower, ProposalParams};

use crate::error::{IndexError, Result};
use crate::index::Index;
use crate::records::PROPOSAL_BITS;
use crate::walk::WalkOptions;
use prepare::{Missing, Prepared};
use write::Written;

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
    /// Set from another thread to stop the run early: files not yet read are left for the next
    /// run, what was prepared is still written, and no record is deleted (a file not yet seen
    /// might be one that moved).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Deleting at least this many records of a root, and more than half of them, in one run needs
/// [`IndexRequest::allow_deletions`].
pub const MASS_DELETION_MIN: usize = 10;

/// Fresh vectors are handed to the vector index (and become searchable) at least this often.
pub const FRESH_VECTORS_EVERY: Duration = Duration::from_secs(1);

impl IndexRequest {
    /// True once [`IndexRequest::cancel`] is set.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

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
            cancel: None,
        }
    }
}

/// A file that could not be indexed.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Failure {
    /// The file.
    #[serde(serialize_with = "crate::relpath::serialize_path")]
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
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
    /// The run was stopped through [`IndexRequest::cancel`] before it read every file (no
    /// deletions were made).
    pub cancelled: bool,
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
    let mut plan = plan::plan(index, request, progress)?;
    report.files_found = plan.files_found;
    report.unchanged = plan.unchanged;
    let missing: Missing = Mutex::new(plan::missing_by_hash(&plan.gone));
    progress.planned(report.files_found, plan.work.len());

    let model_time = process(
        index,
        tower,
        request,
        &plan.work,
        &missing,
        &mut report,
        progress,
    )?;
    report.cancelled = request.is_cancelled();
    if report.cancelled {
        // Files not read this run may be the new places of records that look gone.
        plan.gone.clear();
        progress.note("cancelled: what was read is saved; the next run goes on from there");
    }

    // Deletions: what is still missing was neither found nor moved.
    let still_missing: HashSet<u64> = missing
        .into_inner()
        .map_err(|_| IndexError::Invalid("lock poisoned".into()))?
        .into_values()
        .flatten()
        .map(|(id, _)| id)
        .collect();
    let doomed = plan::doomed(&plan.gone, &still_missing);
    for root in &mut plan.roots {
        let Some(root_id) = root.id else { continue };
        let mine: Vec<_> = doomed.iter().filter(|(_, r)| r.root == root_id).collect();
        if mine.is_empty() {
            continue;
        }
        if let Some(reason) =
            plan::mass_deletion_hold(mine.len(), root.records, request.allow_deletions)
        {
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
    for root in &plan.roots {
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
    report.model_seconds = model_time.as_secs_f64();
    report.images_per_second = if report.seconds > 0.0 {
        report.indexed as f64 / report.seconds
    } else {
        0.0
    };
    Ok(report)
}

/// The threaded middle of a run: `work` through prepare (a rayon pool), the model and the
/// writer; returns the time spent in the model.
fn process(
    index: &Index,
    tower: &ImageTower,
    request: &IndexRequest,
    work: &[plan::WorkItem],
    missing: &Missing,
    report: &mut RunReport,
    progress: &dyn Progress,
) -> Result<Duration> {
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

    std::thread::scope(|scope| {
        let pool = &pool;
        scope.spawn(move || {
            pool.install(|| {
                // Stops early when a later stage has failed and dropped its receiver.
                let _ = work.par_iter().try_for_each_with(prepared_tx, |tx, item| {
                    if request.is_cancelled() {
                        return Err(());
                    }
                    tx.send(prepare::prepare(index, tower, request, missing, item))
                        .map_err(|_| ())
                });
            })
        });
        let model_time = &model_time;
        scope.spawn(move || {
            infer::infer(tower, request, batch, prepared_rx, written_tx, model_time)
        });
        write::write_all(index, request, written_rx, report, progress)
    })?;
    Ok(model_time.into_inner().unwrap_or_default())
}
