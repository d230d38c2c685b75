//! Evaluation on a COCO-format labelled set, with the reference implementations' definitions.
//!
//! - **Image retrieval** (WeDetect's `eval_retrieval/retrieval_metric.py`): for each category
//!   name used as a text query, an image is *retrieved* when the highest probability among its
//!   proposals exceeds the threshold; the positives are the images with at least one box of the
//!   category, crowd boxes included (`COCO.getImgIds(catIds=…)`; [`CrowdRule`] switches that).
//!   Per-category precision, recall and F1, macro-averaged over categories with a positive.
//! - **AP** (not in the reference): images ranked by that maximum probability; average precision
//!   as scikit-learn's `average_precision_score` defines it (tied scores are one step), so the
//!   value does not depend on the order of the files.
//! - **Box top-1** (not in the reference): for each positive image, does its best-scoring
//!   proposal overlap a box of the category (crowd boxes included) at IoU ≥ 0.5.
//! - **Proposal recall**, class-agnostic, averaged over IoU 0.50:0.05:0.95, with each image's N
//!   most objective proposals, matched one-to-one with the true boxes, two ways:
//!   [`proposal_recall`] is WeDetect's `eval_recall/recall.py: eval_recalls` (the definition of
//!   WeDetect-Uni's published AR@100 66.9 / AR@300 69.6); [`coco_recall`] is pycocotools'
//!   `COCOeval` with `useCats = 0`, area range "all".

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
    pub bbox: [f64; 4],
    /// A crowd region: never a recall target; a positive for retrieval under [`CrowdRule::Count`].
    #[serde(default)]
    pub iscrowd: u8,
    /// Region area (COCOeval's area ranges use it); `width · height` when absent.
    #[serde(default)]
    pub area: Option<f64>,
    /// Boxes marked `ignore` are no recall target for WeDetect's `eval_recall.py` (COCOeval
    /// ignores the field, as pycocotools overwrites it with `iscrowd`).
    #[serde(default)]
    pub ignore: Option<u8>,
}

/// A COCO category.
#[derive(Debug, Clone, Deserialize)]
pub struct CocoCategory {
    /// Category id.
    pub id: u64,
    /// Name, used as the text query.
    pub name: String,
}

/// One labelled box of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthBox {
    /// Category id.
    pub category: u64,
    /// `[x, y, width, height]`, as labelled.
    pub xywh: [f64; 4],
    /// Crowd region.
    pub crowd: bool,
    /// Marked `ignore` in the annotation file.
    pub ignore: bool,
    /// Area (for COCOeval's area range).
    pub area: f64,
}

impl TruthBox {
    /// The box of an annotation.
    pub fn from_annotation(a: &CocoAnnotation) -> TruthBox {
        TruthBox {
            category: a.category_id,
            xywh: a.bbox,
            crowd: a.iscrowd != 0,
            ignore: a.ignore.unwrap_or(0) != 0,
            area: a.area.unwrap_or(a.bbox[2] * a.bbox[3]),
        }
    }

    /// `[x1, y1, x2, y2]` in single precision, computed as `eval_recall.py` does (sums in double
    /// precision, then rounded to `float32`).
    fn xyxy_f32(&self) -> [f32; 4] {
        let [x, y, w, h] = self.xywh;
        [x as f32, y as f32, (x + w) as f32, (y + h) as f32]
    }
}

/// One proposal as evaluation sees it (and as `POST /api/proposals` sends it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvalProposal {
    /// `[x1, y1, x2, y2]` in image pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Objectness: the proposal order for recall.
    pub objectness: f32,
    /// Probability per category, in the order of the `categories` given to [`evaluate`] (the
    /// `concepts` of the request).
    #[serde(rename = "scores")]
    pub probs: Vec<f32>,
}

impl EvalProposal {
    fn xywh_f64(&self) -> [f64; 4] {
        let [x1, y1, x2, y2] = self.bbox.map(f64::from);
        [x1, y1, x2 - x1, y2 - y1]
    }
}

/// One image's labels and proposals.
#[derive(Debug, Clone, Default)]
pub struct EvalImage {
    /// Labelled boxes.
    pub truth: Vec<TruthBox>,
    /// Proposals, in any order (recall sorts them by objectness, stably).
    pub proposals: Vec<EvalProposal>,
}

impl EvalImage {
    /// The `n` most objective proposals (ties keep their order).
    fn top(&self, n: usize) -> Vec<&EvalProposal> {
        let mut props: Vec<&EvalProposal> = self.proposals.iter().collect();
        props.sort_by(|a, b| b.objectness.total_cmp(&a.objectness));
        props.truncate(n);
        props
    }

    fn best_prob(&self, c: usize) -> f32 {
        self.proposals
            .iter()
            .map(|p| p.probs[c])
            .fold(0.0, f32::max)
    }
}

