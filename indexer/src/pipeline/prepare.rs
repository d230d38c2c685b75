//! The parallel stage: open and hash each file, read its photo metadata (EXIF) from the same
//! descriptor, recognise the files that need no model run (touched, moved, copied) and decode
//! and letterbox the others.

use std::collections::HashMap;
use std::sync::Mutex;

use spotter_model::{ImageFile, ImageTower, ModelError, PreparedImage};

use super::plan::WorkItem;
use super::IndexRequest;
use crate::error::IndexError;
use crate::index::Index;
use crate::metadata::PhotoMetadata;
use crate::records::{ImageRecord, ImageStatus};

/// Indexed records whose file is gone, by content hash; a found file claims one as moved.
pub(super) type Missing = Mutex<HashMap<[u8; 32], Vec<(u64, ImageRecord)>>>;

/// What became of one file before the model.
pub(super) enum Prepared {
    /// Decoded and letterboxed: the model runs on it.
    Model {
        item: WorkItem,
        hash: [u8; 32],
        photo: PhotoMetadata,
        image: PreparedImage,
    },
    /// The same content as the gone record `from`: moved or renamed.
    Moved {
        item: WorkItem,
        hash: [u8; 32],
        from: (u64, ImageRecord),
        photo: PhotoMetadata,
    },
    /// The same content as indexed image `source`: a copy.
    Copied {
        item: WorkItem,
        hash: [u8; 32],
        source: u64,
        photo: PhotoMetadata,
    },
    /// Could not be read or decoded.
    Failed {
        item: WorkItem,
        hash: [u8; 32],
        reason: String,
    },
    /// Gone between the walk and reading it.
    Vanished { item: WorkItem },
    /// Same content as its own record (a `touch`): `item.previous` is that record.
    Touched {
        item: WorkItem,
        photo: PhotoMetadata,
    },
    /// The index itself failed while preparing (the run stops with this error).
    Broken(IndexError),
}

/// What [`identify`] found: an outcome without the model, or an opened file to decode.
pub(super) enum Identified {
    Done(Prepared),
    Decode {
        item: WorkItem,
        hash: [u8; 32],
        photo: PhotoMetadata,
        file: ImageFile,
    },
}

/// Prepares `item` for the model, or says why it needs none.
pub(super) fn prepare(
    index: &Index,
    tower: &ImageTower,
    request: &IndexRequest,
    missing: &Missing,
    item: &WorkItem,
) -> Prepared {
    let (item, hash, photo, mut file) =
        match identify(index, request.walk.follow_symlinks, missing, item.clone()) {
            Identified::Done(prepared) => return prepared,
            Identified::Decode {
                item,
                hash,
                photo,
                file,
            } => (item, hash, photo, file),
        };
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
        Ok(image) => Prepared::Model {
            item,
            hash,
            photo,
            image,
        },
        Err(e) => Prepared::Failed {
            item,
            hash,
            reason: e.to_string(),
        },
    }
}

