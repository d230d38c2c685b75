#!/usr/bin/env python3
"""Reference computation of the retrieval metrics that `spotter eval` reports.

    eval_reference.py --annotations A.json --images DIR --model exported_onnx/starter
                      --out metrics.json [--threshold 0.2]

Independent of the Rust engine: numpy + onnxruntime + Pillow + tokenizers, with the model pipeline
of scripts/reference_pipeline.py (image loading with EXIF orientation, letterbox, image graph,
proposals with the manifest's objectness threshold / NMS / top-k, text embedding with the
manifest's query_template).

Metric, as WeDetect's object-retrieval evaluation defines it (eval_retrieval/retrieval_metric.py):
  * every category of the annotation file is a text query (its name);
  * score(image, category) = max over the image's proposals of sigmoid(<q, v>), q = [t_hat ; 1],
    v = [scale_l * e ; bias_l] (an image without proposals has no score and is never retrieved);
  * an image is retrieved for a category when its score is STRICTLY greater than the threshold;
  * ground truth = the images with at least one box of the category;
  * per category: precision = TP / retrieved (0 when nothing is retrieved), recall = TP / positives,
    F1 = 2PR / (P + R) (0 when P + R = 0);
  * macro = plain mean over the categories with at least one positive image (others are not
    evaluated; their retrieved counts are listed under "unevaluated"). Unlike WeDetect's script the
    per-category values are not rounded to 4 decimals before averaging.
Added here (not in WeDetect's script):
  * ap: scikit-learn's average_precision_score over all images, scored by their best
    probability (0 for an image without proposals); tied images are one step;
  * box_top1: over the positive images, the fraction whose top-scoring proposal for the category
    (the first in proposal order among equal scores) has IoU >= 0.5 with a ground-truth box of that
    category (IoU in float64, displayed pixels, no +1); a positive image without proposals misses.

Output JSON: {"threshold", "model", "images", "per_category": {name: {"precision", "recall", "f1",
"ap", "box_top1", "positives", "retrieved", "true_positives"}}, "macro": {"precision", "recall",
"f1", "ap", "box_top1", "categories"}, "unevaluated": {name: retrieved}, "scores": {file_name:
{name: max probability or null}}} (scores only for the evaluated categories).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from sklearn.metrics import average_precision_score  # scripts/test-requirements.txt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_pipeline import (  # noqa: E402
    ACTIVATIONS, embed_texts, letterbox, load_rgb, run_image_graph, select_proposals, to_original,
    to_tensor,
)

IOU_MIN = 0.5


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def image_proposals(session, manifest, path):
    """(boxes [P,4] in displayed pixels, vectors [P, D+1] float32) with the manifest's defaults."""
    prop = manifest["proposals"]
    levels_cfg = manifest["scoring"]["levels"]
    scales = np.asarray([lv["scale"] for lv in levels_cfg], np.float32)
    biases = np.asarray([lv["bias"] for lv in levels_cfg], np.float32)
    img = load_rgb(path)
    w, h = img.size
    canvas, lb = letterbox(img, manifest)
    boxes, obj, emb, levels = run_image_graph(session, manifest, to_tensor(canvas, manifest))
    keep, _ = select_proposals(boxes, obj, prop["objectness_threshold"], prop["nms_iou"],
                               prop["max_per_image"])
    out_boxes, vecs = [], []
    for idx in keep:
        lvl = int(levels[idx])
        vecs.append(np.concatenate([scales[lvl] * emb[idx], biases[lvl:lvl + 1]]).astype(np.float32))
        out_boxes.append(to_original(boxes[idx], lb, w, h))
    d = emb.shape[1] + 1
    return (np.asarray(out_boxes, np.float64).reshape(-1, 4),
            np.asarray(vecs, np.float32).reshape(-1, d), (w, h))