/// Which images are positives of a category for the retrieval metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrowdRule {
    /// Any box of the category, crowd regions included (WeDetect's retrieval metric).
    #[default]
    Count,
    /// Only non-crowd boxes make an image a positive.
    Exclude,
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
    /// Share of positive images whose best proposal hits a box of the category (IoU ≥ 0.5).
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
    /// Which images count as positives.
    pub crowd: CrowdRule,
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
    /// Proposal recall with 100 proposals per image, WeDetect's `eval_recalls` definition.
    pub ar_100: f64,
    /// The same with 300 proposals per image.
    pub ar_300: f64,
    /// Proposal recall with 100 proposals per image, COCOeval's definition (`useCats = 0`).
    pub coco_ar_100: f64,
    /// The same with 300 proposals per image.
    pub coco_ar_300: f64,
    /// The most proposals any image has: AR@300 only differs from AR@100 above 100.
    pub max_proposals_per_image: usize,
    /// Mean proposals per image.
    pub mean_proposals_per_image: f64,
}

/// IoU of two xyxy boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    spotter_model::postprocess::iou(a, b)
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

/// Average precision of a ranking (`score` per image, whether it is a positive), as
/// scikit-learn's `average_precision_score`: `Σ (Rₙ − Rₙ₋₁) · Pₙ` over the distinct scores from
/// the highest down, so images with equal scores enter together. 0 without positives.
pub fn average_precision(scores: &[(f32, bool)]) -> f64 {
    let mut ranked = scores.to_vec();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = ranked.iter().filter(|s| s.1).count();
    if positives == 0 {
        return 0.0;
    }
    let (mut tp, mut seen, mut recall_before, mut sum) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < ranked.len() {
        let score = ranked[i].0;
        while i < ranked.len() && ranked[i].0.total_cmp(&score).is_eq() {
            tp += usize::from(ranked[i].1);
            seen += 1;
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        sum += (recall - recall_before) * (tp as f64 / seen as f64);
        recall_before = recall;
    }
    sum
}

/// The ten IoU thresholds 0.50:0.05:0.95 as `numpy.linspace(.5, .95, 10)` computes them.
fn iou_thresholds() -> [f64; 10] {
    let step = (0.95 - 0.5) / 9.0;
    std::array::from_fn(|i| if i == 9 { 0.95 } else { 0.5 + i as f64 * step })
}

/// IoU in single precision exactly as `eval_recall/recall.py: bbox_overlaps` computes it.
fn iou_f32_reference(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let overlap = w * h;
    overlap / (area_a + area_b - overlap).max(1e-6)
}

/// Class-agnostic proposal recall as WeDetect's `eval_recalls` (from mmdet) defines it: crowd
/// and `ignore` boxes are no targets; in each image the pair (true box, proposal) with the
/// highest IoU is matched and both are removed, until every true box has a match or none is
/// left; recall at each threshold is the share of true boxes whose match reaches it, averaged
/// over IoU 0.50:0.05:0.95. 0 when there is no true box.
pub fn proposal_recall(images: &[EvalImage], n: usize) -> f64 {
    let mut matched: Vec<f32> = Vec::new();
    for image in images {
        let truth: Vec<[f32; 4]> = image
            .truth
            .iter()
            .filter(|t| !t.crowd && !t.ignore)
            .map(TruthBox::xyxy_f32)
            .collect();
        let props = image.top(n);
        if props.is_empty() {
            matched.extend(std::iter::repeat_n(0.0, truth.len()));
            continue;
        }
        let mut ious: Vec<Vec<f32>> = truth
            .iter()
            .map(|t| {
                props
                    .iter()
                    .map(|p| iou_f32_reference(t, &p.bbox))
                    .collect()
            })
            .collect();
        for _ in 0..truth.len() {
            // Each true box's best proposal (first on ties), then the true box whose best is
            // highest (first on ties), as numpy's argmax picks them.
            let mut pick: Option<(usize, usize, f32)> = None;
            for (g, row) in ious.iter().enumerate() {
                let (p, best) =
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |acc, (j, &v)| {
                                if v > acc.1 {
                                    (j, v)
                                } else {
                                    acc
                                }
                            },
                        );
                if pick.is_none_or(|(_, _, v)| best > v) {
                    pick = Some((g, p, best));
                }
            }
            let Some((g, p, best)) = pick else { break };
            matched.push(best);
            ious[g].iter_mut().for_each(|v| *v = -1.0);
            ious.iter_mut().for_each(|row| row[p] = -1.0);
        }
    }
    if matched.is_empty() {
        return 0.0;
    }
    let total = matched.len() as f64;
    let thresholds = iou_thresholds();
    thresholds
        .iter()
        .map(|&t| matched.iter().filter(|&&v| f64::from(v) >= t).count() as f64 / total)
        .sum::<f64>()
        / thresholds.len() as f64
}

