"""Developer tool: the measurements behind the starter manifest's T, scale, bias and threshold.

Not run by the build (its numbers are recorded in exported_onnx/README.md). Needs a built package
(exported_onnx/starter/ or the directory given) and the raw NanoDet graph in .cache/starter/.

1. Text side: cosine between query embeddings (class names and synonyms, with the query template)
   and the class-prompt embeddings: positives (the right class) vs negatives (any other class).
2. Image side: for hand-labelled objects in the sample photos, the cosine between the queries and
   the proposal's ConSE embedding for several top-T values, and how many junk proposals pass.

Usage: calibrate.py [PACKAGE_DIR]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import build_image_graph
from check_text import onnx_embed
from common import CLASS_PROMPT, COCO_CLASSES, OUT_DIR, WORK
from verify_starter import EXPECTED, Package, iou

SYNONYMS = [
    ("kitty", "cat"), ("kitten", "cat"), ("automobile", "car"), ("puppy", "dog"),
    ("a mug of coffee", "cup"), ("mug", "cup"), ("coffee cup", "cup"), ("sofa", "couch"),
    ("television", "tv"), ("mobile phone", "cell phone"), ("smartphone", "cell phone"),
    ("motorbike", "motorcycle"), ("bike", "bicycle"), ("plane", "airplane"), ("lorry", "truck"),
    ("ship", "boat"), ("teddy", "teddy bear"), ("woman", "person"), ("man", "person"),
    ("child", "person"), ("astronaut", "person"), ("table", "dining table"), ("computer", "laptop"),
    ("fridge", "refrigerator"), ("doughnut", "donut"), ("pony", "horse"), ("lamb", "sheep"),
    ("cattle", "cow"), ("football", "sports ball"), ("plant", "potted plant"), ("jet", "airplane"),
    ("sedan", "car"), ("monitor", "tv"), ("glass of wine", "wine glass"), ("hound", "dog"),
    ("scooter", "motorcycle"), ("puss", "cat"), ("tomcat", "cat"), ("hairdryer", "hair drier"),
    ("soccer ball", "sports ball"),
]


def pct(a, q):
    return float(np.percentile(a, q))


def main() -> None:
    pkg_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR
    pkg = Package(pkg_dir)
    tmpl = pkg.manifest["text"]["query_template"]
    cls_emb, _ = onnx_embed(pkg_dir, [CLASS_PROMPT.format(c) for c in COCO_CLASSES])

    # --- 1. text side
    qn = pkg.embed_queries(COCO_CLASSES)
    qs = pkg.embed_queries([q for q, _ in SYNONYMS])
    tgt = np.array([COCO_CLASSES.index(c) for _, c in SYNONYMS])
    sim_n, sim_s = qn @ cls_emb.T, qs @ cls_emb.T
    pos_s = sim_s[np.arange(len(SYNONYMS)), tgt]
    neg = np.concatenate([sim_n[~np.eye(80, dtype=bool)],
                          np.delete(sim_s.ravel(), np.arange(len(SYNONYMS)) * 80 + tgt)])
    print(f"query template {tmpl!r}, class prompt {CLASS_PROMPT!r}")
    print(f"  class names: cos to own prompt min {np.diag(sim_n).min():.3f}")
    print(f"  synonyms ({len(SYNONYMS)}): cos to right class min {pos_s.min():.3f} p10 {pct(pos_s, 10):.3f} "
          f"median {np.median(pos_s):.3f}; top-1 right {np.mean(sim_s.argmax(1) == tgt):.2f}")
    print(f"  negatives ({neg.size}): median {np.median(neg):.3f} p95 {pct(neg, 95):.3f} p99 {pct(neg, 99):.3f} "
          f"p99.9 {pct(neg, 99.9):.3f} max {neg.max():.3f}")
    for thr in (0.6, 0.65, 0.7, 0.75):
        print(f"  cos >= {thr:.2f}: synonyms kept {np.mean(pos_s >= thr):.2f}, negatives passing {np.mean(neg >= thr):.4f}")
    sc, b = pkg.scale, pkg.bias
    sig = lambda x: 1 / (1 + np.exp(-(sc * x + b)))  # noqa: E731
    print(f"  manifest scale {sc} bias {b}: prob(cos=1) {sig(1.0):.3f}, synonym median {sig(np.median(pos_s)):.3f}, "
          f"negative median {sig(np.median(neg)):.4f} p99 {sig(pct(neg, 99)):.3f}; "
          f"threshold {pkg.threshold} <=> cos {(np.log(pkg.threshold / (1 - pkg.threshold)) - b) / sc:.3f}")

    # --- 2. image side, several top-T
    raw = WORK / "nanodet_raw.onnx"
    names = sorted({e[0] for e in EXPECTED})
    images = {n: pkg.load_image(n) for n in names}
    print("labelled objects: cosine of the matched proposal with the class name, the lowest right query and the\n"
          "highest unrelated query (verify_starter.EXPECTED), for several top-T:")
    with tempfile.TemporaryDirectory() as td:
        cls_path = Path(td) / "cls.npy"
        np.save(cls_path, cls_emb)
        for top_t in (1, 3, 5, 10):
            out = Path(td) / f"image_t{top_t}.onnx"
            build_image_graph.build(raw, cls_emb, out, top_t)
            p = Package(pkg_dir, image_graph=out)
            props = {n: p.proposals(img) for n, img in images.items()}
            rows = []
            for name, label, gt, pos, neg in EXPECTED:
                boxes, obj, emb = props[name]
                j = int(np.argmax([iou(bx, gt) for bx in boxes]))
                cp = p.embed_queries(pos) @ emb[j]
                cn = p.embed_queries(neg) @ emb[j]
                rows.append((label, cp[0], cp.min(), cn.max()))
            # junk: proposals matching no labelled object, best cosine to any COCO class-name query
            junk = []
            for name in names:
                boxes, obj, emb = props[name]
                gts = [e[2] for e in EXPECTED if e[0] == name]
                for k in range(len(boxes)):
                    if max(iou(boxes[k], g) for g in gts) < 0.5:
                        junk.append(float((qn @ emb[k]).max()))
            margin = min(r[2] - r[3] for r in rows)
            print(f"  T={top_t}: " + "; ".join(f"{lab} name {c0:.3f} right>={lo:.3f} unrelated<={hi:.3f}" for lab, c0, lo, hi in rows)
                  + f" | min margin {margin:.3f}"
                  + f" | junk proposals {len(junk)}, their best class-name cos median {np.median(junk):.3f}")


if __name__ == "__main__":
    main()
