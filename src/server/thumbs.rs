//! Thumbnails: decoded with EXIF orientation (so boxes in displayed pixels line up), scaled to a
//! bounded size, JPEG-encoded, kept in a bounded in-memory LRU.

use std::sync::Arc;

use image::imageops::FilterType;
use spotter_indexer::Index;
use spotter_model::{decode_file, DecodeLimits};

use crate::error::{Result, SpotterError};
use crate::lru::Lru;

/// A bounded cache of encoded thumbnails.
pub struct ThumbCache {
    size: u32,
    cache: Lru<u64, Arc<Vec<u8>>>,
}

impl ThumbCache {
    /// A cache of at most `capacity` thumbnails whose longest side is `size` pixels.
    pub fn new(size: u32, capacity: usize) -> Self {
        ThumbCache {
            size: size.clamp(16, 2048),
            cache: Lru::new(capacity),
        }
    }

    /// The JPEG thumbnail of image `id`.
    pub fn get(&self, index: &Index, id: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.cache.get(&id) {
            return Ok(hit);
        }
        let path = index
            .image_info(id)?
            .ok_or_else(|| SpotterError::NotFound(format!("no image {id}")))?
            .path;
        let image = decode_file(&path, DecodeLimits::default())
            .map_err(|e| SpotterError::NotFound(format!("image {id} cannot be shown: {e}")))?;
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
                path: path.clone(),
                message: e.to_string(),
            })?;
        let jpeg = Arc::new(jpeg);
        self.cache.insert(id, jpeg.clone());
        Ok(jpeg)
    }
}
