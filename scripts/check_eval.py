#!/usr/bin/env python3
"""Checks `spotter eval` against the reference implementations themselves.

Builds labelled sets with the cases that break naive metrics (duplicated and overlapping true
boxes, crowd regions, `ignore` boxes, images without boxes or proposals, tied proposal scores,
tied image scores, more than 300 proposals), runs `spotter eval --proposals … --json`, and
compares, to 1e-6:

- `coco_ar_100`, `coco_ar_300` with pycocotools' COCOeval (iouType bbox, useCats=0,
  maxDets [100, 300], area range "all");
- per-category AP with scikit-learn's `average_precision_score`;
- positives with pycocotools' `COCO.getImgIds(catIds=…)` (WeDetect's retrieval ground truth),
  and P/R/F1 with scikit-learn's `precision_recall_fscore_support` on the images retrieved by
  WeDetect's rule (max probability > threshold);
- with `--wedetect-repo W`: `ar_100`, `ar_300` with WeDetect's own `eval_recall/recall.py:
  eval_recalls` (needs `terminaltables`), fed as WeDetect's `eval_recall.py` feeds it, and P/R/F1
  with its own `eval_retrieval/retrieval_metric.py: evaluate_retrieval_per_class` (which rounds
  to 4 decimals).

It also checks that AP does not change when the files are listed in another order.
Exit status 0 when everything agrees, 1 with the differences otherwise.

    .venv/bin/python scripts/check_eval.py --spotter target/release/spotter [--wedetect-repo W]
"""

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Set

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

TOLERANCE = 1e-6
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 17, "name": "cat"}, {"id": 44, "name": "bottle"}]


def grid(rng, lo, hi):
    """A coordinate on a 1/8-pixel grid: exact in float32, so both sides see the same box."""
    return round(rng.uniform(lo, hi) * 8) / 8


def random_box(rng, side=640):
    x, y = grid(rng, 0, side - 20), grid(rng, 0, side - 20)
    return [x, y, grid(rng, 4, side - x), grid(rng, 4, side - y)]


def jitter(rng, box, amount):
    x, y, w, h = box
    return [max(0.0, x + grid(rng, -amount, amount)), max(0.0, y + grid(rng, -amount, amount)),
            max(1.0, w + grid(rng, -amount, amount)), max(1.0, h + grid(rng, -amount, amount))]


def make_set(seed, images=40, duplicate_all=False):
    """Annotations and COCO results with the hard cases; deterministic for a seed."""
    rng = random.Random(seed)
    coco = {"images": [], "annotations": [], "categories": CATEGORIES}
    results = []
    ann_id = 1
    for i in range(images):
        image_id = 1000 + i * 7
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 640})
        boxes = []
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8])):
            box = random_box(rng)
            copies = [box]
            if rng.random() < 0.25:
                copies.append(list(box))  # an exact duplicate
            if rng.random() < 0.3:
                copies.append(jitter(rng, box, 6))  # an overlapping neighbour
            for b in copies:
                boxes.append({
                    "id": ann_id, "image_id": image_id,
                    "category_id": rng.choice(CATEGORIES)["id"], "bbox": b,
                    "area": b[2] * b[3] * rng.uniform(0.4, 1.0),
                    "iscrowd": 1 if rng.random() < 0.1 else 0,
                })
                if rng.random() < 0.05:
                    boxes[-1]["ignore"] = 1
                ann_id += 1
        if duplicate_all:
            for b in list(boxes):
                boxes.append(dict(b, id=ann_id))
                ann_id += 1
        coco["annotations"].extend(boxes)
        if rng.random() < 0.1:
            continue  # an image without proposals
        n = rng.choice([1, 20, 100, 150, 320])
        for k in range(n):
            if boxes and rng.random() < 0.5:
                b = jitter(rng, rng.choice(boxes)["bbox"], rng.choice([1, 4, 16, 40]))
            else:
                b = random_box(rng)
            entry = {"image_id": image_id, "category_id": CATEGORIES[0]["id"], "bbox": b, "score": round(rng.random(), 2)}
            if rng.random() < 0.7:
                entry["category_scores"] = {str(c["id"]): round(rng.random(), 1) for c in CATEGORIES}
            results.append(entry)
    return coco, results