/// IoU of a proposal and a true box as pycocotools computes it (double precision; a crowd
/// region's IoU is the overlap over the proposal's own area).
fn iou_coco(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let union = if crowd {
        d[2] * d[3]
    } else {
        d[2] * d[3] + g[2] * g[3] - inter
    };
    inter / union
}

/// Class-agnostic proposal recall as pycocotools' `COCOeval` computes it with `useCats = 0`,
/// area range "all" and `maxDets = n`: at each IoU threshold, proposals in decreasing
/// objectness take the unmatched true box they overlap most (a crowd region may absorb any
/// number of them); crowd regions and areas outside `[0, 1e10]` are not counted; recall is the
/// share of the counted true boxes that were taken, averaged over IoU 0.50:0.05:0.95.
/// 0 when no true box counts.
pub fn coco_recall(images: &[EvalImage], n: usize) -> f64 {
    let thresholds = iou_thresholds();
    let mut found = [0usize; 10];
    let mut counted = 0usize;
    for image in images {
        // Counted boxes first, then the ignored ones (a stable sort, as COCOeval's).
        let mut truth: Vec<(&TruthBox, bool)> = image
            .truth
            .iter()
            .map(|t| (t, t.crowd || t.area < 0.0 || t.area > 1e10))
            .collect();
        truth.sort_by_key(|(_, ignored)| *ignored);
        counted += truth.iter().filter(|(_, ignored)| !ignored).count();
        let props = image.top(n);
        let ious: Vec<Vec<f64>> = props
            .iter()
            .map(|p| {
                let d = p.xywh_f64();
                truth
                    .iter()
                    .map(|(t, _)| iou_coco(&d, &t.xywh, t.crowd))
                    .collect()
            })
            .collect();
        for (ti, &t) in thresholds.iter().enumerate() {
            let mut taken = vec![false; truth.len()];
            for row in &ious {
                let mut best = t.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for (g, (tb, ignored)) in truth.iter().enumerate() {
                    if taken[g] && !tb.crowd {
                        continue;
                    }
                    if let Some(m) = m {
                        if !truth[m].1 && *ignored {
                            break;
                        }
                    }
                    if row[g] < best {
                        continue;
                    }
                    best = row[g];
                    m = Some(g);
                }
                if let Some(m) = m {
                    taken[m] = true;
                }
            }
            found[ti] += truth
                .iter()
                .zip(&taken)
                .filter(|((_, ignored), taken)| **taken && !ignored)
                .count();
        }
    }
    if counted == 0 {
        return 0.0;
    }
    found
        .iter()
        .map(|&f| f as f64 / counted as f64)
        .sum::<f64>()
        / thresholds.len() as f64
}

