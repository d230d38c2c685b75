//! The first and last steps of a run, both without the model: walk the roots and compare what
//! was found with the store (what needs work, what is gone), and decide which records of gone
//! files may be deleted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::{Failure, IndexRequest, Progress, MASS_DELETION_MIN};
use crate::error::Result;
use crate::index::Index;
use crate::records::{ImageRecord, ImageStatus};
use crate::relpath::RelPath;
use crate::walk::{walk, FoundFile};

/// A found file that needs work, with the record it replaces (same root and path), if any.
#[derive(Debug, Clone)]
pub(super) struct WorkItem {
    pub root: u32,
    pub file: FoundFile,
    pub previous: Option<(u64, ImageRecord)>,
}

/// One archive root of a run.
#[derive(Debug)]
pub(super) struct RootRun {
    /// Its path: canonical when it could be walked, absolute as given otherwise.
    pub key: PathBuf,
    /// Its id in the store; `None` when it was skipped.
    pub id: Option<u32>,
    /// Records it held before the run.
    pub records: usize,
    /// What went wrong this run.
    pub problems: Vec<Failure>,
}

/// What a run has to do, before anything is read.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// New and changed files (and failed ones, with `retry_failed`).
    pub work: Vec<WorkItem>,
    /// Records under walked roots whose file the walk did not find (deleted or moved).
    pub gone: Vec<(u64, ImageRecord)>,
    /// Every root asked for, walked or skipped.
    pub roots: Vec<RootRun>,
    /// Image files found.
    pub files_found: usize,
    /// Found files whose size and time equal their record's.
    pub unchanged: usize,
}

