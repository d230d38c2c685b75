//! A server's background jobs: index roots, rescan every root, retry failed files, compact. Jobs
//! are queued and run one at a time on their own thread, report progress while they run, can be
//! cancelled, and are kept in the index folder (`jobs.json`) so that a job a restart interrupted
//! runs again when the server comes back (indexing resumes where it stopped: committed images
//! are not read again).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpotterError};

/// The jobs file inside the index folder.
pub const JOBS_FILE: &str = "jobs.json";
/// Finished jobs kept in the list (older ones are forgotten).
const FINISHED_KEPT: usize = 100;

/// What a job does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobSpec {
    /// Index these archive roots (absolute paths): new, changed, moved and deleted files.
    Index {
        /// The roots.
        #[schema(value_type = Vec<String>)]
        roots: Vec<PathBuf>,
        /// Retry files that failed before even if unchanged.
        #[serde(default)]
        retry_failed: bool,
        /// Delete records even when more than half of a root's files are gone at once.
        #[serde(default)]
        allow_deletions: bool,
        /// Only paths matching these globs.
        #[serde(default)]
        include: Vec<String>,
        /// Skip paths matching these globs.
        #[serde(default)]
        exclude: Vec<String>,
        /// Follow symbolic links.
        #[serde(default)]
        follow_symlinks: bool,
        /// Also walk hidden and system folders.
        #[serde(default)]
        include_hidden: bool,
    },
    /// Index every root the index knows again.
    Rescan,
    /// Retry every file that failed, in every root.
    RetryFailed,
    /// Drop deleted vectors from the vector index.
    Compact,
}

impl JobSpec {
    /// An index job of `roots` with the defaults (no retries, careful deletions, default walk).
    pub fn index(roots: Vec<PathBuf>) -> Self {
        JobSpec::Index {
            roots,
            retry_failed: false,
            allow_deletions: false,
            include: Vec::new(),
            exclude: Vec::new(),
            follow_symlinks: false,
            include_hidden: false,
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the jobs before it.
    Queued,
    /// Running now.
    Running,
    /// Finished; `result` says what it did.
    Done,
    /// Stopped by an error; `error` says which.
    Failed,
    /// Cancelled before or while it ran (what an index job wrote is kept).
    Cancelled,
}

impl JobState {
    /// The state as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// How far a running job is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct JobProgress {
    /// Files that need work, once the walk is done.
    pub files_total: Option<usize>,
    /// Files done (any outcome).
    pub files_done: usize,
    /// Objects (proposals) added.
    pub proposals: usize,
    /// Files that failed.
    pub failures: usize,
    /// Files per second since the walk ended.
    pub files_per_second: f64,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
    /// What it is doing.
    pub message: String,
}

/// One job with its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Job {
    /// Its number (increasing).
    pub id: u64,
    /// What it does.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// How far it is.
    pub progress: JobProgress,
    /// Unix times in seconds.
    pub submitted: u64,
    /// When it started (last start, after a restart).
    pub started: Option<u64>,
    /// When it ended.
    pub finished: Option<u64>,
    /// What it did (an index job's report, a compaction's counts).
    #[schema(value_type = Option<JobResult>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What a finished job did, as `result` holds it (kept as JSON in the jobs file).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum JobResult {
    /// An index, rescan or retry job: the indexer's report.
    Index(spotter_indexer::pipeline::RunReport),
    /// A compaction.
    Compact(CompactReport),
}

/// What a compaction did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompactReport {
    /// Deleted vectors dropped from the vector index.
    pub dropped: usize,
    /// Live vectors left.
    pub live: usize,
}

/// What a job's code gets: its cancellation flag and a place to report progress.
pub struct JobControl {
    id: u64,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl JobControl {
    /// The flag the job's work checks (the indexer stops between files).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// True once the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Replaces the job's progress.
    pub fn report(&self, progress: JobProgress) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            if let Some(job) = queue.jobs.iter_mut().find(|j| j.id == self.id) {
                job.progress = progress;
            }
        }
    }
}

/// Progress of an indexing run, as a job's progress.
pub struct IndexProgress<'a> {
    control: &'a JobControl,
    counts: Mutex<(JobProgress, Option<Instant>)>,
}

