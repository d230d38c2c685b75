//! Thumbnails: decoded with EXIF orientation (so boxes in displayed pixels line up), scaled to a
//! bounded size, JPEG-encoded, kept in a bounded in-memory LRU. Concurrent requests for one
//! image share one decode (single-flight), every decode runs under the process-wide decode
//! memory budget and the server's `--max-pixels`, and only a file verified to be the indexed
//! image is decoded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use image::imageops::FilterType;
use spotter_indexer::Index;
use spotter_model::DecodeLimits;

use super::files::VerifiedFiles;
use crate::error::{Result, SpotterError};
use crate::lru::Lru;

/// A finished thumbnail or why it could not be made (`true`: the image is not there).
type Outcome = std::result::Result<Arc<Vec<u8>>, (bool, String)>;
type Flight = Arc<OnceLock<Outcome>>;

/// A bounded cache of encoded thumbnails.
pub struct ThumbCache {
    size: u32,
    limits: DecodeLimits,
    cache: Lru<u64, Arc<Vec<u8>>>,
    in_flight: Mutex<HashMap<u64, Flight>>,
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

    /// The JPEG thumbnail of image `id`.
    pub fn get(&self, files: &VerifiedFiles, index: &Index, id: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.cache.get(&id) {
            return Ok(hit);
        }
        let flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let outcome = flight
            .get_or_init(|| match self.make(files, index, id) {
                Ok(jpeg) => {
                    self.cache.insert(id, jpeg.clone());
                    Ok(jpeg)
                }
                Err(SpotterError::NotFound(m)) => Err((true, m)),
                Err(e) => Err((false, e.to_string())),
            })
            .clone();
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.get(&id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                in_flight.remove(&id);
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

    fn make(&self, files: &VerifiedFiles, index: &Index, id: u64) -> Result<Arc<Vec<u8>>> {
        let (mut file, info) = files.open(index, id)?;
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
