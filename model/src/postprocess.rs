//! Proposal selection: objectness threshold, class-agnostic NMS, top-k.

/// Post-processing parameters (manifest defaults, overridable by the user).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProposalParams {
    /// Minimum objectness.
    pub objectness_threshold: f32,
    /// NMS IoU threshold: a candidate overlapping a kept one by more than this is dropped.
    pub nms_iou: f32,
    /// Maximum proposals kept per image.
    pub max_per_image: usize,
}

impl From<&crate::manifest::ProposalDefaults> for ProposalParams {
    fn from(d: &crate::manifest::ProposalDefaults) -> Self {
        ProposalParams {
            objectness_threshold: d.objectness_threshold,
            nms_iou: d.nms_iou,
            max_per_image: d.max_per_image,
        }
    }
}

/// Intersection over union of two xyxy boxes (plain areas, no +1); 0 for empty boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Selects candidate indices: objectness ≥ threshold, greedy class-agnostic NMS in decreasing
/// objectness (ties: lower index first), at most `max_per_image`. Returns indices in kept order.
pub fn select(boxes: &[[f32; 4]], objectness: &[f32], params: &ProposalParams) -> Vec<usize> {
    let mut order: Vec<usize> = (0..objectness.len())
        .filter(|&i| objectness[i] >= params.objectness_threshold && objectness[i].is_finite())
        .collect();
    order.sort_by(|&a, &b| objectness[b].total_cmp(&objectness[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::with_capacity(params.max_per_image.min(order.len()));
    for i in order {
        if kept.len() >= params.max_per_image {
            break;
        }
        if kept
            .iter()
            .all(|&k| iou(&boxes[k], &boxes[i]) <= params.nms_iou)
        {
            kept.push(i);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProposalParams = ProposalParams {
        objectness_threshold: 0.3,
        nms_iou: 0.5,
        max_per_image: 10,
    };

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        let half = iou(&a, &[5.0, 0.0, 15.0, 10.0]);
        assert!((half - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_distinct_boxes() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [50.0, 50.0, 60.0, 60.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        let obj = [0.6, 0.9, 0.5, 0.1];
        assert_eq!(select(&boxes, &obj, &P), vec![1, 2]);
    }

    #[test]
    fn ties_keep_the_lower_index_and_top_k_caps() {
        let boxes: Vec<[f32; 4]> = (0..5)
            .map(|i| {
                let x = i as f32 * 100.0;
                [x, 0.0, x + 10.0, 10.0]
            })
            .collect();
        let obj = [0.5; 5];
        let p = ProposalParams {
            max_per_image: 3,
            ..P
        };
        assert_eq!(select(&boxes, &obj, &p), vec![0, 1, 2]);
    }

    #[test]
    fn nan_scores_are_ignored() {
        let boxes = [[0.0, 0.0, 1.0, 1.0]; 2];
        assert_eq!(select(&boxes, &[f32::NAN, 0.4], &P), vec![1]);
    }
}