impl<'a> IndexProgress<'a> {
    /// Reports to `control`.
    pub fn new(control: &'a JobControl) -> Self {
        IndexProgress {
            control,
            counts: Mutex::new((JobProgress::default(), None)),
        }
    }

    fn update(&self, change: impl FnOnce(&mut JobProgress, &mut Option<Instant>)) {
        if let Ok(mut counts) = self.counts.lock() {
            let (progress, since) = &mut *counts;
            change(progress, since);
            if let Some(since) = since {
                let secs = since.elapsed().as_secs_f64().max(1e-3);
                progress.files_per_second = progress.files_done as f64 / secs;
                progress.eta_seconds = progress.files_total.and_then(|total| {
                    let left = total.saturating_sub(progress.files_done) as f64;
                    (progress.files_per_second > 0.0).then(|| left / progress.files_per_second)
                });
            }
            self.control.report(progress.clone());
        }
    }
}

impl spotter_indexer::Progress for IndexProgress<'_> {
    fn planned(&self, found: usize, to_process: usize) {
        self.update(|p, since| {
            p.files_total = Some(to_process);
            p.message = format!("{found} images found, {} unchanged", found - to_process);
            *since = Some(Instant::now());
        });
    }
    fn file_done(&self, _path: &Path, proposals: usize, failed: bool) {
        self.update(|p, _| {
            p.files_done += 1;
            p.proposals += proposals;
            p.failures += usize::from(failed);
        });
    }
    fn note(&self, message: &str) {
        self.update(|p, _| p.message = message.to_string());
    }
}

/// Runs a job: its result, or an error. Given the job's control.
pub type Runner = dyn Fn(&JobSpec, &JobControl) -> Result<serde_json::Value> + Send + Sync;

struct Queue {
    jobs: Vec<Job>,
    next_id: u64,
    waiting: VecDeque<u64>,
    running: Option<(u64, Arc<AtomicBool>)>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    file: PathBuf,
}

