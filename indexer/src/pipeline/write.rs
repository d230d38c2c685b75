//! The single writer: every outcome of a file becomes one change of the index (through
//! [`Index`]'s commit, move, update and removal), in arrival order, with the checkpoints and
//! the flushes that keep fresh vectors searchable.

use std::path::PathBuf;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use spotter_model::Proposal;

use super::plan::WorkItem;
use super::prepare::Prepared;
use super::{Failure, IndexRequest, Progress, RunReport, FRESH_VECTORS_EVERY};
use crate::error::{IndexError, Result};
use crate::index::Index;
use crate::metadata::PhotoMetadata;
use crate::records::{ImageRecord, ImageStatus, ProposalRecord, StoredVector};

/// What reaches the writer: the model's proposals for a file, or any other outcome.
pub(super) enum Written {
    Model {
        item: WorkItem,
        hash: [u8; 32],
        photo: PhotoMetadata,
        width: u32,
        height: u32,
        proposals: Vec<Proposal>,
    },
    Other(Prepared),
}

/// What one write did, for the progress callback.
#[derive(Debug, PartialEq)]
pub(super) struct Done {
    pub path: PathBuf,
    pub proposals: usize,
    pub failed: bool,
}

/// Writes everything `input` brings until it closes, then hands the last vectors to the engine.
pub(super) fn write_all(
    index: &Index,
    request: &IndexRequest,
    input: Receiver<Result<Written>>,
    report: &mut RunReport,
    progress: &dyn Progress,
) -> Result<()> {
    let mut last_checkpoint = Instant::now();
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
        let done = write_one(index, message?, report)?;
        progress.file_done(&done.path, done.proposals, done.failed);
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

/// The record of `item` as found now, with the given content facts.
fn record_of(
    item: &WorkItem,
    hash: [u8; 32],
    (width, height): (u32, u32),
    status: ImageStatus,
    proposals: u32,
    photo: PhotoMetadata,
) -> ImageRecord {
    ImageRecord {
        root: item.root,
        rel_path: item.file.rel_path.clone(),
        size: item.file.size,
        mtime_ns: item.file.mtime_ns,
        hash,
        width,
        height,
        status,
        proposals,
        photo,
    }
}

/// A new image id for `record` with `proposals`, replacing `item`'s previous record.
fn commit_new(
    index: &Index,
    item: &WorkItem,
    record: &ImageRecord,
    proposals: &[(ProposalRecord, Vec<f32>)],
) -> Result<u64> {
    let id = index.new_image_id()?;
    index.commit_image(
        id,
        record,
        proposals,
        item.previous.as_ref().map(|(i, r)| (*i, r)),
    )?;
    Ok(id)
}

/// Applies one outcome to the index and counts it in `report`.
pub(super) fn write_one(index: &Index, message: Written, report: &mut RunReport) -> Result<Done> {
    let done = |item: WorkItem, proposals: usize, failed: bool| Done {
        path: item.file.path,
        proposals,
        failed,
    };
    match message {
        Written::Model {
            item,
            hash,
            photo,
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
            let n = records.len();
            let status = ImageStatus::Indexed;
            let record = record_of(&item, hash, (width, height), status, n as u32, photo);
            commit_new(index, &item, &record, &records)?;
            report.indexed += 1;
            report.proposals_added += n;
            Ok(done(item, n, false))
        }
        Written::Other(Prepared::Moved {
            item,
            hash,
            from,
            photo,
        }) => {
            let (id, old) = from;
            let size = (old.width, old.height);
            let record = record_of(&item, hash, size, old.status.clone(), old.proposals, photo);
            if let Some((prev_id, prev)) = &item.previous {
                // The destination path held another file: drop that record first.
                index.remove_image(*prev_id, prev)?;
            }
            index.move_image(id, &old, &record)?;
            report.moved += 1;
            Ok(done(item, 0, false))
        }
        Written::Other(Prepared::Copied {
            item,
            hash,
            source,
            photo,
        }) => {
            let src = index.image(source)?.ok_or_else(|| IndexError::Corrupt {
                what: format!("image {source}"),
                message: "vanished while copying".into(),
            })?;
            let records: Vec<(ProposalRecord, Vec<f32>)> = index
                .proposals_of(source)?
                .into_iter()
                .map(|(_, p, v)| (p, v))
                .collect();
            let n = records.len();
            let size = (src.width, src.height);
            let record = record_of(&item, hash, size, ImageStatus::Indexed, n as u32, photo);
            commit_new(index, &item, &record, &records)?;
            report.copied += 1;
            report.proposals_added += n;
            Ok(done(item, n, false))
        }
        Written::Other(Prepared::Failed { item, hash, reason }) => {
            let status = ImageStatus::Failed(reason.clone());
            let photo = PhotoMetadata::file_time(item.file.mtime_ns);
            let record = record_of(&item, hash, (0, 0), status, 0, photo);
            commit_new(index, &item, &record, &[])?;
            report.failed.push(Failure {
                path: item.file.path.clone(),
                reason,
            });
            Ok(done(item, 0, true))
        }
        Written::Other(Prepared::Vanished { item }) => {
            if let Some((id, old)) = &item.previous {
                index.remove_image(*id, old)?;
            }
            report.vanished += 1;
            Ok(done(item, 0, false))
        }
        Written::Other(Prepared::Touched { item, photo }) => {
            if let Some((id, old)) = &item.previous {
                let record = ImageRecord {
                    size: item.file.size,
                    mtime_ns: item.file.mtime_ns,
                    photo,
                    ..old.clone()
                };
                index.update_image(*id, &record)?;
            }
            report.touched += 1;
            Ok(done(item, 0, false))
        }
        Written::Other(Prepared::Broken(e)) => Err(e),
        Written::Other(Prepared::Model { .. }) => Err(IndexError::Invalid(
            "internal: a file for the model reached the writer without its proposals".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::EmbeddedEngine;
    use crate::metadata::{CaptureTime, TimeSource};
    use crate::test_support::{found, index_in, proposals, write_file};

    /// What the prepare stage read of a photo with EXIF.
    fn exif_photo() -> PhotoMetadata {
        PhotoMetadata {
            taken: Some(CaptureTime {
                seconds: 1_625_412_600,
                offset_minutes: Some(120),
                source: TimeSource::Exif,
            }),
            make: Some("Canon".into()),
            model: Some("Canon EOS 5D".into()),
            gps: Some([48.8584, 2.2945]),
        }
    }

    fn model_output(n: usize, seed: u64) -> Vec<Proposal> {
        proposals(n, seed)
            .into_iter()
            .map(|(p, vector)| Proposal {
                bbox: p.bbox,
                objectness: p.objectness,
                level: p.level,
                vector,
            })
            .collect()
    }

    #[test]
    fn every_outcome_is_one_consistent_change_of_the_index() {
        for engine in [EmbeddedEngine::Quantised, EmbeddedEngine::Hnsw] {
            let archive = tempfile::tempdir().unwrap();
            let root = archive.path().canonicalize().unwrap();
            let (_dir, index) = index_in(std::slice::from_ref(&root), engine);
            let mut report = RunReport::default();
            let item = |name: &str, previous: Option<(u64, ImageRecord)>| {
                write_file(&root, name, name.as_bytes());
                WorkItem {
                    root: 0,
                    file: found(&root, name),
                    previous,
                }
            };
            let by_path = |name: &str| index.image_by_path(0, &name.into()).unwrap();

            // A model result: a record and its proposals, vectors searchable.
            let a = item("a.jpg", None);
            let done = write_one(
                &index,
                Written::Model {
                    item: a,
                    hash: [1; 32],
                    photo: exif_photo(),
                    width: 64,
                    height: 48,
                    proposals: model_output(3, 1),
                },
                &mut report,
            )
            .unwrap();
            assert_eq!((done.proposals, done.failed), (3, false));
            let (a_id, a_rec) = by_path("a.jpg").expect("a is recorded");
            assert_eq!((a_rec.width, a_rec.proposals), (64, 3));
            assert_eq!(a_rec.photo, exif_photo());
            index.flush_vectors().unwrap();
            assert_eq!(index.vector_count().unwrap(), 3);
            // Hits and image information carry the metadata.
            let hit = &index
                .hit_records(&[crate::records::proposal_id(a_id, 0)])
                .unwrap()[0];
            assert_eq!(hit.photo.camera.as_deref(), Some("Canon EOS 5D"));
            assert_eq!(hit.photo.taken_utc(), Some(1_625_412_600 - 7200));
            assert_eq!(index.image_info(a_id).unwrap().unwrap().photo, hit.photo);

            // A copy: the source's proposals and vectors under a new id.
            let copy = item("copy.jpg", None);
            let done = write_one(
                &index,
                Written::Other(Prepared::Copied {
                    item: copy,
                    hash: [1; 32],
                    source: a_id,
                    photo: exif_photo(),
                }),
                &mut report,
            )
            .unwrap();
            assert_eq!(done.proposals, 3);
            let (copy_id, copy_rec) = by_path("copy.jpg").unwrap();
            assert_eq!(copy_rec.photo, exif_photo());
            let (src, dst) = (
                index.proposals_of(a_id).unwrap(),
                index.proposals_of(copy_id).unwrap(),
            );
            assert_eq!(
                src.iter().map(|p| &p.2).collect::<Vec<_>>(),
                dst.iter().map(|p| &p.2).collect::<Vec<_>>()
            );

            // A move: same id and proposals, new path, the photo metadata read from the file.
            let moved = item("moved.jpg", None);
            write_one(
                &index,
                Written::Other(Prepared::Moved {
                    item: moved,
                    hash: [1; 32],
                    from: (a_id, a_rec),
                    photo: exif_photo(),
                }),
                &mut report,
            )
            .unwrap();
            assert!(by_path("a.jpg").is_none());
            assert_eq!(by_path("moved.jpg").unwrap().0, a_id);
            assert_eq!(by_path("moved.jpg").unwrap().1.photo, exif_photo());

            // A failure replacing an indexed record: its vectors go.
            let previous = by_path("copy.jpg");
            let failed = item("copy.jpg", previous);
            let done = write_one(
                &index,
                Written::Other(Prepared::Failed {
                    item: failed,
                    hash: [2; 32],
                    reason: "truncated".into(),
                }),
                &mut report,
            )
            .unwrap();
            assert!(done.failed);
            let (_, rec) = by_path("copy.jpg").unwrap();
            assert_eq!(rec.status, ImageStatus::Failed("truncated".into()));
            assert_eq!(rec.photo, PhotoMetadata::file_time(rec.mtime_ns));
            index.flush_vectors().unwrap();
            assert_eq!(index.vector_count().unwrap(), 3);

            // A touch: size and time only; vanished: the record goes.
            let (id, old) = by_path("moved.jpg").unwrap();
            let mut touched = item("moved.jpg", Some((id, old.clone())));
            touched.file.size = 999;
            let photo = PhotoMetadata::file_time(7_000_000_000);
            write_one(
                &index,
                Written::Other(Prepared::Touched {
                    item: touched,
                    photo: photo.clone(),
                }),
                &mut report,
            )
            .unwrap();
            let (same_id, now) = by_path("moved.jpg").unwrap();
            assert_eq!((same_id, now.size, now.proposals), (id, 999, old.proposals));
            assert_eq!(now.photo, photo);
            let gone = item("moved.jpg", Some((id, now)));
            write_one(
                &index,
                Written::Other(Prepared::Vanished { item: gone }),
                &mut report,
            )
            .unwrap();
            assert!(by_path("moved.jpg").is_none());
            index.flush_vectors().unwrap();
            assert_eq!(index.vector_count().unwrap(), 0);

            assert_eq!(
                (
                    report.indexed,
                    report.copied,
                    report.moved,
                    report.touched,
                    report.vanished
                ),
                (1, 1, 1, 1, 1)
            );
            assert_eq!((report.failed.len(), report.proposals_added), (1, 6));
            // An index error stops the run.
            let broken = Written::Other(Prepared::Broken(IndexError::Invalid("disk".into())));
            assert!(write_one(&index, broken, &mut report).is_err());
        }
    }
}
