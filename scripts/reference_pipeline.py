#!/usr/bin/env python3
"""Python/onnxruntime reference of the engine's whole model pipeline (docs/model-contract.md).

    reference_pipeline.py --model DIR --images IMG... [--texts "cat,car"]
                          [--threshold T] [--nms-iou X] [--max-per-image K]
                          [--save-letterbox DIR] --out out.json

Independent of the Rust engine (numpy + Pillow + onnxruntime + tokenizers only); the Rust fidelity
tests spawn it and compare. Every convention the engine has to match is written out below, in the
order it is applied.

Image, for each file:
  1. Image.open -> ImageOps.exif_transpose (EXIF orientation applied; width/height reported are the
     displayed ones) -> RGB:
       * 16-bit grey ("I;16*", "I") is mapped to 8 bits as round(v / 257) (Pillow's own
         convert("RGB") would clip everything above 255 to white);
       * every other mode: Pillow's convert("RGB"). Alpha is DROPPED, not composited; palette
         images use their palette; CMYK uses Pillow's naive CMYK->RGB; 16-bit RGB PNGs arrive from
         Pillow already reduced to 8 bits (high byte).
  2. Letterbox to input_size [H, W]:
       r  = min(H / h, W / w)                     (float64)
       nw = max(1, round_half_even(w * r)),  nh = max(1, round_half_even(h * r))
            (Python round(); Rust: f64::round_ties_even, NOT f64::round)
       resized = img.resize((nw, nh), FILTER) with FILTER from resize_filter: nearest -> NEAREST,
            bilinear -> BILINEAR, catmull_rom -> BICUBIC (Pillow's cubic is a = -0.5, i.e.
            Catmull-Rom), lanczos3 -> LANCZOS; skipped when (nw, nh) == (w, h). Pillow's
            BILINEAR/BICUBIC/LANCZOS are separable convolutions whose support widens when
            downscaling (antialiased), horizontal pass first, uint8 between the passes, 22-bit
            fixed-point weights: spec_resize() below writes the algorithm out exactly
            (`--self-test-resize` checks it against Pillow).
       canvas W x H filled with pad_value in every channel; centred: left = (W - nw) // 2,
            top = (H - nh) // 2 (odd pixel right/bottom); not centred: left = top = 0.
  3. float32 HWC array of the uint8 canvas -> channel order (BGR reverses RGB) ->
       x = x * float32(scale) -> x = (x - float32(mean[c])) / float32(std[c]) (float32 ops, in
       this order) -> NCHW or NHWC, batch of 1 (or the manifest's fixed batch, padded with zeros).
Image graph, per image: boxes [N,4], objectness [N] (or [N,1]), embeddings [N,D], levels [N]
(all zeros when the manifest has levels = null).
Proposals:
  * keep candidates with objectness >= threshold;
  * greedy class-agnostic NMS: order by objectness descending, ties by lower candidate index
    (stable sort); a candidate is dropped when its IoU with an already kept one is > nms_iou
    (strictly greater). IoU in float32, boxes in letterbox pixels:
    inter = max(0, min(ax2,bx2) - max(ax1,bx1)) * max(0, min(ay2,by2) - max(ay1,by1)),
    area = (x2 - x1) * (y2 - y1) (no +1), iou = inter / (areaA + areaB - inter), 0 if the
    denominator is <= 0;
  * keep the first max_per_image survivors.
  * box in original (displayed) pixels, float64: x -> (x - left) / r, y -> (y - top) / r, then
    clipped to [0, w] x [0, h]. (r is the float64 ratio of step 2, not nw / w.)
  * stored vector v = [scale_l * e ; bias_l] (float32 products, D + 1 floats).
Text:
  * query = query_template with "{}" replaced by the text; tokenizer.json via `tokenizers`
    with its padding config removed and truncation to max_length (tokenizers' own truncation:
    the post-processor's <s> ... </s> are kept, the text in between is cut); pad to the longest
    text with pad_id, attention_mask 1 on tokens and 0 on padding, token_type_ids zeros if the
    manifest names them; text graph -> t_hat [K, D] (a leading 1 is dropped).
  * q = [t_hat ; 1]; score = activation(<q, v>) (float64 dot of the float32 vectors).
  * independently from the raw outputs: activation(scale_l * <e, t_hat> + bias_l); the two must
    agree (checked; the script fails otherwise).
Output JSON (floats are the exact float32 values where the model produced them):
  {model, settings, texts: [{text, query, ids, embedding}],
   images: [{path, width, height, letterbox: {ratio, resized: [nw, nh], left, top},
             candidates, passed_threshold,
             proposals: [{index, box, box_letterbox, objectness, level, vector, scores: {text: p}}]}]}
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps
from PIL import __version__ as PIL_VERSION
from tokenizers import Tokenizer

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "catmull_rom": Image.Resampling.BICUBIC,
    "lanczos3": Image.Resampling.LANCZOS,
}
ACTIVATIONS = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "identity": lambda x: x,
}


# ------------------------------------------------------------------------------------------
# image
# ------------------------------------------------------------------------------------------
def load_rgb(path):
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")  # uint8 2-D -> mode L
    return img.convert("RGB")


def letterbox(img, manifest):
    H, W = manifest["image"]["input_size"]
    lb = manifest["image"]["letterbox"]
    w, h = img.size
    r = min(H / h, W / w)
    nw = max(1, int(round(w * r)))
    nh = max(1, int(round(h * r)))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), FILTERS[manifest["image"]["resize_filter"]])
    if lb["centered"]:
        left, top = (W - nw) // 2, (H - nh) // 2
    else:
        left, top = 0, 0
    pad = int(lb["pad_value"])
    canvas = Image.new("RGB", (W, H), (pad, pad, pad))
    canvas.paste(img, (left, top))
    return canvas, {"ratio": r, "resized": [nw, nh], "left": left, "top": top}


def to_tensor(canvas, manifest):
    im = manifest["image"]
    x = np.asarray(canvas, dtype=np.float32)  # H, W, 3 RGB
    if im["channel_order"] == "BGR":
        x = x[:, :, ::-1]
    elif im["channel_order"] != "RGB":
        raise ValueError(f"channel_order {im['channel_order']!r}")
    x = x * np.float32(im["scale"])
    x = (x - np.asarray(im["mean"], np.float32)) / np.asarray(im["std"], np.float32)
    if im["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    elif im["layout"] != "NHWC":
        raise ValueError(f"layout {im['layout']!r}")
    return np.ascontiguousarray(x, dtype=np.float32)


def run_image_graph(session, manifest, tensor):
    im = manifest["image"]
    batch = im.get("batch_size") or 1
    x = np.zeros((batch,) + tensor.shape, np.float32)
    x[0] = tensor
    outs = im["outputs"]
    names = [outs["boxes"], outs["objectness"], outs["embeddings"]]
    if outs.get("levels"):
        names.append(outs["levels"])
    res = session.run(names, {im["input"]: x})
    boxes = res[0][0].reshape(-1, 4).astype(np.float32)
    n = boxes.shape[0]
    obj = res[1][0].reshape(n).astype(np.float32)
    emb = res[2][0].reshape(n, -1).astype(np.float32)
    levels = res[3][0].reshape(n).astype(np.int64) if len(res) > 3 else np.zeros(n, np.int64)
    if emb.shape[1] != manifest["embedding_dim"]:
        raise ValueError(f"embeddings have D={emb.shape[1]}, manifest says {manifest['embedding_dim']}")
    return boxes, obj, emb, levels


# ------------------------------------------------------------------------------------------
# Pillow's resize, written out (the algorithm the engine must port to be bit-exact)
# ------------------------------------------------------------------------------------------
# Pillow 11.3 (libImaging/Resample.c), 8-bit images. `--self-test-resize` checks these functions
# against Image.resize. fast_image_resize's Convolution(Bilinear) is NOT bit-exact with it (it
# quantises the weights differently: about 10% of the channel values differ by 1).
PRECISION_BITS = 22  # 32 - 8 - 2


def _bilinear(x):
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x, a=-0.5):  # Pillow's BICUBIC, i.e. Catmull-Rom
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x):
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x):
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


SPEC_FILTERS = {"bilinear": (_bilinear, 1.0), "catmull_rom": (_bicubic, 2.0), "lanczos3": (_lanczos, 3.0)}


def spec_weights(in_size, out_size, filter_name):
    """Fixed-point weights [out_size, in_size] of one pass (all arithmetic in float64).

    scale = in/out; filterscale = max(scale, 1); support = filter_support * filterscale;
    for output i: center = (i + 0.5) * scale; xmin = max(0, trunc(center - support + 0.5));
    xmax = min(in, trunc(center + support + 0.5)); w_x = filter((x - center + 0.5) / filterscale)
    for x in [xmin, xmax); normalise by their sum (summed in order, skipped if 0);
    quantise: trunc(w * 2^22 + 0.5) (w >= 0) or trunc(w * 2^22 - 0.5) (w < 0).
    """
    filt, support0 = SPEC_FILTERS[filter_name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    ss = 1.0 / filterscale
    m = np.zeros((out_size, in_size), np.int64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = [filt((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for v in ws:
            total += v
        if total != 0.0:
            ws = [v / total for v in ws]
        for x, v in enumerate(ws):
            m[i, xmin + x] = int(v * (1 << PRECISION_BITS) + (0.5 if v >= 0 else -0.5))
    return m


def spec_pass(weights, a, axis):
    """One pass on uint8 HWC: acc = 2^21 + sum(pixel * weight) (fits int32), then
    clamp(acc >> 22, 0, 255) with an arithmetic (flooring) shift."""
    a = a.astype(np.int64)
    acc = np.einsum("ow,hwc->hoc", weights, a) if axis == 1 else np.einsum("oh,hwc->owc", weights, a)
    return np.clip((acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255).astype(np.uint8)


def _nearest_index(n_in, n_out):
    step = n_in / n_out
    pos = step * 0.5  # accumulated in float64, as Pillow does
    out = []
    for _ in range(n_out):
        out.append(min(int(pos), n_in - 1))
        pos += step
    return np.asarray(out)


def spec_resize(a, nw, nh, filter_name):
    """Pillow's Image.resize((nw, nh), filter) of a uint8 HWC RGB array.

    Convolution filters: horizontal pass first (only if the width changes), result rounded to
    uint8, then the vertical pass (only if the height changes). NEAREST: source index
    trunc(pos) with pos starting at step/2 and advanced by step = in/out (accumulated).
    """
    h, w = a.shape[:2]
    if filter_name == "nearest":
        return a[_nearest_index(h, nh)][:, _nearest_index(w, nw)]
    if nw != w:
        a = spec_pass(spec_weights(w, nw, filter_name), a, 1)
    if nh != h:
        a = spec_pass(spec_weights(h, nh, filter_name), a, 0)
    return a


def self_test_resize(cases=40, seed=0):
    rng = np.random.default_rng(seed)
    for t in range(cases):
        w, h = (int(v) for v in rng.integers(1, 400, 2))
        side = int(rng.choice([160, 320, 640]))
        r = min(side / h, side / w)
        nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if t % 2:
            a = np.sort(a, axis=1)  # smooth-ish content as well as noise
        for name, pil in FILTERS.items():
            want = np.asarray(Image.fromarray(a).resize((nw, nh), pil))
            got = spec_resize(a, nw, nh, name)
            if not np.array_equal(want, got):
                raise AssertionError(f"{name} {w}x{h} -> {nw}x{nh}: spec differs from Pillow")
    print(f"resize spec == Pillow {PIL_VERSION} on {cases} random cases x {len(FILTERS)} filters")


# ------------------------------------------------------------------------------------------
# proposals
# ------------------------------------------------------------------------------------------
def iou_one_to_many(box, boxes):
    """IoU in float32 with plain areas (no +1)."""
    f = np.float32
    zero = f(0)
    iw = np.maximum(zero, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    ih = np.maximum(zero, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = iw * ih
    area_a = (box[2] - box[0]) * (box[3] - box[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > zero, inter / union, zero)
    return iou.astype(np.float32)


def select_proposals(boxes, obj, threshold, nms_iou, max_per_image):
    cand = np.nonzero(obj >= np.float32(threshold))[0]  # ascending index
    order = cand[np.argsort(-obj[cand], kind="stable")]  # objectness desc, ties: lower index
    keep = []
    suppressed = np.zeros(len(order), bool)
    nms = np.float32(nms_iou)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        if len(keep) == max_per_image:
            break
        rest = order[i + 1:]
        suppressed[i + 1:] |= iou_one_to_many(boxes[order[i]], boxes[rest]) > nms
    return keep, len(cand)


def to_original(box, lb, w, h):
    r, left, top = lb["ratio"], lb["left"], lb["top"]
    x1, y1, x2, y2 = (float(v) for v in box)
    out = [(x1 - left) / r, (y1 - top) / r, (x2 - left) / r, (y2 - top) / r]
    return [min(max(out[0], 0.0), w), min(max(out[1], 0.0), h),
            min(max(out[2], 0.0), w), min(max(out[3], 0.0), h)]


# ------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------
def embed_texts(model_dir, manifest, texts):
    tm = manifest["text"]
    tok = Tokenizer.from_file(os.path.join(model_dir, tm["tokenizer"]))
    tok.no_padding()
    tok.enable_truncation(max_length=int(tm["max_length"]))
    queries = [tm["query_template"].replace("{}", t) for t in texts]
    enc = tok.encode_batch(queries, add_special_tokens=True)
    ids_list = [e.ids for e in enc]
    L = max(len(i) for i in ids_list)
    ids = np.full((len(texts), L), int(tm["pad_id"]), np.int64)
    mask = np.zeros((len(texts), L), np.int64)
    for k, row in enumerate(ids_list):
        ids[k, :len(row)] = row
        mask[k, :len(row)] = 1
    feeds = {tm["input_ids"]: ids, tm["attention_mask"]: mask}
    if tm.get("token_type_ids"):
        feeds[tm["token_type_ids"]] = np.zeros_like(ids)
    sess = ort.InferenceSession(os.path.join(model_dir, tm["graph"]), providers=["CPUExecutionProvider"])
    (out,) = sess.run([tm["output"]], feeds)
    t = np.asarray(out, np.float32).reshape(len(texts), -1)
    norms = np.linalg.norm(t.astype(np.float64), axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise AssertionError(f"text embeddings are not L2-normalised: {norms}")
    return queries, ids_list, t


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description="reference model pipeline (docs/model-contract.md)")
    ap.add_argument("--self-test-resize", action="store_true",
                    help="check the written-out resize algorithm (spec_resize) against Pillow and exit")
    ap.add_argument("--model", help="model package folder (with model.json)")
    ap.add_argument("--images", nargs="+")
    ap.add_argument("--texts", default="", help="comma-separated queries")
    ap.add_argument("--threshold", type=float, help="objectness threshold (default: manifest)")
    ap.add_argument("--nms-iou", type=float, help="NMS IoU (default: manifest)")
    ap.add_argument("--max-per-image", type=int, help="proposals kept per image (default: manifest)")
    ap.add_argument("--save-letterbox", metavar="DIR",
                    help="also save each letterboxed uint8 canvas as DIR/<i>.png (lossless)")
    ap.add_argument("--out", help="JSON file to write ('-' for stdout)")
    args = ap.parse_args(argv)
    if args.self_test_resize:
        self_test_resize()
        return 0
    if not (args.model and args.images and args.out):
        ap.error("--model, --images and --out are required")

    with open(os.path.join(args.model, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    prop = manifest["proposals"]
    threshold = prop["objectness_threshold"] if args.threshold is None else args.threshold
    nms_iou = prop["nms_iou"] if args.nms_iou is None else args.nms_iou
    max_per_image = prop["max_per_image"] if args.max_per_image is None else args.max_per_image
    levels_cfg = manifest["scoring"]["levels"]
    scales = np.asarray([lv["scale"] for lv in levels_cfg], np.float32)
    biases = np.asarray([lv["bias"] for lv in levels_cfg], np.float32)
    act = ACTIVATIONS[manifest["scoring"]["activation"]]

    texts = [t.strip() for t in args.texts.split(",") if t.strip()]
    text_out, t_hat = [], None
    if texts:
        queries, ids_list, t_hat = embed_texts(args.model, manifest, texts)
        text_out = [{"text": t, "query": q, "ids": ids, "embedding": [float(v) for v in row]}
                    for t, q, ids, row in zip(texts, queries, ids_list, t_hat)]
        q_mat = np.concatenate([t_hat, np.ones((len(texts), 1), np.float32)], axis=1)  # [K, D+1]

    session = ort.InferenceSession(os.path.join(args.model, manifest["image"]["graph"]),
                                   providers=["CPUExecutionProvider"])
    if args.save_letterbox:
        os.makedirs(args.save_letterbox, exist_ok=True)

    images_out = []
    for i, path in enumerate(args.images):
        img = load_rgb(path)
        w, h = img.size
        canvas, lb = letterbox(img, manifest)
        if args.save_letterbox:
            canvas.save(os.path.join(args.save_letterbox, f"{i}.png"))
        boxes, obj, emb, levels = run_image_graph(session, manifest, to_tensor(canvas, manifest))
        if levels.min() < 0 or levels.max() >= len(levels_cfg):
            raise ValueError(f"levels out of range 0..{len(levels_cfg) - 1}")
        keep, n_passed = select_proposals(boxes, obj, threshold, nms_iou, max_per_image)

        proposals = []
        for idx in keep:
            lvl = int(levels[idx])
            vec = np.concatenate([scales[lvl] * emb[idx], biases[lvl:lvl + 1]]).astype(np.float32)
            p = {"index": idx,
                 "box": to_original(boxes[idx], lb, w, h),
                 "box_letterbox": [float(v) for v in boxes[idx]],
                 "objectness": float(obj[idx]),
                 "level": lvl,
                 "vector": [float(v) for v in vec],
                 "scores": {}}
            if texts:
                via_vector = act(q_mat.astype(np.float64) @ vec.astype(np.float64))
                direct = act(float(scales[lvl]) * (t_hat.astype(np.float64) @ emb[idx].astype(np.float64))
                             + float(biases[lvl]))
                if not np.allclose(via_vector, direct, rtol=1e-4, atol=1e-5):
                    raise AssertionError(f"{path} candidate {idx}: <q,v> scores {via_vector} "
                                         f"!= WeDetect formula {direct}")
                p["scores"] = {t: float(s) for t, s in zip(texts, via_vector)}
            proposals.append(p)
        images_out.append({"path": path, "width": w, "height": h, "letterbox": lb,
                           "candidates": int(len(obj)), "passed_threshold": int(n_passed),
                           "proposals": proposals})

    result = {"model": manifest["name"],
              "settings": {"objectness_threshold": threshold, "nms_iou": nms_iou, "max_per_image": max_per_image},
              "texts": text_out,
              "images": images_out}
    if args.out == "-":
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