def spotter_eval(spotter, annotations, results, threshold, crowd="count"):
    out = subprocess.run(
        [spotter, "eval", "--json", "--annotations", annotations, "--proposals", results,
         "--threshold", str(threshold), "--crowd", crowd],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"spotter eval failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout)


def coco_recall(annotations, results):
    """COCOeval's AR@100 and AR@300, class-agnostic."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.useCats = 0
        ev.params.maxDets = [100, 300]
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"]  # [T, K, A, M]
    out = []
    for m in range(2):
        r = recall[:, 0, 0, m]
        out.append(float(np.mean(r[r > -1])) if np.any(r > -1) else 0.0)
    return out


def wedetect_recall(repo, coco, results):
    """WeDetect's eval_recalls, given boxes as eval_recall.py gives them (score order, no score
    column; crowd and ignore boxes dropped from the targets)."""
    spec = importlib.util.spec_from_file_location("wedetect_recall", Path(repo) / "eval_recall" / "recall.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    gts, props = [], []
    for image in coco.dataset["images"]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in anns if not (a.get("ignore", False) or a["iscrowd"])]
        gts.append(np.array(boxes, dtype=np.float32) if boxes else np.zeros((0, 4)))
        mine = sorted(by_image.get(image["id"], []), key=lambda r: -r["score"])  # stable
        props.append(np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (r["bbox"] for r in mine)],
                              dtype=np.float32).reshape(-1, 4))
    iou_thrs = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
    with contextlib.redirect_stdout(io.StringIO()):
        recalls = module.eval_recalls(gts, props, [100, 300], iou_thrs)
    return [float(sum(recalls[0]) / len(recalls[0])), float(sum(recalls[1]) / len(recalls[1]))]


def wedetect_retrieval_function(repo):
    """`evaluate_retrieval_per_class` from the checkout's eval_retrieval/retrieval_metric.py.
    The module runs its whole evaluation when imported, so only that function's definition is
    taken from its source (with a no-op progress bar for its tqdm call)."""
    path = Path(repo) / "eval_retrieval" / "retrieval_metric.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "evaluate_retrieval_per_class"]
    namespace = {"Dict": Dict, "List": List, "Set": Set, "tqdm": lambda items, **_: items}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["evaluate_retrieval_per_class"]


def retrieval_reference(coco, results, threshold, wedetect_fn=None):
    """Per category: positives (pycocotools' getImgIds), retrieved images (max probability >
    threshold, WeDetect's rule), P/R/F1 (scikit-learn; WeDetect's own function too when given,
    which rounds to 4 decimals), AP (scikit-learn)."""
    best = {}
    for r in results:
        for cid, p in (r.get("category_scores") or {}).items():
            key = (r["image_id"], int(cid))
            best[key] = max(best.get(key, 0.0), p)
    image_ids = [im["id"] for im in coco.dataset["images"]]
    out = {}
    for cat in CATEGORIES:
        positives = set(coco.getImgIds(catIds=[cat["id"]]))
        if not positives:
            continue
        scores = np.array([best.get((i, cat["id"]), 0.0) for i in image_ids], dtype=np.float32)
        truth = np.array([i in positives for i in image_ids])
        predicted = scores > np.float32(threshold)
        p, rc, f1, _ = precision_recall_fscore_support(truth, predicted, average="binary", zero_division=0)
        out[cat["name"]] = {
            "positives": len(positives), "retrieved": int(predicted.sum()), "precision": float(p),
            "recall": float(rc), "f1": float(f1), "ap": float(average_precision_score(truth, scores)),
        }
        if wedetect_fn:
            retrieved = [i for i, r in zip(image_ids, predicted) if r]
            theirs = wedetect_fn({cat["name"]: retrieved}, {cat["name"]: positives})[cat["name"]]
            out[cat["name"]]["wedetect"] = {k: theirs[k] for k in ("precision", "recall", "f1")}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spotter", required=True, help="the spotter binary")
    parser.add_argument("--wedetect-repo", help="a WeDetect checkout: also compare with its eval_recalls")
    parser.add_argument("--seeds", type=int, default=4, help="random sets to check (default 4)")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    failures = []

    def same(label, ours, theirs):
        if abs(ours - theirs) > TOLERANCE:
            failures.append(f"{label}: spotter {ours:.9f}, reference {theirs:.9f}")

    wedetect_fn = wedetect_retrieval_function(args.wedetect_repo) if args.wedetect_repo else None
    cases = [(f"random set {s}", s, False) for s in range(args.seeds)] + [("every true box duplicated", 99, True)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, seed, duplicate in cases:
            coco_json, results = make_set(seed, duplicate_all=duplicate)
            ann, res = Path(tmp, f"{seed}.json"), Path(tmp, f"{seed}-results.json")
            ann.write_text(json.dumps(coco_json))
            res.write_text(json.dumps(results))
            ours = spotter_eval(args.spotter, str(ann), str(res), args.threshold)
            coco_100, coco_300 = coco_recall(str(ann), str(res))
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(str(ann))  # afresh: COCOeval rewrites the `ignore` fields it loaded
            same(f"{label}: coco_ar_100 vs COCOeval", ours["coco_ar_100"], coco_100)
            same(f"{label}: coco_ar_300 vs COCOeval", ours["coco_ar_300"], coco_300)
            if args.wedetect_repo:
                w100, w300 = wedetect_recall(args.wedetect_repo, coco, results)
                same(f"{label}: ar_100 vs WeDetect eval_recalls", ours["ar_100"], w100)
                same(f"{label}: ar_300 vs WeDetect eval_recalls", ours["ar_300"], w300)
            reference = retrieval_reference(coco, results, args.threshold, wedetect_fn)
            if sorted(reference) != sorted(ours["per_category"]):
                failures.append(f"{label}: categories {sorted(ours['per_category'])} vs {sorted(reference)}")
            for name, ref in reference.items():
                mine = ours["per_category"].get(name, {})
                for key in ("positives", "retrieved"):
                    if mine.get(key) != ref[key]:
                        failures.append(f"{label}: {name} {key}: spotter {mine.get(key)}, reference {ref[key]}")
                for key in ("precision", "recall", "f1", "ap"):
                    same(f"{label}: {name} {key}", mine.get(key, float("nan")), ref[key])
                for key, theirs in ref.get("wedetect", {}).items():  # rounded to 4 decimals there
                    if abs(round(mine.get(key, float("nan")), 4) - theirs) > TOLERANCE:
                        failures.append(f"{label}: {name} {key}: spotter {mine.get(key)}, "
                                        f"WeDetect's evaluate_retrieval_per_class {theirs}")

            # Order independence: the same data with images and proposals listed in reverse.
            shuffled = dict(coco_json, images=coco_json["images"][::-1], annotations=coco_json["annotations"][::-1])
            ann2, res2 = Path(tmp, f"{seed}-reversed.json"), Path(tmp, f"{seed}-reversed-results.json")
            ann2.write_text(json.dumps(shuffled))
            # Reversing the proposals changes which of two tied proposals comes first, which
            # legitimately moves recall; the image ranking (AP) must not move.
            res2.write_text(json.dumps(results[::-1]))
            reordered = spotter_eval(args.spotter, str(ann2), str(res2), args.threshold)
            for name in reference:
                same(f"{label}: {name} AP with files reordered", reordered["per_category"][name]["ap"],
                     ours["per_category"][name]["ap"])
            print(f"{label}: {len(coco_json['annotations'])} boxes, {len(results)} proposals; "
                  f"AR@100 {ours['ar_100']:.4f} / COCOeval {coco_100:.4f} (spotter {ours['coco_ar_100']:.4f}), "
                  f"AR@300 COCOeval {coco_300:.4f} (spotter {ours['coco_ar_300']:.4f})")
    if failures:
        print(f"{len(failures)} differences:", *failures, sep="\n  ")
        return 1
    print("spotter eval agrees with pycocotools, scikit-learn"
          + (" and WeDetect's eval_recalls and evaluate_retrieval_per_class" if args.wedetect_repo else "")
          + f" to {TOLERANCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
