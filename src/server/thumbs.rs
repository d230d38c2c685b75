//! Thumbnails: decoded with EXIF orientation (so boxes in displayed pixels line up), scaled to a
//! bounded size, JPEG-encoded, kept in a bounded in-memory LRU. Concurrent requests for one
//! image share one decode (single-flight), every decode runs under the process-wide decode
//! memory budget and the server's `--max-pixels`, and only a file verified to be the indexed
//! image is decoded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use image::imageops::FilterType;
use spotter_indexer::{ImageInfo, Index};
use spotter_model::{DecodeLimits, ImageFile};

use super::files::VerifiedFiles;
use crate::error::{Result, SpotterError};
use crate::lru::Lru;

/// A finished thumbnail or why it could not be made (`true`: the image is not there).
type Outcome = std::result::Result<Arc<Vec<u8>>, (bool, String)>;
type Flight = Arc<OnceLock<Outcome>>;
/// An image id and the content hash it was indexed with (none for shared-engine payloads).
type Key = (u64, Option<[u8; 32]>);

/// A bounded cache of encoded thumbnails.
pub struct ThumbCache {
    size: u32,
    limits: DecodeLimits,
    cache: Lru<Key, Arc<Vec<u8>>>,
    in_flight: Mutex<HashMap<Key, Flight>>,
}

impl ThumbCache {
    /// A cache of at most `capacity` thumbnails whose longest side is `size` pixels, decoding
    /// images within `limits`.
    pub fn new(size: u32, capacity: usize, limits: DecodeLimits) -> Self {
        ThumbCache {
            size: size.clamp(16, 2048),
            limits,
            cache: Lru::new(capacity),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The JPEG thumbnail of image `id`. The file is verified to be the indexed image on every
    /// call (cheap for an unchanged file: an open and an `fstat`), so a cached thumbnail of a
    /// photo that was deleted, re-indexed or swapped is never served.
    pub fn get(&self, files: &VerifiedFiles, index: &Index, id: u64) -> Result<Arc<Vec<u8>>> {
        let (file, info) = files.open(index, id)?;
        // Keyed by content too: a re-indexed id or changed content misses.
        let key = (id, info.hash);
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut file = Some((file, info));
        let outcome = flight
            .get_or_init(|| {
                let Some((file, info)) = file.take() else {
                    return Err((false, "thumbnail flight without a file".into()));
                };
                match self.make(file, &info, id) {
                    Ok(jpeg) => {
                        self.cache.insert(key, jpeg.clone());
                        Ok(jpeg)
                    }
                    Err(SpotterError::NotFound(m)) => Err((true, m)),
                    Err(e) => Err((false, e.to_string())),
                }
            })
            .clone();
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                in_flight.remove(&key);
            }
        }
        outcome.map_err(|(missing, message)| {
            if missing {
                SpotterError::NotFound(message)
            } else {
                SpotterError::Internal(message)
            }
        })
    }

    fn make(&self, mut file: ImageFile, info: &ImageInfo, id: u64) -> Result<Arc<Vec<u8>>> {
        let (image, _reserved) = file
            .decode(self.limits)
            .map_err(|e| SpotterError::NotFound(format!("image {id} cannot be shown: {e}")))?;
        drop(file);
        let thumb = image::DynamicImage::ImageRgb8(image).resize(
            self.size,
            self.size,
            FilterType::Triangle,
        );
        let mut jpeg = Vec::new();
        thumb
            .to_rgb8()
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .map_err(|e| SpotterError::Encode {
                path: info.path.clone(),
                message: e.to_string(),
            })?;
        Ok(Arc::new(jpeg))
    }
}
