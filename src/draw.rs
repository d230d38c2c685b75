//! Drawing boxes onto images for the `detect` demo and thumbnails.

use image::{Rgb, RgbImage};

/// A palette of distinct, readable box colours.
pub const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [255, 225, 25],
];

/// Draws the outline of `bbox` (xyxy, image pixels) with the given thickness, clipped to the image.
pub fn draw_box(image: &mut RgbImage, bbox: [f32; 4], color: [u8; 3], thickness: u32) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    if w == 0 || h == 0 {
        return;
    }
    let clamp_x = |v: f32| (v.round() as i64).clamp(0, w - 1);
    let clamp_y = |v: f32| (v.round() as i64).clamp(0, h - 1);
    let (x1, y1, x2, y2) = (
        clamp_x(bbox[0]),
        clamp_y(bbox[1]),
        clamp_x(bbox[2]),
        clamp_y(bbox[3]),
    );
    let t = i64::from(thickness.max(1));
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            image.put_pixel(x as u32, y as u32, Rgb(color));
        }
    };
    for k in 0..t {
        for x in x1..=x2 {
            put(x, y1 + k);
            put(x, y2 - k);
        }
        for y in y1..=y2 {
            put(x1 + k, y);
            put(x2 - k, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_outline_only_and_clips() {
        let mut img = RgbImage::new(20, 20);
        draw_box(&mut img, [2.0, 2.0, 10.0, 10.0], [255, 0, 0], 1);
        assert_eq!(img.get_pixel(2, 5).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(10, 10).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(5, 5).0, [0, 0, 0]);
        draw_box(&mut img, [-50.0, -50.0, 500.0, 500.0], [0, 255, 0], 2);
        assert_eq!(img.get_pixel(0, 7).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(19, 19).0, [0, 255, 0]);
    }
}
