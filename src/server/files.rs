//! Originals and thumbnails only ever serve what is still the indexed image: the file at an
//! image's path is opened without blocking (regular files only), and its content must hash to
//! the record's BLAKE3 hash. A verified file's identity (device, inode, size, times) is
//! remembered, so later requests for an unchanged file skip the hash; a swapped file (a symbolic
//! link to something else, a replaced file, a FIFO) has another identity and is hashed again,
//! and refused.

use spotter_indexer::{ImageInfo, Index};
use spotter_model::{FileIdentity, ImageFile};

use crate::error::{Result, SpotterError};
use crate::lru::Lru;

/// Files verified against their records, by image id.
pub struct VerifiedFiles {
    known: Lru<u64, (FileIdentity, [u8; 32])>,
}

impl VerifiedFiles {
    /// Remembers at most `capacity` verified files.
    pub fn new(capacity: usize) -> Self {
        VerifiedFiles {
            known: Lru::new(capacity.max(1)),
        }
    }

    /// Opens image `id`'s file, checked to be the indexed image. `NotFound` when the id is
    /// unknown or the file is gone, changed or no longer a regular file.
    pub fn open(&self, index: &Index, id: u64) -> Result<(ImageFile, ImageInfo)> {
        let info = index
            .image_info(id)?
            .ok_or_else(|| SpotterError::NotFound(format!("no image {id}")))?;
        let mut file = ImageFile::open(&info.path, true).map_err(|e| {
            tracing::warn!(image = id, error = %e, "an indexed file cannot be opened");
            SpotterError::NotFound(format!("image {id} is no longer on disk as it was indexed"))
        })?;
        let changed = || {
            tracing::warn!(image = id, path = %info.path.display(), "an indexed file has changed since it was indexed; not served");
            SpotterError::NotFound(format!(
                "image {id} has changed on disk since it was indexed (run spotter index again)"
            ))
        };
        let identity = file.identity();
        match info.hash {
            Some(hash) => {
                if self.known.get(&id) == Some((identity, hash)) {
                    return Ok((file, info));
                }
                if info.size.is_some_and(|size| size != identity.size) {
                    return Err(changed());
                }
                let actual = file.hash().map_err(|e| {
                    SpotterError::NotFound(format!("image {id} cannot be read: {e}"))
                })?;
                if actual != hash {
                    return Err(changed());
                }
                self.known.insert(id, (identity, hash));
            }
            None => {
                // A shared engine's payload carries no hash: the file must at least be an image
                // of the indexed displayed size.
                let size = file.displayed_size().map_err(|_| changed())?;
                if size != (info.width, info.height) {
                    return Err(changed());
                }
            }
        }
        Ok((file, info))
    }
}
