//! Retrieval evaluation on a COCO-format labelled set, with WeDetect's own definitions.
//!
//! - **Image retrieval** (WeDetect's `eval_retrieval`): for each category name used as a text
//!   query, an image is *retrieved* when the highest probability among its proposals exceeds the
//!   threshold; the ground truth is the set of images with at least one box of the category.
//!   Per-category precision, recall and F1, macro-averaged over categories with a positive image.
//! - **AP** (not in the reference): images ranked by that maximum probability; non-interpolated
//!   average precision (mean of the precision at each positive image).
//! - **Box top-1** (not in the reference): for each positive image, does its best-scoring
//!   proposal overlap a ground-truth box of the category at IoU ≥ 0.5.
//! - **Proposal recall** AR@N: class-agnostic; for every ground-truth box, the best IoU among the
//!   image's N most objective proposals; recall at IoU 0.50, 0.55, …, 0.95, averaged (how
//!   WeDetect-Uni's AR@100 = 66.9 on COCO is defined).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A COCO annotation file (the fields evaluation needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Coco {
    /// Images.
    pub images: Vec<CocoImage>,
    /// Boxes.
    pub annotations: Vec<CocoAnnotation>,
    /// Categories.
    pub categories: Vec<CocoCategory>,
}

/// A COCO image entry.
#[derive(Debug, Clone, Deserialize)]
pub struct CocoImage {
    /// Image id.
    pub id: u64,
    /// Path relative to the image folder.
    pub file_name: String,
}

/// A COCO box.
#[derive(Debug, Clone, Deserialize)]
pub struct CocoAnnotation {
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// `[x, y, width, height]`.
    pub bbox: [f32; 4],
    /// Crowd boxes are ignored.
    #[serde(default)]
    pub iscrowd: u8,
}

/// A COCO category.
#[derive(Debug, Clone, Deserialize)]
pub struct CocoCategory {
    /// Category id.
    pub id: u64,
    /// Name, used as the text query.
    pub name: String,
}

/// One image's proposals as evaluation sees them.
#[derive(Debug, Clone)]
pub struct EvalImage {
    /// Ground-truth boxes `(category id, xyxy)`.
    pub truth: Vec<(u64, [f32; 4])>,
    /// Proposals `(xyxy, objectness, probability per category in `categories` order)`.
    pub proposals: Vec<([f32; 4], f32, Vec<f32>)>,
}

/// Metrics of one category.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CategoryMetrics {
    /// Images holding the category.
    pub positives: usize,
    /// Retrieved images.
    pub retrieved: usize,
    /// Precision at the threshold.
    pub precision: f64,
    /// Recall at the threshold.
    pub recall: f64,
    /// F1 at the threshold.
    pub f1: f64,
    /// Average precision over the ranked image list.
    pub ap: f64,
    /// Share of positive images whose best proposal hits a true box (IoU ≥ 0.5).
    pub box_top1: f64,
}

/// Macro averages at one threshold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MacroMetrics {
    /// Threshold.
    pub threshold: f32,
    /// Mean precision.
    pub precision: f64,
    /// Mean recall.
    pub recall: f64,
    /// Mean F1.
    pub f1: f64,
}

/// The full report.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Threshold of the per-category table.
    pub threshold: f32,
    /// Per category (name → metrics), categories with at least one positive image.
    pub per_category: BTreeMap<String, CategoryMetrics>,
    /// Macro averages at the threshold, plus mean AP and box top-1.
    pub macro_avg: MacroMetrics,
    /// Mean AP over categories.
    pub mean_ap: f64,
    /// Mean box top-1 over categories.
    pub mean_box_top1: f64,
    /// Macro P/R/F1 over a sweep of thresholds.
    pub sweep: Vec<MacroMetrics>,
    /// Class-agnostic proposal recall averaged over IoU 0.5:0.95, at 100 and 300 proposals.
    pub ar_100: f64,
    /// See `ar_100`.
    pub ar_300: f64,
}

/// IoU of two xyxy boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    spotter_model::postprocess::iou(a, b)
}

fn best_prob(image: &EvalImage, c: usize) -> f32 {
    image.proposals.iter().map(|p| p.2[c]).fold(0.0, f32::max)
}

fn prf(tp: usize, retrieved: usize, positives: usize) -> (f64, f64, f64) {
    let p = if retrieved == 0 {
        0.0
    } else {
        tp as f64 / retrieved as f64
    };
    let r = if positives == 0 {
        0.0
    } else {
        tp as f64 / positives as f64
    };
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f)
}