/// Opens and hashes `item`'s file, reads its photo metadata (headers only, same descriptor) and
/// compares the hash with the index: its own record (touched), a gone record (moved; the claim
/// is taken out of `missing`), another indexed record (copied), or none (the file must be
/// decoded).
pub(super) fn identify(
    index: &Index,
    follow_symlinks: bool,
    missing: &Missing,
    item: WorkItem,
) -> Identified {
    use Identified::Done;
    // Opened without blocking and checked to be a regular file: a FIFO, a device or (without
    // --follow-symlinks) a symbolic link swapped in since the walk is refused, not waited on.
    let opened = ImageFile::open(&item.file.path, follow_symlinks).and_then(|mut f| {
        let hash = f.hash()?;
        Ok((f, hash))
    });
    let (mut file, hash) = match opened {
        Ok(opened) => opened,
        Err(ModelError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Done(Prepared::Vanished { item })
        }
        Err(e) => {
            return Done(Prepared::Failed {
                item,
                hash: [0; 32],
                reason: format!("cannot read: {e}"),
            })
        }
    };
    // The EXIF block sits in the first headers: a few KiB more of what was just hashed. A file
    // without a usable one (or unreadable now) gets its modification time.
    let photo = match file.header_reader() {
        Ok(mut reader) => PhotoMetadata::read(&mut reader, item.file.mtime_ns),
        Err(_) => PhotoMetadata::file_time(item.file.mtime_ns),
    };
    // Touched: the size or time changed but the content hash equals the file's own record, so
    // only the record's size and time need updating (no decode, no model run, no vector churn).
    if item
        .previous
        .as_ref()
        .is_some_and(|(_, r)| r.status == ImageStatus::Indexed && r.hash == hash)
    {
        return Done(Prepared::Touched { item, photo });
    }
    // A moved or renamed file: same content as a record whose file is gone.
    match missing.lock() {
        Ok(mut map) => {
            if let Some(list) = map.get_mut(&hash) {
                if let Some(from) = list.pop() {
                    if list.is_empty() {
                        map.remove(&hash);
                    }
                    return Done(Prepared::Moved {
                        item,
                        hash,
                        from,
                        photo,
                    });
                }
            }
        }
        Err(_) => {
            return Done(Prepared::Broken(IndexError::Invalid(
                "the list of missing files is poisoned (a worker panicked)".into(),
            )))
        }
    }
    // A copy of an indexed file.
    let same = match index.images_with_hash(&hash) {
        Ok(same) => same,
        Err(e) => return Done(Prepared::Broken(e)),
    };
    let previous_id = item.previous.as_ref().map(|(id, _)| *id);
    if let Some((source, _)) = same
        .into_iter()
        .find(|(id, r)| r.status == ImageStatus::Indexed && Some(*id) != previous_id)
    {
        return Done(Prepared::Copied {
            item,
            hash,
            source,
            photo,
        });
    }
    Identified::Decode {
        item,
        hash,
        photo,
        file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::EmbeddedEngine;
    use crate::test_support::{found, index_in, record, write_file};

    fn outcome(identified: Identified) -> &'static str {
        match identified {
            Identified::Decode { .. } => "decode",
            Identified::Done(Prepared::Touched { .. }) => "touched",
            Identified::Done(Prepared::Moved { .. }) => "moved",
            Identified::Done(Prepared::Copied { .. }) => "copied",
            Identified::Done(Prepared::Failed { .. }) => "failed",
            Identified::Done(Prepared::Vanished { .. }) => "vanished",
            Identified::Done(Prepared::Model { .. }) => "model",
            Identified::Done(Prepared::Broken(_)) => "broken",
        }
    }

    #[test]
    fn identify_tells_touched_moved_copied_vanished_and_new_files_apart() {
        let archive = tempfile::tempdir().unwrap();
        let root = archive.path().canonicalize().unwrap();
        let (_dir, index) = index_in(std::slice::from_ref(&root), EmbeddedEngine::Quantised);
        let hash = |bytes: &[u8]| *blake3::hash(bytes).as_bytes();
        let missing: Missing = Mutex::new(HashMap::new());
        let item = |name: &str, previous: Option<(u64, ImageRecord)>| WorkItem {
            root: 0,
            file: found(&root, name),
            previous,
        };

        write_file(&root, "new.jpg", b"never seen");
        assert_eq!(
            outcome(identify(&index, false, &missing, item("new.jpg", None))),
            "decode"
        );

        // The file's own record with the same bytes: touched.
        write_file(&root, "touched.jpg", b"touched bytes");
        let mut own = record("touched.jpg", 0);
        own.hash = hash(b"touched bytes");
        index.commit_image(1, &own, &[], None).unwrap();
        let touched = item("touched.jpg", Some((1, own)));
        assert_eq!(
            outcome(identify(&index, false, &missing, touched)),
            "touched"
        );

        // A gone record with the same bytes: moved, claimed once.
        write_file(&root, "moved.jpg", b"moved bytes");
        let mut gone = record("old-name.jpg", 0);
        gone.hash = hash(b"moved bytes");
        missing.lock().unwrap().insert(gone.hash, vec![(7, gone)]);
        assert_eq!(
            outcome(identify(&index, false, &missing, item("moved.jpg", None))),
            "moved"
        );
        assert!(missing.lock().unwrap().is_empty(), "the claim is taken");
        // The second file with those bytes is a copy of the first's record (once written).
        let mut first = record("moved.jpg", 0);
        first.hash = hash(b"moved bytes");
        index.commit_image(8, &first, &[], None).unwrap();
        write_file(&root, "copy.jpg", b"moved bytes");
        assert_eq!(
            outcome(identify(&index, false, &missing, item("copy.jpg", None))),
            "copied"
        );
        // A failed record is no source of copies.
        write_file(&root, "retry.jpg", b"failed before");
        let mut failed = record("other.jpg", 0);
        failed.hash = hash(b"failed before");
        failed.status = ImageStatus::Failed("bad".into());
        index.commit_image(9, &failed, &[], None).unwrap();
        assert_eq!(
            outcome(identify(&index, false, &missing, item("retry.jpg", None))),
            "decode"
        );

        // Deleted since the walk: vanished; a FIFO swapped in: failed, never waited on.
        let vanished = item("new.jpg", None);
        std::fs::remove_file(root.join("new.jpg")).unwrap();
        assert_eq!(
            outcome(identify(&index, false, &missing, vanished)),
            "vanished"
        );
        let fifo = item("touched.jpg", None);
        std::fs::remove_file(root.join("touched.jpg")).unwrap();
        let path = std::ffi::CString::new(root.join("touched.jpg").as_os_str().as_encoded_bytes())
            .unwrap();
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
        assert_eq!(outcome(identify(&index, false, &missing, fifo)), "failed");
    }
}
