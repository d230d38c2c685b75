//! Decoding (with EXIF orientation and a decompression-bomb guard) and letterboxing images into
//! the image graph's input tensor, exactly as the manifest describes.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{ModelError, Result};
use crate::manifest::{ChannelOrder, ImageSpec, Layout};
use crate::resize::resize_rgb;

/// Default maximum pixels per image (width × height) accepted by the decoder.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Limits applied when decoding untrusted images.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Maximum `width × height`; larger images are refused before any pixel is decoded.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// Decodes an image file; see [`decode_bytes`]. The file is opened with
/// [`crate::ImageFile::open`] (never blocking, regular files only; symbolic links followed).
pub fn decode_file(path: &Path, limits: DecodeLimits) -> Result<RgbImage> {
    crate::file::ImageFile::open(path, true)?
        .decode(limits)
        .map(|(image, _reserved)| image)
}

/// Decodes encoded image bytes to 8-bit RGB in displayed orientation (EXIF applied).
///
/// 16-bit, grey, CMYK and alpha images are converted to 8-bit RGB (alpha is dropped, as
/// Pillow's `convert("RGB")` does). The first frame of an animation is used. Images over
/// `limits.max_pixels` are refused from their header, before decoding. The pixels are decoded
/// under the process-wide [`crate::DecodeBudget`].
pub fn decode_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage> {
    decode_reader(Cursor::new(bytes), limits).map(|(image, _reserved)| image)
}

/// Estimated peak bytes of decoding a `width × height` image whose decoder produces
/// `bytes_per_pixel`: the decoded buffer, a rotated copy, and the 8-bit RGB result.
pub fn decode_cost(width: u32, height: u32, bytes_per_pixel: u8) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    pixels.saturating_mul(2 * u64::from(bytes_per_pixel) + 3)
}

/// [`decode_bytes`] over any seekable buffered reader; the result comes with its share of the
/// decode budget, held until the caller drops it.
pub(crate) fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    source: R,
    limits: DecodeLimits,
) -> Result<(RgbImage, crate::file::BudgetGuard)> {
    let reader = ImageReader::new(source)
        .with_guessed_format()
        .map_err(|e| ModelError::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ModelError::Decode(
            "not a recognised image format (jpeg, png, webp, bmp, tiff, gif)".into(),
        ));
    }
    let mut reader = reader;
    let mut image_limits = image::Limits::default();
    // Room for the decoded image at 16 bits × 4 channels plus decoder working memory.
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(image_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ModelError::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ModelError::TooLarge {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ModelError::Decode(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    let cost = decode_cost(width, height, decoder.color_type().bytes_per_pixel());
    let reserved = crate::file::DecodeBudget::global().reserve(cost)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| ModelError::Decode(e.to_string()))?;
    image.apply_orientation(orientation);
    let rgb = match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    };
    Ok((rgb, reserved))
}

/// How an original image maps into the letterboxed input, to map boxes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Original (displayed) width.
    pub src_width: u32,
    /// Original (displayed) height.
    pub src_height: u32,
    /// Resize factor from original to input pixels.
    pub scale: f64,
    /// Width of the resized image inside the input.
    pub resized_width: u32,
    /// Height of the resized image inside the input.
    pub resized_height: u32,
    /// Left padding in input pixels.
    pub pad_left: u32,
    /// Top padding in input pixels.
    pub pad_top: u32,
}

impl Letterbox {
    /// Computes the letterbox of a `width × height` image into `spec.input_size`.
    ///
    /// `scale = min(H/h, W/w)`, resized size `round(w·scale) × round(h·scale)` (ties to even, as
    /// Python's `round`; at least 1 px),
    /// centred padding `(W − nw) / 2` (integer division) when `spec.letterbox.centered`.
    pub fn new(width: u32, height: u32, spec: &ImageSpec) -> Self {
        let [in_h, in_w] = spec.input_size;
        let scale = (f64::from(in_h) / f64::from(height)).min(f64::from(in_w) / f64::from(width));
        let resized_width = ((f64::from(width) * scale).round_ties_even() as u32).clamp(1, in_w);
        let resized_height = ((f64::from(height) * scale).round_ties_even() as u32).clamp(1, in_h);
        let (pad_left, pad_top) = if spec.letterbox.centered {
            ((in_w - resized_width) / 2, (in_h - resized_height) / 2)
        } else {
            (0, 0)
        };
        Letterbox {
            src_width: width,
            src_height: height,
            scale,
            resized_width,
            resized_height,
            pad_left,
            pad_top,
        }
    }

    /// Maps a box from input pixels back to original pixels, clipped to the image.
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let w = f64::from(self.src_width);
        let h = f64::from(self.src_height);
        let x =
            |v: f32| ((f64::from(v) - f64::from(self.pad_left)) / self.scale).clamp(0.0, w) as f32;
        let y =
            |v: f32| ((f64::from(v) - f64::from(self.pad_top)) / self.scale).clamp(0.0, h) as f32;
        [x(b[0]), y(b[1]), x(b[2]), y(b[3])]
    }
}

