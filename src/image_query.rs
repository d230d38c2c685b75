//! Query by example: the image tower runs on a photo given with the query (in memory only:
//! nothing of it is written anywhere), and the proposal under a drawn box — or, with no box,
//! its most object-like proposals — become "more like this" concepts.

use std::sync::{Arc, Mutex};

use spotter_model::{
    decode_bytes, DecodeLimits, ImageTower, ModelPackage, ProposalParams, RuntimeOptions,
};

use crate::engine::Concept;
use crate::error::{Result, SpotterError};

/// Largest example image accepted, in bytes.
pub const MAX_EXAMPLE_BYTES: usize = 32 * 1024 * 1024;
/// Concepts taken from an example with no box: its most object-like proposals.
pub const EXAMPLES_WITHOUT_BOX: usize = 3;

/// The image tower, loaded at its first use and then kept (shared by example queries and the
/// server's index jobs).
pub struct LazyImageTower {
    package: ModelPackage,
    runtime: RuntimeOptions,
    loaded: Mutex<Option<Arc<ImageTower>>>,
}

impl LazyImageTower {
    /// A tower of `package` that is not loaded yet.
    pub fn new(package: ModelPackage, runtime: RuntimeOptions) -> Self {
        LazyImageTower {
            package,
            runtime,
            loaded: Mutex::new(None),
        }
    }

    /// Whether it has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.lock().is_ok_and(|l| l.is_some())
    }

    /// The tower, loading it first if needed.
    pub fn get(&self) -> Result<Arc<ImageTower>> {
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| SpotterError::Internal("the image tower lock is poisoned".into()))?;
        if let Some(tower) = &*loaded {
            return Ok(tower.clone());
        }
        let tower = Arc::new(ImageTower::load(&self.package, &self.runtime)?);
        *loaded = Some(tower.clone());
        Ok(tower)
    }
}

/// `x1,y1,x2,y2` in the example's displayed pixels.
pub fn parse_box(text: &str) -> std::result::Result<[f32; 4], String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("box '{text}' is not four numbers x1,y1,x2,y2"))?;
    match values[..] {
        [x1, y1, x2, y2] if values.iter().all(|v| v.is_finite()) && x2 > x1 && y2 > y1 => {
            Ok([x1, y1, x2, y2])
        }
        [_, _, _, _] => Err(format!(
            "box '{text}' must have x2 > x1 and y2 > y1 (left, top, right, bottom in pixels)"
        )),
        _ => Err(format!("box '{text}' is not four numbers x1,y1,x2,y2")),
    }
}

/// The ranking weight of the example's concepts beside the text's (as `2:` weighs a text
/// concept): above 0, at most 100.
pub fn parse_weight(text: &str) -> std::result::Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(w) if w.is_finite() && w > 0.0 && w <= 100.0 => Ok(w),
        _ => Err(format!(
            "weight '{text}' must be a number above 0 and at most 100"
        )),
    }
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The concepts of an example image: the proposal that best covers `region` (by IoU), or the
/// [`EXAMPLES_WITHOUT_BOX`] most object-like proposals, each scored as "more like this" is.
pub fn example_concepts(
    tower: &ImageTower,
    bytes: &[u8],
    region: Option<[f32; 4]>,
    limits: DecodeLimits,
) -> Result<Vec<Concept>> {
    if bytes.len() > MAX_EXAMPLE_BYTES {
        return Err(SpotterError::Usage(format!(
            "the example image is {} bytes; the limit is {MAX_EXAMPLE_BYTES}",
            bytes.len()
        )));
    }
    let image = decode_bytes(bytes, limits).map_err(|e| {
        SpotterError::Usage(format!("the example is not an image Spotter reads: {e}"))
    })?;
    let (width, height) = image.dimensions();
    let prepared = tower.prepare(&image)?;
    let params = ProposalParams::from(&tower.package().manifest.proposals);
    let mut proposals = tower
        .detect(std::slice::from_ref(&prepared), &params)?
        .pop()
        .unwrap_or_default();
    if proposals.is_empty() {
        return Err(SpotterError::Usage(
            "the model found no object in the example image".into(),
        ));
    }
    let chosen: Vec<(String, Vec<f32>)> = match region {
        Some(b) => {
            if b[0] >= width as f32 || b[1] >= height as f32 || b[2] <= 0.0 || b[3] <= 0.0 {
                return Err(SpotterError::Usage(format!(
                    "the box lies outside the {width}×{height} example image"
                )));
            }
            let best = proposals
                .iter()
                .map(|p| (iou(p.bbox, b), p))
                .max_by(|x, y| x.0.total_cmp(&y.0))
                .filter(|(overlap, _)| *overlap > 0.0)
                .ok_or_else(|| {
                    SpotterError::Usage(
                        "no object the model sees overlaps the box; draw it around an object"
                            .into(),
                    )
                })?;
            vec![("like the region".to_string(), best.1.vector.clone())]
        }
        None => {
            proposals.sort_by(|a, b| b.objectness.total_cmp(&a.objectness));
            proposals
                .iter()
                .take(EXAMPLES_WITHOUT_BOX)
                .map(|p| ("like the example".to_string(), p.vector.clone()))
                .collect()
        }
    };
    chosen
        .into_iter()
        .map(|(label, stored)| crate::engine::example_concept(tower.scoring(), label, &stored))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_four_ordered_numbers() {
        assert_eq!(parse_box("1, 2,30,40.5"), Ok([1.0, 2.0, 30.0, 40.5]));
        assert!(parse_box("1,2,3").unwrap_err().contains("four numbers"));
        assert!(parse_box("5,5,1,9").unwrap_err().contains("x2 > x1"));
        assert!(parse_box("a,b,c,d").is_err());
        assert!(parse_box("0,0,NaN,4").is_err());
        assert_eq!(parse_weight("2"), Ok(2.0));
        assert!(parse_weight("0").is_err() && parse_weight("101").is_err());
        assert!((iou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]) - 1.0 / 7.0).abs() < 1e-6);
    }
}