/// Walks every root of `request` and compares the files with `index`'s records. A root that is
/// missing or not a folder is skipped with a problem (its records are not counted as gone);
/// files under a folder the walk could not read are not gone either.
pub(super) fn plan(index: &Index, request: &IndexRequest, progress: &dyn Progress) -> Result<Plan> {
    let mut plan = Plan::default();
    for given in &request.roots {
        let root = match usable_root(given) {
            Ok(root) => root,
            Err(reason) => {
                tracing::warn!(root = %given.display(), %reason, "archive root skipped");
                progress.note(&format!("skipped {}: {reason}", given.display()));
                let key = std::path::absolute(given).unwrap_or_else(|_| given.clone());
                plan.roots.push(RootRun {
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
        plan_root(index, request, progress, root, &mut plan)?;
    }
    Ok(plan)
}

fn plan_root(
    index: &Index,
    request: &IndexRequest,
    progress: &dyn Progress,
    root: PathBuf,
    plan: &mut Plan,
) -> Result<()> {
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
    plan.files_found += files.len();
    let mut seen = HashSet::with_capacity(files.len());
    for file in files {
        seen.insert(file.rel_path.clone());
        let previous = index.image_by_path(root_id, &file.rel_path)?;
        let unchanged = previous.as_ref().is_some_and(|(_, r)| {
            r.size == file.size
                && r.mtime_ns == file.mtime_ns
                && (r.status == ImageStatus::Indexed || !request.retry_failed)
        });
        if unchanged {
            plan.unchanged += 1;
        } else {
            plan.work.push(WorkItem {
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
            plan.gone.push((id, record));
        }
    }
    plan.roots.push(RootRun {
        key: root,
        id: Some(root_id),
        records,
        problems,
    });
    Ok(())
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

/// Gone records that were indexed, by content hash: a found file with one of these hashes is
/// the same file moved or renamed.
pub(super) fn missing_by_hash(
    gone: &[(u64, ImageRecord)],
) -> HashMap<[u8; 32], Vec<(u64, ImageRecord)>> {
    let mut map: HashMap<[u8; 32], Vec<(u64, ImageRecord)>> = HashMap::new();
    for (id, record) in gone {
        if record.status == ImageStatus::Indexed {
            map.entry(record.hash)
                .or_default()
                .push((*id, record.clone()));
        }
    }
    map
}

/// The gone records to delete: all but the indexed ones that a found file claimed as moved
/// (`still_missing`: the ids of the indexed ones nobody claimed).
pub(super) fn doomed<'a>(
    gone: &'a [(u64, ImageRecord)],
    still_missing: &HashSet<u64>,
) -> Vec<&'a (u64, ImageRecord)> {
    gone.iter()
        .filter(|(id, record)| record.status != ImageStatus::Indexed || still_missing.contains(id))
        .collect()
}

/// Why deleting `doomed` of a root's `records` is held back, if it is: at least
/// [`MASS_DELETION_MIN`] and more than half of them gone at once looks like an unmounted or
/// half-synced archive, unless deletions were allowed.
pub(super) fn mass_deletion_hold(doomed: usize, records: usize, allowed: bool) -> Option<String> {
    (!allowed && doomed >= MASS_DELETION_MIN && doomed * 2 > records).then(|| {
        format!(
            "{doomed} of the {records} indexed files under this root are gone; their records are \
             kept, in case the archive is only partly there (an unmounted or half-synced drive). \
             If the files were really deleted, run again with --allow-deletions"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::EmbeddedEngine;
    use crate::pipeline::NoProgress;
    use crate::test_support::{index_in, record, write_file};

    fn params() -> spotter_model::ProposalParams {
        spotter_model::ProposalParams {
            objectness_threshold: 0.1,
            nms_iou: 0.5,
            max_per_image: 100,
        }
    }

    #[test]
    fn plan_finds_new_changed_unchanged_and_gone_files() {
        let archive = tempfile::tempdir().unwrap();
        let root = archive.path().canonicalize().unwrap();
        let same = write_file(&root, "same.jpg", b"same");
        write_file(&root, "new.jpg", b"new");
        write_file(&root, "changed.jpg", b"changed");
        let (_dir, index) = index_in(std::slice::from_ref(&root), EmbeddedEngine::Quantised);
        let meta = std::fs::metadata(&same).unwrap();
        let mut unchanged = record("same.jpg", 0);
        unchanged.size = meta.len();
        unchanged.mtime_ns = crate::walk::mtime_ns(&meta);
        index.commit_image(1, &unchanged, &[], None).unwrap();
        index
            .commit_image(2, &record("changed.jpg", 0), &[], None)
            .unwrap();
        index
            .commit_image(3, &record("deleted.jpg", 0), &[], None)
            .unwrap();
        let request = IndexRequest::new(vec![root.clone()], params());
        let plan = plan(&index, &request, &NoProgress).unwrap();
        assert_eq!((plan.files_found, plan.unchanged), (3, 1));
        let mut work: Vec<(String, Option<u64>)> = plan
            .work
            .iter()
            .map(|w| (w.file.rel_path.display(), w.previous.as_ref().map(|p| p.0)))
            .collect();
        work.sort();
        assert_eq!(
            work,
            [("changed.jpg".into(), Some(2)), ("new.jpg".into(), None)]
        );
        let gone: Vec<u64> = plan.gone.iter().map(|g| g.0).collect();
        assert_eq!(gone, [3]);
        assert_eq!(plan.roots.len(), 1);
        assert_eq!((plan.roots[0].id, plan.roots[0].records), (Some(0), 3));
    }

    #[test]
    fn a_missing_root_is_skipped_and_its_records_are_not_gone() {
        let archive = tempfile::tempdir().unwrap();
        let root = archive.path().canonicalize().unwrap();
        let (_dir, index) = index_in(std::slice::from_ref(&root), EmbeddedEngine::Quantised);
        index
            .commit_image(1, &record("a.jpg", 0), &[], None)
            .unwrap();
        let unplugged = root.join("unplugged-drive");
        let request = IndexRequest::new(vec![unplugged.clone()], params());
        let plan = plan(&index, &request, &NoProgress).unwrap();
        assert!(plan.gone.is_empty() && plan.work.is_empty());
        assert_eq!(plan.roots[0].id, None);
        assert!(plan.roots[0].problems[0]
            .reason
            .contains("records are kept"));
    }

    #[test]
    fn moved_files_are_not_doomed_failed_and_unclaimed_ones_are() {
        let mut failed = record("failed.jpg", 0);
        failed.status = ImageStatus::Failed("bad".into());
        let (mut moved, mut deleted) = (record("moved.jpg", 1), record("deleted.jpg", 1));
        moved.hash = [1; 32];
        deleted.hash = [2; 32];
        let gone = vec![(1, moved), (2, deleted), (3, failed)];
        let missing = missing_by_hash(&gone);
        assert_eq!(missing.len(), 2, "failed records are never a move's source");
        let still: HashSet<u64> = [2].into(); // 1 was claimed by a found file
        let ids: Vec<u64> = doomed(&gone, &still).iter().map(|d| d.0).collect();
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn mass_deletions_are_held_unless_allowed() {
        assert!(mass_deletion_hold(MASS_DELETION_MIN, MASS_DELETION_MIN, false).is_some());
        assert!(mass_deletion_hold(MASS_DELETION_MIN, MASS_DELETION_MIN, true).is_none());
        assert!(mass_deletion_hold(MASS_DELETION_MIN - 1, MASS_DELETION_MIN, false).is_none());
        assert!(
            mass_deletion_hold(50, 100, false).is_none(),
            "half is not more than half"
        );
        assert!(mass_deletion_hold(51, 100, false).is_some());
    }
}