/// Turns RGB images into the image graph's input tensor (reusable; owns its resize buffers).
pub struct Preprocessor {
    spec: ImageSpec,
    /// Lookup table from 0..255 to the normalised value, per graph channel.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    /// Builds a preprocessor for the manifest's image spec.
    pub fn new(spec: &ImageSpec) -> Self {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 * spec.scale - spec.mean[c]) / spec.std[c];
            }
        }
        Preprocessor {
            spec: spec.clone(),
            lut,
        }
    }

    /// Number of floats of one image in the input tensor.
    pub fn tensor_len(&self) -> usize {
        let [h, w] = self.spec.input_size;
        3 * h as usize * w as usize
    }

    /// Letterboxes `image` and writes its normalised pixels into `out` (`tensor_len()` floats).
    pub fn letterbox_into(&self, image: &RgbImage, out: &mut [f32]) -> Result<Letterbox> {
        if out.len() != self.tensor_len() {
            return Err(ModelError::Invalid(format!(
                "tensor slice has {} floats, expected {}",
                out.len(),
                self.tensor_len()
            )));
        }
        let lb = Letterbox::new(image.width(), image.height(), &self.spec);
        let resized = self.resize(image, lb.resized_width, lb.resized_height);
        let [in_h, in_w] = self.spec.input_size;
        let (in_h, in_w) = (in_h as usize, in_w as usize);
        let plane = in_h * in_w;
        let order: [usize; 3] = match self.spec.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let pad = self.spec.letterbox.pad_value as usize;
        let pad_values = [self.lut[0][pad], self.lut[1][pad], self.lut[2][pad]];
        match self.spec.layout {
            Layout::Nchw => {
                for c in 0..3 {
                    out[c * plane..(c + 1) * plane].fill(pad_values[c]);
                }
            }
            Layout::Nhwc => {
                for px in out.chunks_exact_mut(3) {
                    px.copy_from_slice(&pad_values);
                }
            }
        }
        let rw = lb.resized_width as usize;
        let src: &[u8] = &resized;
        for y in 0..lb.resized_height as usize {
            let row = &src[y * rw * 3..(y + 1) * rw * 3];
            let oy = y + lb.pad_top as usize;
            for (x, px) in row.chunks_exact(3).enumerate() {
                let ox = x + lb.pad_left as usize;
                for (c, &source_channel) in order.iter().enumerate() {
                    let v = self.lut[c][px[source_channel] as usize];
                    match self.spec.layout {
                        Layout::Nchw => out[c * plane + oy * in_w + ox] = v,
                        Layout::Nhwc => out[(oy * in_w + ox) * 3 + c] = v,
                    }
                }
            }
        }
        Ok(lb)
    }

    fn resize<'a>(
        &self,
        image: &'a RgbImage,
        width: u32,
        height: u32,
    ) -> std::borrow::Cow<'a, [u8]> {
        if image.width() == width && image.height() == height {
            return std::borrow::Cow::Borrowed(image.as_raw().as_slice());
        }
        std::borrow::Cow::Owned(resize_rgb(image, width, height, self.spec.resize_filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn spec() -> ImageSpec {
        let text = include_str!("../tests/data/example_manifest.json");
        Manifest::from_json(text, Path::new("x")).unwrap().image
    }

    #[test]
    fn letterbox_geometry_is_centred_and_invertible() {
        let spec = spec(); // 416×416
        let lb = Letterbox::new(800, 400, &spec);
        assert_eq!((lb.resized_width, lb.resized_height), (416, 208));
        assert_eq!((lb.pad_left, lb.pad_top), (0, 104));
        let back = lb.to_original([0.0, 104.0, 416.0, 312.0]);
        for (a, b) in back.iter().zip([0.0, 0.0, 800.0, 400.0]) {
            assert!((a - b).abs() < 1e-3, "{back:?}");
        }
        // Boxes partly in the padding are clipped to the image.
        assert_eq!(
            lb.to_original([-10.0, 0.0, 500.0, 416.0]),
            [0.0, 0.0, 800.0, 400.0]
        );
    }

    #[test]
    fn tiny_and_extreme_aspect_images_get_at_least_one_pixel() {
        let spec = spec();
        let lb = Letterbox::new(20000, 300, &spec);
        assert_eq!(lb.resized_width, 416);
        assert!(lb.resized_height >= 1);
        let lb = Letterbox::new(1, 1, &spec);
        assert_eq!((lb.resized_width, lb.resized_height), (416, 416));
    }

    #[test]
    fn tensor_has_pad_value_outside_and_normalised_bgr_pixels_inside() {
        let spec = spec();
        let pre = Preprocessor::new(&spec);
        let image = RgbImage::from_pixel(100, 50, image::Rgb([10, 20, 30]));
        let mut out = vec![0f32; pre.tensor_len()];
        let lb = pre.letterbox_into(&image, &mut out).unwrap();
        let plane = 416 * 416;
        let pad = |c: usize| (114.0 - spec.mean[c]) / spec.std[c];
        assert!((out[0] - pad(0)).abs() < 1e-6);
        // A pixel in the middle of the image: channel 0 of a BGR graph is blue (30).
        let idx = (lb.pad_top as usize + 50) * 416 + 200;
        assert!((out[idx] - (30.0 - spec.mean[0]) / spec.std[0]).abs() < 1e-5);
        assert!((out[2 * plane + idx] - (10.0 - spec.mean[2]) / spec.std[2]).abs() < 1e-5);
    }

    #[test]
    fn garbage_bytes_are_a_clear_error() {
        let err =
            decode_bytes(b"this is a text file, not a jpeg", DecodeLimits::default()).unwrap_err();
        assert!(
            err.to_string().contains("not a recognised image format"),
            "{err}"
        );
        assert!(decode_bytes(&[], DecodeLimits::default()).is_err());
    }

    #[test]
    fn oversized_images_are_refused_from_the_header() {
        let mut png = Vec::new();
        RgbImage::new(64, 64)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let err = decode_bytes(&png, DecodeLimits { max_pixels: 1000 }).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::TooLarge {
                    width: 64,
                    height: 64,
                    ..
                }
            ),
            "{err}"
        );
    }
}