def main(argv=None):
    ap = argparse.ArgumentParser(description="reference retrieval metrics (WeDetect definition)")
    ap.add_argument("--annotations", required=True)
    ap.add_argument("--images", required=True, help="folder the annotation file_names are relative to")
    ap.add_argument("--model", required=True, help="model package folder (with model.json)")
    ap.add_argument("--out", required=True, help="metrics JSON ('-' for stdout)")
    ap.add_argument("--threshold", type=float, default=0.2,
                    help="an image is retrieved when its max probability is > this (default 0.2)")
    args = ap.parse_args(argv)

    with open(args.annotations, encoding="utf-8") as f:
        coco = json.load(f)
    with open(os.path.join(args.model, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    act = ACTIVATIONS[manifest["scoring"]["activation"]]

    cats = sorted(coco["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    cat_index = {c["id"]: k for k, c in enumerate(cats)}
    images = sorted(coco["images"], key=lambda im: im["id"])
    gt = {im["id"]: [[] for _ in cats] for im in images}  # image id -> per category boxes x1y1x2y2
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        gt[a["image_id"]][cat_index[a["category_id"]]].append((x, y, x + w, y + h))

    _, _, t_hat = embed_texts(args.model, manifest, names)
    q = np.concatenate([t_hat, np.ones((len(names), 1), np.float32)], axis=1).astype(np.float64)

    session = ort.InferenceSession(os.path.join(args.model, manifest["image"]["graph"]),
                                   providers=["CPUExecutionProvider"])
    # per image: best score and best proposal box per category (None when no proposals)
    best_score, best_box = {}, {}
    for im in images:
        boxes, vecs, size = image_proposals(session, manifest, os.path.join(args.images, im["file_name"]))
        if size != (im["width"], im["height"]):
            sys.exit(f"ERROR: {im['file_name']}: displayed size {size} != annotated "
                     f"{(im['width'], im['height'])}")
        if len(vecs) == 0:
            best_score[im["id"]] = [None] * len(names)
            best_box[im["id"]] = [None] * len(names)
            continue
        probs = act(vecs.astype(np.float64) @ q.T)  # [P, K]
        arg = np.argmax(probs, axis=0)  # first maximal proposal
        best_score[im["id"]] = [float(probs[arg[k], k]) for k in range(len(names))]
        best_box[im["id"]] = [boxes[arg[k]].tolist() for k in range(len(names))]

    thr = args.threshold
    per_cat, unevaluated, scores = {}, {}, {im["file_name"]: {} for im in images}
    for k, name in enumerate(names):
        positives = {im["id"] for im in images if gt[im["id"]][k]}
        retrieved = {i for i, s in best_score.items() if s[k] is not None and s[k] > thr}
        if not positives:
            unevaluated[name] = len(retrieved)
            continue
        tp = len(retrieved & positives)
        precision = tp / len(retrieved) if retrieved else 0.0
        recall = tp / len(positives)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        ids = sorted(best_score)
        ap_k = float(average_precision_score([i in positives for i in ids],
                                             [best_score[i][k] or 0.0 for i in ids]))
        hits = 0
        for i in positives:
            b = best_box[i][k]
            if b is not None and any(iou(b, g) >= IOU_MIN for g in gt[i][k]):
                hits += 1
        per_cat[name] = {"precision": precision, "recall": recall, "f1": f1, "ap": ap_k,
                         "box_top1": hits / len(positives), "positives": len(positives),
                         "retrieved": len(retrieved), "true_positives": tp}
        for im in images:
            scores[im["file_name"]][name] = best_score[im["id"]][k]

    keys = ["precision", "recall", "f1", "ap", "box_top1"]
    macro = {m: (float(np.mean([v[m] for v in per_cat.values()])) if per_cat else 0.0) for m in keys}
    macro["categories"] = len(per_cat)
    result = {"threshold": thr, "model": manifest.get("name"), "images": len(images),
              "per_category": per_cat, "macro": macro, "unevaluated": unevaluated, "scores": scores}
    text = json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"threshold {thr}: {len(images)} images, {len(per_cat)} evaluated categories", file=sys.stderr)
    print(f"{'category':<14} {'pos':>4} {'ret':>4} {'P':>6} {'R':>6} {'F1':>6} {'AP':>6} {'top1':>6}",
          file=sys.stderr)
    for name, v in per_cat.items():
        print(f"{name:<14} {v['positives']:>4} {v['retrieved']:>4} {v['precision']:6.3f} {v['recall']:6.3f} "
              f"{v['f1']:6.3f} {v['ap']:6.3f} {v['box_top1']:6.3f}", file=sys.stderr)
    print(f"{'macro':<14} {'':>4} {'':>4} {macro['precision']:6.3f} {macro['recall']:6.3f} "
          f"{macro['f1']:6.3f} {macro['ap']:6.3f} {macro['box_top1']:6.3f}", file=sys.stderr)
    fps = {n: c for n, c in unevaluated.items() if c}
    if fps:
        print(f"retrieved for categories with no positives: {fps}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
