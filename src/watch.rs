//! `serve --watch`: file-system events under the archive roots (the `notify` crate: inotify on
//! Linux) become index jobs, debounced, so new, changed, moved and deleted photos are indexed
//! within seconds. A root whose events cannot be had — a network mount (changes made by other
//! machines raise no local events) or the inotify watch limit reached — is rescanned
//! periodically instead, and the server says so once, with the fix.
//!
//! An index job walks its whole root (the indexer is incremental: unchanged files are only
//! stat'ed), so events only say *when* and *which root*; they never decide what changed, and a
//! missed event is caught by the next job or the periodic rescan.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::error::{Result, SpotterError};
use crate::jobs::{JobSpec, JobState, Jobs};

/// How the watcher turns events into jobs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Archive roots (absolute).
    pub roots: Vec<PathBuf>,
    /// Quiet time after the last event before a job is queued.
    pub debounce: Duration,
    /// Longest an event waits for its job while events keep coming.
    pub max_delay: Duration,
    /// Rescan period of roots that cannot be watched.
    pub fallback_every: Duration,
    /// The index folder: its own writes (when it lies inside a root) are not changes.
    pub index_dir: PathBuf,
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Starts watching `options.roots` and queuing index jobs on `jobs`.
pub fn start(jobs: Jobs, options: WatchOptions) -> Result<WatchHandle> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = match notify::recommended_watcher(tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file-system events are unavailable here: every root is rescanned every {} instead", humane(options.fallback_every));
            None
        }
    };
    let index_dir = options
        .index_dir
        .canonicalize()
        .unwrap_or(options.index_dir.clone());
    let mut polled: Vec<PathBuf> = Vec::new();
    let mut watched: Vec<PathBuf> = Vec::new();
    for root in &options.roots {
        let root = root.canonicalize().unwrap_or(root.clone());
        if let Some(kind) = network_filesystem(&root) {
            tracing::warn!(root = %root.display(), filesystem = kind, "this root is a network mount: changes made by other machines raise no events here, so it is rescanned every {} instead (--rescan-minutes)", humane(options.fallback_every));
            polled.push(root);
            continue;
        }
        let Some(w) = watcher.as_mut() else {
            polled.push(root);
            continue;
        };
        match w.watch(&root, RecursiveMode::Recursive) {
            Ok(()) => watched.push(root),
            Err(e) => {
                let limit = matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
                    || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC));
                if limit {
                    tracing::warn!(root = %root.display(), "the inotify watch limit is reached, so this root is rescanned every {} instead; raise the limit with `sudo sysctl fs.inotify.max_user_watches=1048576` (and in /etc/sysctl.d/ to keep it)", humane(options.fallback_every));
                } else {
                    tracing::warn!(root = %root.display(), error = %e, "cannot watch this root: it is rescanned every {} instead", humane(options.fallback_every));
                }
                if let Some(w) = watcher.as_mut() {
                    let _ = w.unwatch(&root);
                }
                polled.push(root);
            }
        }
    }
    if !watched.is_empty() {
        let (jobs, options, watched) = (jobs.clone(), options.clone(), watched.clone());
        std::thread::Builder::new()
            .name("spotter-watch".into())
            .spawn(move || debounce(&jobs, &options, &watched, &index_dir, &rx))
            .map_err(|e| SpotterError::Internal(format!("cannot start the watch thread: {e}")))?;
    }
    if !polled.is_empty() && !options.fallback_every.is_zero() {
        let every = options.fallback_every;
        std::thread::Builder::new()
            .name("spotter-poll".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                queue(&jobs, polled.clone());
            })
            .map_err(|e| SpotterError::Internal(format!("cannot start the rescan thread: {e}")))?;
    }
    tracing::info!(
        watched = watched.len(),
        "watching the archive roots for changes"
    );
    Ok(WatchHandle { _watcher: watcher })
}

/// A period in words: `15 minutes`, `90 seconds`, `1 minute`.
fn humane(period: Duration) -> String {
    let seconds = period.as_secs();
    match seconds {
        60 => "1 minute".into(),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        1 => "1 second".into(),
        s => format!("{s} seconds"),
    }
}

/// Queues an index job of `roots` unless an identical one is still waiting.
fn queue(jobs: &Jobs, roots: Vec<PathBuf>) {
    let spec = JobSpec::index(roots);
    let waiting = jobs.list().is_ok_and(|list| {
        list.iter()
            .any(|j| j.spec == spec && j.state == JobState::Queued)
    });
    if !waiting {
        if let Err(e) = jobs.submit(spec) {
            tracing::error!(error = %e, "cannot queue the indexing of a change");
        }
    }
}

/// Collects the roots that events touch and queues their job once events have been quiet for
/// `debounce` (or after `max_delay` of continuous events).
fn debounce(
    jobs: &Jobs,
    options: &WatchOptions,
    roots: &[PathBuf],
    index_dir: &Path,
    events: &mpsc::Receiver<notify::Result<notify::Event>>,
) {
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut first: Option<Instant> = None;
    loop {
        let wait = match first {
            Some(_) => options.debounce,
            None => Duration::from_secs(3600),
        };
        match events.recv_timeout(wait) {
            Ok(Ok(event)) => {
                if matches!(event.kind, EventKind::Access(_)) {
                    continue;
                }
                for path in &event.paths {
                    if path.starts_with(index_dir) {
                        continue; // the index's own files
                    }
                    if let Some(root) = roots.iter().find(|r| path.starts_with(r)) {
                        touched.insert(root.clone());
                        first.get_or_insert_with(Instant::now);
                    }
                }
                let overdue = first.is_some_and(|t| t.elapsed() >= options.max_delay);
                if !overdue {
                    continue;
                }
            }
            Ok(Err(e)) => {
                // Lost events (a queue overflow): index every watched root to be sure.
                tracing::warn!(error = %e, "file-system events were lost; indexing every watched root");
                touched.extend(roots.iter().cloned());
                first.get_or_insert_with(Instant::now);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if !touched.is_empty() {
            queue(jobs, std::mem::take(&mut touched).into_iter().collect());
        }
        first = None;
    }
}

/// The network file system `path` is on, if it is one (events would miss other machines'
/// changes).
fn network_filesystem(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statfs` fills the zeroed struct; `c` is a valid NUL-terminated path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    // Magic numbers from linux/magic.h.
    #[allow(clippy::unnecessary_cast)]
    match stat.f_type as i64 {
        0x6969 => Some("nfs"),
        0xFF534D42 => Some("cifs"),
        0xFE534D42 => Some("smb2"),
        0x517B => Some("smb"),
        0x65735546 => Some("fuse (sshfs, rclone, …)"),
        0x564c => Some("ncp"),
        0x01021997 => Some("9p"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_folders_are_not_network_mounts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(network_filesystem(dir.path()), None);
    }

    #[test]
    fn periods_read_as_people_say_them() {
        assert_eq!(humane(Duration::from_secs(900)), "15 minutes");
        assert_eq!(humane(Duration::from_secs(60)), "1 minute");
        assert_eq!(humane(Duration::from_secs(90)), "90 seconds");
        assert_eq!(humane(Duration::from_secs(3)), "3 seconds");
    }
}