/// Computes every metric; `categories` gives the order of the probabilities in the proposals.
pub fn evaluate(
    images: &[EvalImage],
    categories: &[CocoCategory],
    threshold: f32,
    crowd: CrowdRule,
) -> EvalReport {
    let holds = |im: &EvalImage, id: u64| {
        im.truth
            .iter()
            .any(|t| t.category == id && (crowd == CrowdRule::Count || !t.crowd))
    };
    // Per reported category (those with a positive image): its index, which images are
    // positives, and each image's best probability for it (computed once, used by every
    // threshold of the sweep).
    let reported: Vec<(usize, Vec<bool>, Vec<f32>)> = (0..categories.len())
        .filter_map(|c| {
            let flags: Vec<bool> = images
                .iter()
                .map(|im| holds(im, categories[c].id))
                .collect();
            flags.iter().any(|f| *f).then(|| {
                let best = images.iter().map(|im| im.best_prob(c)).collect();
                (c, flags, best)
            })
        })
        .collect();
    let at = |t: f32, flags: &[bool], best: &[f32]| {
        let positives = flags.iter().filter(|f| **f).count();
        let retrieved = best.iter().filter(|b| **b > t).count();
        let tp = best
            .iter()
            .zip(flags)
            .filter(|(b, f)| **b > t && **f)
            .count();
        (positives, retrieved, tp)
    };
    let mut per_category = BTreeMap::new();
    for (c, flags, best) in &reported {
        let (c, id) = (*c, categories[*c].id);
        let (positives, retrieved, tp) = at(threshold, flags, best);
        let (precision, recall, f1) = prf(tp, retrieved, positives);
        let ranking: Vec<(f32, bool)> = best.iter().copied().zip(flags.iter().copied()).collect();
        let top1_hits = images
            .iter()
            .zip(flags)
            .filter(|(im, f)| {
                // The first proposal with the highest probability (ties: earlier wins).
                **f && im
                    .proposals
                    .iter()
                    .reduce(|best, p| if p.probs[c] > best.probs[c] { p } else { best })
                    .is_some_and(|best| {
                        im.truth
                            .iter()
                            .any(|t| t.category == id && iou(&best.bbox, &t.xyxy_f32()) >= 0.5)
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
                box_top1: top1_hits as f64 / positives as f64,
            },
        );
    }
    let macro_at = |t: f32| {
        let n = reported.len().max(1) as f64;
        let (mut p, mut r, mut f) = (0.0, 0.0, 0.0);
        for (_, flags, best) in &reported {
            let (positives, retrieved, tp) = at(t, flags, best);
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
    let total: usize = images.iter().map(|im| im.proposals.len()).sum();
    EvalReport {
        images: images.len(),
        threshold,
        crowd,
        macro_avg: macro_at(threshold),
        mean_ap: per_category.values().map(|m| m.ap).sum::<f64>() / n,
        mean_box_top1: per_category.values().map(|m| m.box_top1).sum::<f64>() / n,
        sweep: [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
            .iter()
            .map(|&t| macro_at(t))
            .collect(),
        ar_100: proposal_recall(images, 100),
        ar_300: proposal_recall(images, 300),
        coco_ar_100: coco_recall(images, 100),
        coco_ar_300: coco_recall(images, 300),
        max_proposals_per_image: images
            .iter()
            .map(|im| im.proposals.len())
            .max()
            .unwrap_or(0),
        mean_proposals_per_image: total as f64 / images.len().max(1) as f64,
        per_category,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth(category: u64, xyxy: [f64; 4]) -> TruthBox {
        TruthBox {
            category,
            xywh: [xyxy[0], xyxy[1], xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]],
            crowd: false,
            ignore: false,
            area: (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1]),
        }
    }

    fn proposal(bbox: [f32; 4], objectness: f32, probs: Vec<f32>) -> EvalProposal {
        EvalProposal {
            bbox,
            objectness,
            probs,
        }
    }

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
    fn tied_scores_are_one_step_whatever_their_order() {
        // One positive and one negative tied at the top: precision 1/2 at recall 1/2 ...
        let a = average_precision(&[(0.9, true), (0.9, false), (0.5, true)]);
        let b = average_precision(&[(0.9, false), (0.9, true), (0.5, true)]);
        assert_eq!(a, b);
        // ... then 2/3 at recall 1.
        assert!((a - (0.5 * 0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn one_proposal_covers_one_true_box() {
        let b = [0.0, 0.0, 10.0, 10.0];
        let image = EvalImage {
            truth: vec![
                truth(1, [0.0, 0.0, 10.0, 10.0]),
                truth(1, [0.0, 0.0, 10.0, 10.0]),
            ],
            proposals: vec![proposal(b, 0.9, vec![])],
        };
        let images = [image];
        assert_eq!(proposal_recall(&images, 100), 0.5);
        assert_eq!(coco_recall(&images, 100), 0.5);
    }

    #[test]
    fn crowd_regions_are_no_recall_targets_but_positives() {
        let cats = vec![CocoCategory {
            id: 5,
            name: "person".into(),
        }];
        let mut crowd = truth(5, [0.0, 0.0, 10.0, 10.0]);
        crowd.crowd = true;
        let images = vec![EvalImage {
            truth: vec![crowd],
            proposals: vec![proposal([0.0, 0.0, 10.0, 10.0], 0.9, vec![0.8])],
        }];
        let counted = evaluate(&images, &cats, 0.2, CrowdRule::Count);
        assert_eq!(counted.per_category["person"].positives, 1);
        assert_eq!(counted.ar_100, 0.0);
        assert_eq!(counted.coco_ar_100, 0.0);
        let excluded = evaluate(&images, &cats, 0.2, CrowdRule::Exclude);
        assert!(excluded.per_category.is_empty());
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
        let t = [0.0, 0.0, 10.0, 10.0];
        let images = vec![
            // A cat, found with a good box.
            EvalImage {
                truth: vec![truth(17, t)],
                proposals: vec![proposal(b, 0.9, vec![0.8, 0.1])],
            },
            // A cat whose best cat proposal is elsewhere and below threshold.
            EvalImage {
                truth: vec![truth(17, t)],
                proposals: vec![proposal(far, 0.5, vec![0.15, 0.05])],
            },
            // No cat, but a false cat detection; a car.
            EvalImage {
                truth: vec![truth(3, t)],
                proposals: vec![proposal(b, 0.7, vec![0.3, 0.6])],
            },
        ];
        let r = evaluate(&images, &cats, 0.2, CrowdRule::Count);
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
        assert!((r.coco_ar_100 - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.max_proposals_per_image, 1);
    }
}
