"""End-to-end check of a built starter package with onnxruntime, following docs/model-contract.md.

Runs the image graph on sample photos from the scikit-image wheel (pixel pipeline, proposals and
scoring exactly as the manifest says), prints the top proposals and query probabilities, and
fails if a labelled object is not found, if its right queries do not pass the default threshold,
if unrelated queries do, or if batching changes the outputs.

Usage: verify_starter.py [PACKAGE_DIR] [--draw DIR]   (--draw writes the boxes onto PNGs)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common import CLASS_PROMPT, COCO_CLASSES, OUT_DIR, die, test_image

# (image, label, hand-labelled box x1,y1,x2,y2 in image pixels, right queries, unrelated queries)
EXPECTED = [
    ("chelsea.png", "cat", (0, 0, 451, 300), ["cat", "kitty", "a cat on a sofa"], ["car", "person", "bicycle"]),
    ("coffee.png", "cup", (175, 15, 410, 305), ["cup", "a mug of coffee", "coffee cup"], ["car", "person", "cat"]),
    ("motorcycle_left.png", "motorcycle", (100, 70, 690, 455), ["motorcycle", "motorbike"], ["cat", "person", "cup"]),
    ("motorcycle_right.png", "motorcycle", (70, 60, 630, 455), ["motorcycle", "motorbike"], ["cat", "dining table"]),
    ("astronaut.png", "person", (0, 10, 370, 512), ["person", "woman", "astronaut"], ["car", "cat", "cup"]),
]
MIN_IOU = 0.6
SHOW_QUERIES = ["cat", "car", "cup", "person", "motorcycle", "kitty", "automobile", "a mug of coffee"]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes, scores, thr):
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        ix = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = ix * iy
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        iou_ = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou_ < thr]
    return np.array(keep, dtype=int)


class Package:
    def __init__(self, pkg_dir: Path, image_graph: Path | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.dir = Path(pkg_dir)
        self.manifest = m = json.loads((self.dir / "model.json").read_text())
        so = ort.SessionOptions()
        so.log_severity_level = 3
        prov = ["CPUExecutionProvider"]
        self.image = ort.InferenceSession(str(image_graph or self.dir / m["image"]["graph"]), so, providers=prov)
        self.text = ort.InferenceSession(str(self.dir / m["text"]["graph"]), so, providers=prov)
        self.tok = Tokenizer.from_file(str(self.dir / m["text"]["tokenizer"]))
        (level,) = m["scoring"]["levels"]
        self.scale, self.bias = float(level["scale"]), float(level["bias"])
        self.threshold = float(m["scoring"]["default_threshold"])

    @staticmethod
    def load_image(name):
        return test_image(name).convert("RGB")

    def preprocess(self, img):
        """The contract's pixel pipeline; returns (CHW float32, resize scale, (pad_left, pad_top))."""
        from PIL import Image

        im = self.manifest["image"]
        h, w = im["input_size"]
        s = min(w / img.width, h / img.height)
        nw, nh = max(1, round(img.width * s)), max(1, round(img.height * s))
        filt = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "catmull_rom": Image.BICUBIC, "lanczos3": Image.LANCZOS}
        resized = img.resize((nw, nh), filt[im["resize_filter"]])
        pv = im["letterbox"]["pad_value"]
        canvas = Image.new("RGB", (w, h), (pv, pv, pv))
        left, top = ((w - nw) // 2, (h - nh) // 2) if im["letterbox"]["centered"] else (0, 0)
        canvas.paste(resized, (left, top))
        x = np.asarray(canvas).astype(np.float32)
        if im["channel_order"] == "BGR":
            x = x[:, :, ::-1]
        x = (x * im["scale"] - np.array(im["mean"], np.float32)) / np.array(im["std"], np.float32)
        if im["layout"] == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=np.float32), s, (left, top)

    def run_image(self, batch: np.ndarray):
        o = self.manifest["image"]["outputs"]
        names = [o["boxes"], o["objectness"], o["embeddings"]]
        boxes, obj, emb = self.image.run(names, {self.manifest["image"]["input"]: batch})
        return boxes, obj.reshape(obj.shape[0], -1), emb

    def proposals(self, img, outputs=None):
        """Boxes in image pixels, objectness, embeddings of the kept proposals (engine defaults)."""
        x, s, (left, top) = self.preprocess(img)
        boxes, obj, emb = outputs if outputs is not None else (a[0] for a in self.run_image(x[None]))
        p = self.manifest["proposals"]
        idx = np.where(obj >= p["objectness_threshold"])[0]
        idx = idx[nms(boxes[idx], obj[idx], p["nms_iou"])][: p["max_per_image"]]
        b = (boxes[idx] - np.array([left, top, left, top], np.float32)) / s
        return b, obj[idx], emb[idx]

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        t = self.manifest["text"]
        enc = [self.tok.encode(t["query_template"].replace("{}", q)).ids[: t["max_length"]] for q in queries]
        L = max(len(e) for e in enc)
        ids = np.full((len(enc), L), t["pad_id"], np.int64)
        mask = np.zeros((len(enc), L), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = 1
        feed = {t["input_ids"]: ids, t["attention_mask"]: mask}
        if t["token_type_ids"]:
            feed[t["token_type_ids"]] = np.zeros_like(ids)
        (out,) = self.text.run([t["output"]], feed)
        return out.reshape(len(queries), -1)

    def prob(self, cos):
        return 1.0 / (1.0 + np.exp(-(self.scale * np.asarray(cos) + self.bias)))


def flip_check(pkg: Package, images: dict) -> list[tuple[int, int, float]]:
    """Estimate the anchor-centre offset from horizontal-flip consistency.

    NanoDet was trained with horizontal flips, so a cell's box on the flipped image, mirrored
    back, should equal the mirror cell's box on the original. If the graph places centres at
    (col + d)·s while the network was trained with (col + d*)·s, the mirrored boxes disagree by
    (2d − 1)·s on average (derivation in exported_onnx/README.md), i.e. zero only for d = 0.5.
    Returns (stride, candidates, estimated d) per stride over confident candidates."""
    strides = (8, 16, 32)
    size = pkg.manifest["image"]["input_size"][1]
    mirror, level, off = [], [], 0
    for s in strides:
        n = size // s
        idx = np.arange(n * n).reshape(n, n)
        mirror.append(off + idx[:, ::-1].ravel())
        level.append(np.full(n * n, s))
        off += n * n
    mirror, level = np.concatenate(mirror), np.concatenate(level)
    disc = {s: [] for s in strides}
    for img in images.values():
        x = pkg.preprocess(img)[0]
        (b1, o1, _), (b2, _, _) = [tuple(a[0] for a in pkg.run_image(v[None])) for v in (x, x[:, :, ::-1].copy())]
        for i in np.where(o1 >= 0.25)[0]:
            j = mirror[i]
            back_x1 = size - b2[j, 2]
            back_x2 = size - b2[j, 0]
            if 0 < b1[i, 0] and b1[i, 2] < size:  # skip boxes clipped at the border
                disc[level[i]].append(((b1[i, 0] - back_x1) + (b1[i, 2] - back_x2)) / 2)
    return [(s, len(d), 0.5 + float(np.mean(d)) / (2 * s)) for s, d in disc.items() if d]


def main() -> None:
    args = sys.argv[1:]
    draw_dir = None
    if "--draw" in args:
        i = args.index("--draw")
        draw_dir = Path(args[i + 1])
        del args[i : i + 2]
    pkg = Package(Path(args[0]) if args else OUT_DIR)
    failures = []
    names = list(dict.fromkeys(e[0] for e in EXPECTED))
    images = {n: pkg.load_image(n) for n in names}

    # Batch of all images at once vs one at a time: the batch dimension must be real.
    xs = [pkg.preprocess(images[n])[0] for n in names]
    batched = pkg.run_image(np.stack(xs))
    n_cand = batched[0].shape[1]
    single = [pkg.run_image(x[None]) for x in xs]
    bdiff = max(float(np.abs(batched[k][i] - single[i][k][0]).max()) for i in range(len(xs)) for k in range(3))
    norms = np.linalg.norm(batched[2], axis=-1)
    print(f"image graph: batch {len(xs)} -> boxes {batched[0].shape}, objectness {batched[1].shape}, "
          f"embeddings {batched[2].shape}; batched vs single max abs diff {bdiff:.1e}; "
          f"embedding norms {norms.min():.4f}..{norms.max():.4f}")
    if bdiff > 1e-3:
        failures.append(f"batched and single-image outputs differ by {bdiff}")
    if n_cand != 3549 or abs(norms - 1).max() > 1e-3:
        failures.append("unexpected candidate count or embeddings not unit length")

    est = flip_check(pkg, images)
    print("anchor centre offset estimated from flip consistency (graph uses 0.5): "
          + ", ".join(f"stride {s}: {d:.2f} ({n} candidates)" for s, n, d in est))
    if any(abs(d - 0.5) > 0.2 for _, _, d in est):
        failures.append("flip consistency contradicts the (col + 0.5)·stride anchor centres")

    cls_emb = pkg.embed_queries(COCO_CLASSES) if pkg.manifest["text"]["query_template"] == CLASS_PROMPT else None
    qemb = pkg.embed_queries(SHOW_QUERIES)
    props = {}
    for i, n in enumerate(names):
        props[n] = pkg.proposals(images[n], outputs=tuple(a[i] for a in batched))
        boxes, obj, emb = props[n]
        print(f"\n{n} {images[n].size}: {len(boxes)} proposals (objectness >= "
              f"{pkg.manifest['proposals']['objectness_threshold']})")
        probs = pkg.prob(emb @ qemb.T)
        print("   objness  box (image px)          best class      " + " ".join(f"{q[:10]:>10s}" for q in SHOW_QUERIES))
        for k in range(min(len(boxes), 6)):
            best = COCO_CLASSES[int(np.argmax(emb[k] @ cls_emb.T))] if cls_emb is not None else "?"
            bx = "[" + ",".join(f"{v:.0f}" for v in boxes[k]) + "]"
            print(f"   {obj[k]:.3f}  {bx:23s} {best:15s} " + " ".join(f"{p:10.3f}" for p in probs[k]))
        if draw_dir is not None:
            from PIL import ImageDraw

            draw_dir.mkdir(parents=True, exist_ok=True)
            im = images[n].copy()
            d = ImageDraw.Draw(im)
            for k in range(len(boxes)):
                d.rectangle([float(v) for v in boxes[k]], outline=(255, 0, 0), width=3)
                best = COCO_CLASSES[int(np.argmax(emb[k] @ cls_emb.T))] if cls_emb is not None else ""
                d.text((float(boxes[k][0]) + 4, float(boxes[k][1]) + 2), f"{best} {obj[k]:.2f}", fill=(255, 255, 0))
            im.save(draw_dir / f"starter_{Path(n).stem}.png")

    print("\nlabelled objects (probabilities with the manifest's scoring):")
    for name, label, gt, pos, neg in EXPECTED:
        boxes, obj, emb = props[name]
        ious = [iou(b, gt) for b in boxes]
        if not ious or max(ious) < MIN_IOU:
            failures.append(f"{name}: no proposal with IoU >= {MIN_IOU} with the {label} (best {max(ious, default=0):.2f})")
            continue
        j = int(np.argmax(ious))
        pp = pkg.prob(pkg.embed_queries(pos) @ emb[j])
        pn = pkg.prob(pkg.embed_queries(neg) @ emb[j])
        print(f"   {name}: {label} IoU {ious[j]:.2f} objectness {obj[j]:.3f} | "
              + ", ".join(f"{q!r} {p:.3f}" for q, p in zip(pos, pp)) + " | unrelated: "
              + ", ".join(f"{q!r} {p:.3f}" for q, p in zip(neg, pn)))
        if pp.min() < pkg.threshold:
            failures.append(f"{name}: a right query for the {label} scores below the default threshold")
        if pn.max() >= pkg.threshold:
            failures.append(f"{name}: an unrelated query scores above the default threshold on the {label}")

    # Retrieval over all proposals of all images: the best hit for each label's first query
    # must be a proposal on an object of that label.
    allb = [(n, k) for n in names for k in range(len(props[n][0]))]
    alle = np.concatenate([props[n][2] for n in names])
    print("\nretrieval (best proposal over all images):")
    for label in dict.fromkeys(e[1] for e in EXPECTED):
        query = next(e[3][0] for e in EXPECTED if e[1] == label)
        sc = alle @ pkg.embed_queries([query])[0]
        top = int(np.argmax(sc))
        tn, tk = allb[top]
        hit = max((iou(props[tn][0][tk], e[2]) for e in EXPECTED if e[0] == tn and e[1] == label), default=0.0)
        print(f"   {query!r}: best {tn} proposal #{tk} prob {pkg.prob(sc[top]):.3f}, IoU with a labelled {label} {hit:.2f}")
        if hit < MIN_IOU:
            failures.append(f"retrieval: the best proposal for {query!r} is not a labelled {label}")

    if failures:
        die("starter package verification failed:\n  " + "\n  ".join(failures))
    print("\nstarter package verification passed")


if __name__ == "__main__":
    main()