/// Average precision of a ranking: `scores` per image and whether each is positive.
pub fn average_precision(scores: &[(f32, bool)]) -> f64 {
    let mut ranked = scores.to_vec();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = ranked.iter().filter(|s| s.1).count();
    if positives == 0 {
        return 0.0;
    }
    let (mut hits, mut sum) = (0usize, 0.0);
    for (i, (_, positive)) in ranked.iter().enumerate() {
        if *positive {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / positives as f64
}

/// Class-agnostic average recall with each image's `n` most objective proposals.
pub fn average_recall(images: &[EvalImage], n: usize) -> f64 {
    let thresholds: Vec<f32> = (0..10).map(|i| 0.5 + 0.05 * i as f32).collect();
    let mut best_ious = Vec::new();
    for image in images {
        let mut props: Vec<&([f32; 4], f32, Vec<f32>)> = image.proposals.iter().collect();
        props.sort_by(|a, b| b.1.total_cmp(&a.1));
        props.truncate(n);
        for (_, truth) in &image.truth {
            best_ious.push(props.iter().map(|p| iou(&p.0, truth)).fold(0.0, f32::max));
        }
    }
    if best_ious.is_empty() {
        return 0.0;
    }
    let recalls: Vec<f64> = thresholds
        .iter()
        .map(|t| best_ious.iter().filter(|i| **i >= *t).count() as f64 / best_ious.len() as f64)
        .collect();
    recalls.iter().sum::<f64>() / recalls.len() as f64
}

/// Computes every metric; `categories` gives the order of the probabilities in the proposals.
pub fn evaluate(images: &[EvalImage], categories: &[CocoCategory], threshold: f32) -> EvalReport {
    let mut per_category = BTreeMap::new();
    let present: Vec<usize> = (0..categories.len())
        .filter(|&c| {
            images
                .iter()
                .any(|im| im.truth.iter().any(|(id, _)| *id == categories[c].id))
        })
        .collect();
    let at = |t: f32, c: usize| {
        let id = categories[c].id;
        let positives = images
            .iter()
            .filter(|im| im.truth.iter().any(|(i, _)| *i == id))
            .count();
        let retrieved: Vec<bool> = images.iter().map(|im| best_prob(im, c) > t).collect();
        let tp = images
            .iter()
            .zip(&retrieved)
            .filter(|(im, r)| **r && im.truth.iter().any(|(i, _)| *i == id))
            .count();
        (positives, retrieved.iter().filter(|r| **r).count(), tp)
    };
    for &c in &present {
        let id = categories[c].id;
        let (positives, retrieved, tp) = at(threshold, c);
        let (precision, recall, f1) = prf(tp, retrieved, positives);
        let ranking: Vec<(f32, bool)> = images
            .iter()
            .map(|im| (best_prob(im, c), im.truth.iter().any(|(i, _)| *i == id)))
            .collect();
        let positive_images: Vec<&EvalImage> = images
            .iter()
            .filter(|im| im.truth.iter().any(|(i, _)| *i == id))
            .collect();
        let top1_hits = positive_images
            .iter()
            .filter(|im| {
                // The first proposal with the highest probability (ties: earlier wins).
                im.proposals
                    .iter()
                    .reduce(|best, p| if p.2[c] > best.2[c] { p } else { best })
                    .is_some_and(|best| {
                        im.truth
                            .iter()
                            .any(|(i, b)| *i == id && iou(&best.0, b) >= 0.5)
                    })
            })
            .count();
        per_category.insert(
            categories[c].name.clone(),
            CategoryMetrics {
                positives,
                retrieved,
                precision,
                recall,
                f1,
                ap: average_precision(&ranking),
                box_top1: if positives == 0 {
                    0.0
                } else {
                    top1_hits as f64 / positives as f64
                },
            },
        );
    }
    let macro_at = |t: f32| {
        let n = present.len().max(1) as f64;
        let (mut p, mut r, mut f) = (0.0, 0.0, 0.0);
        for &c in &present {
            let (positives, retrieved, tp) = at(t, c);
            let (a, b, d) = prf(tp, retrieved, positives);
            p += a;
            r += b;
            f += d;
        }
        MacroMetrics {
            threshold: t,
            precision: p / n,
            recall: r / n,
            f1: f / n,
        }
    };
    let n = per_category.len().max(1) as f64;
    EvalReport {
        images: images.len(),
        threshold,
        macro_avg: macro_at(threshold),
        mean_ap: per_category.values().map(|m| m.ap).sum::<f64>() / n,
        mean_box_top1: per_category.values().map(|m| m.box_top1).sum::<f64>() / n,
        sweep: [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
            .iter()
            .map(|&t| macro_at(t))
            .collect(),
        ar_100: average_recall(images, 100),
        ar_300: average_recall(images, 300),
        per_category,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_of_known_rankings() {
        assert_eq!(
            average_precision(&[(0.9, true), (0.8, true), (0.1, false)]),
            1.0
        );
        // Positives at ranks 2 and 3: (1/2 + 2/3) / 2.
        let ap = average_precision(&[(0.9, false), (0.8, true), (0.7, true)]);
        assert!((ap - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(average_precision(&[(0.9, false)]), 0.0);
    }

    #[test]
    fn retrieval_metrics_follow_the_definitions() {
        let cats = vec![
            CocoCategory {
                id: 17,
                name: "cat".into(),
            },
            CocoCategory {
                id: 3,
                name: "car".into(),
            },
        ];
        let b = [0.0, 0.0, 10.0, 10.0];
        let far = [50.0, 50.0, 60.0, 60.0];
        let images = vec![
            // A cat, found with a good box.
            EvalImage {
                truth: vec![(17, b)],
                proposals: vec![(b, 0.9, vec![0.8, 0.1])],
            },
            // A cat whose best cat proposal is elsewhere and below threshold.
            EvalImage {
                truth: vec![(17, b)],
                proposals: vec![(far, 0.5, vec![0.15, 0.05])],
            },
            // No cat, but a false cat detection; a car.
            EvalImage {
                truth: vec![(3, b)],
                proposals: vec![(b, 0.7, vec![0.3, 0.6])],
            },
        ];
        let r = evaluate(&images, &cats, 0.2);
        let cat = &r.per_category["cat"];
        assert_eq!((cat.positives, cat.retrieved), (2, 2));
        assert_eq!((cat.precision, cat.recall), (0.5, 0.5));
        assert_eq!(cat.box_top1, 0.5);
        // Ranking 0.8 (pos), 0.3 (neg), 0.15 (pos): (1 + 2/3) / 2.
        assert!((cat.ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        let car = &r.per_category["car"];
        assert_eq!((car.precision, car.recall, car.f1), (1.0, 1.0, 1.0));
        assert!((r.macro_avg.f1 - 0.75).abs() < 1e-12);
        // 3 true boxes: two matched exactly (IoU 1), one missed entirely.
        assert!((r.ar_100 - 2.0 / 3.0).abs() < 1e-9);
    }
}
