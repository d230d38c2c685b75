#!/usr/bin/env python3
"""The Python peer of `spotter index`, for the throughput benchmark: the same work with the usual
Python stack (Pillow decode + EXIF + letterbox, numpy normalisation, onnxruntime batched inference,
numpy NMS + top-k, stored vectors kept in memory). No database: it only has to be a fair lower
bound of what a Python indexer costs.

    python_pipeline.py --model exported_onnx/starter --batch 4 ARCHIVE_DIR
Prints one JSON line: images, seconds, images_per_second, proposals.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reference_pipeline import letterbox, load_rgb, select_proposals, to_tensor  # noqa: E402

EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("archive")
    args = ap.parse_args()
    with open(os.path.join(args.model, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    im, prop = manifest["image"], manifest["proposals"]
    levels = manifest["scoring"]["levels"]
    scales = np.asarray([lv["scale"] for lv in levels], np.float32)
    biases = np.asarray([lv["bias"] for lv in levels], np.float32)
    session = ort.InferenceSession(os.path.join(args.model, im["graph"]), providers=["CPUExecutionProvider"])
    files = sorted(os.path.join(d, n) for d, _, names in os.walk(args.archive) for n in names if n.lower().endswith(EXTS))
    outs = im["outputs"]
    names = [outs["boxes"], outs["objectness"], outs["embeddings"]] + ([outs["levels"]] if outs.get("levels") else [])
    started = time.perf_counter()
    stored, total, model_secs = [], 0, 0.0
    for i in range(0, len(files), args.batch):
        chunk = files[i:i + args.batch]
        tensors, boxes_meta = [], []
        for path in chunk:
            img = load_rgb(path)
            canvas, lb = letterbox(img, manifest)
            tensors.append(to_tensor(canvas, manifest))
            boxes_meta.append((lb, img.size))
        t = time.perf_counter()
        res = session.run(names, {im["input"]: np.stack(tensors)})
        model_secs += time.perf_counter() - t
        for b, (lb, (w, h)) in enumerate(boxes_meta):
            boxes = res[0][b].reshape(-1, 4)
            obj = res[1][b].reshape(-1)
            emb = res[2][b].reshape(obj.shape[0], -1)
            lv = res[3][b].reshape(-1).astype(np.int64) if len(res) > 3 else np.zeros(obj.shape[0], np.int64)
            keep, _ = select_proposals(boxes, obj, prop["objectness_threshold"], prop["nms_iou"], prop["max_per_image"])
            for k in keep:
                x1, y1, x2, y2 = boxes[k]
                r = lb["ratio"]
                box = [min(max((x1 - lb["left"]) / r, 0), w), min(max((y1 - lb["top"]) / r, 0), h),
                       min(max((x2 - lb["left"]) / r, 0), w), min(max((y2 - lb["top"]) / r, 0), h)]
                vec = np.concatenate([emb[k] * scales[lv[k]], [biases[lv[k]]]]).astype(np.float32)
                stored.append((path, box, float(obj[k]), vec))
            total += len(keep)
    secs = time.perf_counter() - started
    print(json.dumps({"images": len(files), "seconds": round(secs, 3),
                      "images_per_second": round(len(files) / secs, 3), "proposals": total,
                      "model_seconds": round(model_secs, 3)}))


if __name__ == "__main__":
    main()