/// The job queue of one index, with its worker thread.
#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Jobs {
    /// Loads the jobs of index folder `dir` (jobs that were queued or running when the last
    /// server stopped are queued again) and starts the worker that runs them with `runner`.
    pub fn start(dir: &Path, runner: Box<Runner>) -> Result<Self> {
        let file = dir.join(JOBS_FILE);
        let mut jobs: Vec<Job> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                SpotterError::Usage(format!(
                    "{} is not a job list ({e}): move it away to start with no jobs",
                    file.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(SpotterError::Io { path: file, source }),
        };
        let mut waiting = VecDeque::new();
        let mut resumed = false;
        for job in &mut jobs {
            if matches!(job.state, JobState::Queued | JobState::Running) {
                resumed |= job.state == JobState::Running;
                if job.state == JobState::Running {
                    job.progress.message = "interrupted by a restart; runs again".into();
                }
                job.state = JobState::Queued;
                waiting.push_back(job.id);
            }
        }
        let next_id = jobs.iter().map(|j| j.id + 1).max().unwrap_or(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs,
                next_id,
                waiting,
                running: None,
                stopping: false,
            }),
            wake: Condvar::new(),
            file,
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("spotter-jobs".into())
            .spawn(move || work(&worker, &*runner))
            .map_err(|e| SpotterError::Internal(format!("cannot start the job thread: {e}")))?;
        let jobs = Jobs { shared };
        if resumed {
            let queue = jobs.lock()?;
            jobs.save(&queue)?;
        }
        Ok(jobs)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Queue>> {
        self.shared
            .queue
            .lock()
            .map_err(|_| SpotterError::Internal("the job list is poisoned".into()))
    }

    fn save(&self, queue: &Queue) -> Result<()> {
        save(&self.shared.file, &queue.jobs)
    }

    /// Queues `spec`; returns the job.
    pub fn submit(&self, spec: JobSpec) -> Result<Job> {
        if let JobSpec::Index { roots, .. } = &spec {
            if roots.is_empty() {
                return Err(SpotterError::Usage(
                    "an index job needs at least one root".into(),
                ));
            }
            if let Some(relative) = roots.iter().find(|r| !r.is_absolute()) {
                return Err(SpotterError::Usage(format!(
                    "job roots must be absolute paths (as the server sees them): {}",
                    relative.display()
                )));
            }
        }
        let mut queue = self.lock()?;
        let job = Job {
            id: queue.next_id,
            spec,
            state: JobState::Queued,
            progress: JobProgress::default(),
            submitted: now(),
            started: None,
            finished: None,
            result: None,
            error: None,
        };
        queue.next_id += 1;
        queue.waiting.push_back(job.id);
        queue.jobs.push(job.clone());
        self.save(&queue)?;
        self.shared.wake.notify_all();
        Ok(job)
    }

    /// Cancels job `id`: a queued job at once, a running one between two files.
    pub fn cancel(&self, id: u64) -> Result<Job> {
        let mut queue = self.lock()?;
        let state = queue
            .jobs
            .iter()
            .find(|j| j.id == id)
            .map(|j| j.state)
            .ok_or_else(|| SpotterError::NotFound(format!("no job {id}")))?;
        match state {
            JobState::Queued => {
                queue.waiting.retain(|w| *w != id);
                if let Some(job) = queue.jobs.iter_mut().find(|j| j.id == id) {
                    job.state = JobState::Cancelled;
                    job.finished = Some(now());
                }
                self.save(&queue)?;
            }
            JobState::Running => {
                if let Some((running, flag)) = &queue.running {
                    if *running == id {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
            }
            _ => {
                return Err(SpotterError::Usage(format!(
                    "job {id} has already ended ({})",
                    state.name()
                )))
            }
        }
        self.get(id, &queue)
    }

    fn get(&self, id: u64, queue: &Queue) -> Result<Job> {
        queue
            .jobs
            .iter()
            .find(|j| j.id == id)
            .cloned()
            .ok_or_else(|| SpotterError::NotFound(format!("no job {id}")))
    }

    /// Job `id`.
    pub fn job(&self, id: u64) -> Result<Job> {
        let queue = self.lock()?;
        self.get(id, &queue)
    }

    /// Every job kept, newest first.
    pub fn list(&self) -> Result<Vec<Job>> {
        let queue = self.lock()?;
        Ok(queue.jobs.iter().rev().cloned().collect())
    }

    /// Stops the worker after the running job (which is cancelled) and saves the list; a job
    /// still running then is saved as running, so the next server runs it again.
    pub fn stop(&self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.stopping = true;
            if let Some((_, flag)) = &queue.running {
                flag.store(true, Ordering::Relaxed);
            }
        }
        self.shared.wake.notify_all();
    }
}

fn save(file: &Path, jobs: &[Job]) -> Result<()> {
    let temp = file.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(jobs)
        .map_err(|e| SpotterError::Internal(format!("cannot encode the job list: {e}")))?;
    let io = |source| SpotterError::Io {
        path: file.to_path_buf(),
        source,
    };
    std::fs::write(&temp, bytes).map_err(io)?;
    std::fs::rename(&temp, file).map_err(io)
}

fn work(shared: &Arc<Shared>, runner: &Runner) {
    loop {
        let (id, spec, cancel) = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            loop {
                if queue.stopping {
                    return;
                }
                if let Some(id) = queue.waiting.pop_front() {
                    let cancel = Arc::new(AtomicBool::new(false));
                    queue.running = Some((id, cancel.clone()));
                    let Some(job) = queue.jobs.iter_mut().find(|j| j.id == id) else {
                        continue;
                    };
                    job.state = JobState::Running;
                    job.started = Some(now());
                    job.progress = JobProgress::default();
                    let spec = job.spec.clone();
                    if let Err(e) = save(&shared.file, &queue.jobs) {
                        tracing::warn!(error = %e, "cannot save the job list");
                    }
                    break (id, spec, cancel);
                }
                queue = match shared.wake.wait(queue) {
                    Ok(queue) => queue,
                    Err(_) => return,
                };
            }
        };
        let control = JobControl {
            id,
            cancel: cancel.clone(),
            shared: shared.clone(),
        };
        tracing::info!(job = id, ?spec, "job started");
        let outcome = runner(&spec, &control);
        let Ok(mut queue) = shared.queue.lock() else {
            return;
        };
        queue.running = None;
        let stopping = queue.stopping;
        if let Some(job) = queue.jobs.iter_mut().find(|j| j.id == id) {
            let cancelled = cancel.load(Ordering::Relaxed);
            match outcome {
                // A stop of the server interrupts the job: it stays running in the file, so
                // the next server runs it again.
                Ok(_) | Err(_) if stopping && cancelled => {}
                Ok(result) => {
                    job.state = if cancelled {
                        JobState::Cancelled
                    } else {
                        JobState::Done
                    };
                    job.result = Some(result);
                    job.finished = Some(now());
                }
                Err(e) => {
                    tracing::error!(job = id, error = %e, "job failed");
                    job.state = JobState::Failed;
                    job.error = Some(e.to_string());
                    job.finished = Some(now());
                }
            }
            tracing::info!(job = id, state = ?job.state, "job ended");
        }
        // Forget the oldest finished jobs past the limit.
        let finished = queue.jobs.iter().filter(|j| j.finished.is_some()).count();
        let mut excess = finished.saturating_sub(FINISHED_KEPT);
        queue.jobs.retain(|j| {
            let drop = excess > 0 && j.finished.is_some();
            excess -= usize::from(drop);
            !drop
        });
        if let Err(e) = save(&shared.file, &queue.jobs) {
            tracing::warn!(error = %e, "cannot save the job list");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait_for(jobs: &Jobs, id: u64, state: JobState) -> Job {
        for _ in 0..500 {
            let job = jobs.job(id).unwrap();
            if job.state == state {
                return job;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("job {id} never reached {state:?}: {:?}", jobs.job(id));
    }

    /// A runner that counts to `n` files, stopping when cancelled.
    fn counting(n: usize) -> Box<Runner> {
        Box::new(move |_spec, control| {
            for i in 0..n {
                if control.is_cancelled() {
                    return Ok(serde_json::json!({ "done": i }));
                }
                control.report(JobProgress {
                    files_total: Some(n),
                    files_done: i + 1,
                    ..Default::default()
                });
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(serde_json::json!({ "done": n }))
        })
    }

    #[test]
    fn jobs_run_one_at_a_time_in_order_with_progress_and_results() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::start(dir.path(), counting(20)).unwrap();
        let a = jobs.submit(JobSpec::Compact).unwrap();
        let b = jobs.submit(JobSpec::Rescan).unwrap();
        assert!(b.id > a.id);
        let done = wait_for(&jobs, b.id, JobState::Done);
        assert_eq!(done.result, Some(serde_json::json!({ "done": 20 })));
        assert_eq!(done.progress.files_done, 20);
        let first = jobs.job(a.id).unwrap();
        assert!(first.finished.unwrap() <= done.started.unwrap());
        assert_eq!(jobs.list().unwrap()[0].id, b.id, "newest first");
        let relative = JobSpec::Index {
            roots: vec!["photos".into()],
            retry_failed: false,
            allow_deletions: false,
            include: vec![],
            exclude: vec![],
            follow_symlinks: false,
            include_hidden: false,
        };
        assert!(matches!(jobs.submit(relative), Err(SpotterError::Usage(_))));
    }

    #[test]
    fn cancelling_a_queued_or_running_job_and_resuming_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::start(dir.path(), counting(1_000_000)).unwrap();
        let running = jobs.submit(JobSpec::Compact).unwrap();
        let queued = jobs.submit(JobSpec::RetryFailed).unwrap();
        wait_for(&jobs, running.id, JobState::Running);
        assert_eq!(jobs.cancel(queued.id).unwrap().state, JobState::Cancelled);
        jobs.cancel(running.id).unwrap();
        let cancelled = wait_for(&jobs, running.id, JobState::Cancelled);
        assert!(cancelled.progress.files_done < 1_000_000);
        assert!(jobs.cancel(running.id).is_err(), "already ended");
        assert!(matches!(jobs.cancel(999), Err(SpotterError::NotFound(_))));

        // A job running when the server stops runs again in the next one.
        let interrupted = jobs.submit(JobSpec::Rescan).unwrap();
        wait_for(&jobs, interrupted.id, JobState::Running);
        jobs.stop();
        std::thread::sleep(Duration::from_millis(100));
        let again = Jobs::start(dir.path(), counting(3)).unwrap();
        let resumed = wait_for(&again, interrupted.id, JobState::Done);
        assert_eq!(resumed.result, Some(serde_json::json!({ "done": 3 })));
        let next = again.submit(JobSpec::Compact).unwrap();
        assert!(
            next.id > interrupted.id,
            "ids keep increasing across restarts"
        );
    }
}
