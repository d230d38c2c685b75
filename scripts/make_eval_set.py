#!/usr/bin/env python3
"""Build Spotter's small labelled retrieval-evaluation set (COCO format), deterministically.

    make_eval_set.py OUT [--force] [--draw DIR]

Source photos: the scikit-image wheel in .cache/downloads (the same wheel the starter build uses).
Writes OUT/images/*.png|jpg and OUT/annotations.json:

    {"images": [{"id", "file_name", "width", "height"}],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area", "iscrowd": 0}],
     "categories": [{"id", "name"}]}          (all 80 COCO 2017 categories, standard ids)

width/height and boxes are in DISPLAYED pixels (after the EXIF orientation is applied).

Contents:
  * 6 real photos with hand-drawn boxes for every clearly visible COCO-class object (BASE below);
  * transformed copies: crops (boxes clipped; a box whose visible area is < 50 % of its area is
    dropped), horizontal flips, rescales (0.5x, 1.5x), JPEG quality 40, and EXIF-rotated JPEGs
    (orientation 6 and 8: pixels stored rotated, the displayed image is the upright original);
  * distractors: photos and background crops with no COCO-class object.

Checks (the script fails otherwise): every box lies inside its image and is non-empty; every file
decodes to the recorded displayed size; every EXIF file, after ImageOps.exif_transpose, matches
the intended upright pixels (and not another rotation); a second build in a temporary folder is
byte-identical (determinism). Prints a summary. --draw DIR writes every image with its boxes.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image, ImageDraw, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# COCO 2017 category ids (91-id space with 11 unused ids), name -> id.
COCO_IDS = {
    "person": 1, "bicycle": 2, "car": 3, "motorcycle": 4, "airplane": 5, "bus": 6, "train": 7,
    "truck": 8, "boat": 9, "traffic light": 10, "fire hydrant": 11, "stop sign": 13,
    "parking meter": 14, "bench": 15, "bird": 16, "cat": 17, "dog": 18, "horse": 19, "sheep": 20,
    "cow": 21, "elephant": 22, "bear": 23, "zebra": 24, "giraffe": 25, "backpack": 27,
    "umbrella": 28, "handbag": 31, "tie": 32, "suitcase": 33, "frisbee": 34, "skis": 35,
    "snowboard": 36, "sports ball": 37, "kite": 38, "baseball bat": 39, "baseball glove": 40,
    "skateboard": 41, "surfboard": 42, "tennis racket": 43, "bottle": 44, "wine glass": 46,
    "cup": 47, "fork": 48, "knife": 49, "spoon": 50, "bowl": 51, "banana": 52, "apple": 53,
    "sandwich": 54, "orange": 55, "broccoli": 56, "carrot": 57, "hot dog": 58, "pizza": 59,
    "donut": 60, "cake": 61, "chair": 62, "couch": 63, "potted plant": 64, "bed": 65,
    "dining table": 67, "toilet": 70, "tv": 72, "laptop": 73, "mouse": 74, "remote": 75,
    "keyboard": 76, "cell phone": 77, "microwave": 78, "oven": 79, "toaster": 80, "sink": 81,
    "refrigerator": 82, "book": 84, "clock": 85, "vase": 86, "scissors": 87, "teddy bear": 88,
    "hair drier": 89, "toothbrush": 90,
}
assert len(COCO_IDS) == 80 and len(set(COCO_IDS.values())) == 80

# Hand-drawn boxes (x1, y1, x2, y2) in source pixels, checked by drawing them on the photos.
# A box covers the VISIBLE extent of the object (COCO convention), mirrors and handles included.
BASE = {
    "astronaut.png": [  # Eileen Collins; the shuttle model, flag and helmet are not COCO classes
        ("person", (18, 14, 366, 512)),
    ],
    "chelsea.png": [  # the cat's head fills the frame; right strip is blurred background
        ("cat", (0, 0, 400, 300)),
    ],
    "coffee.png": [  # espresso cup on a saucer (saucer: no COCO class) on a wooden table
        ("cup", (172, 17, 409, 306)),
        ("spoon", (325, 66, 424, 326)),
        ("dining table", (0, 0, 600, 400)),
    ],
    "motorcycle_left.png": [  # garage: motorcycle, wooden bench, red bicycle behind it, bottles on the shelf
        ("motorcycle", (92, 17, 688, 452)),
        ("bench", (40, 104, 290, 306)),
        ("bicycle", (0, 106, 118, 231)),
        ("bottle", (400, 52, 422, 93)),   # yellow car-wash bottle
        ("bottle", (477, 47, 495, 72)),   # motor-oil bottle, partly behind the mirror stalk
    ],
    "motorcycle_right.png": [  # the same scene from the right camera of the stereo pair
        ("motorcycle", (48, 15, 630, 452)),
        ("bench", (15, 105, 266, 310)),
        ("bicycle", (0, 106, 62, 230)),
        ("bottle", (381, 51, 400, 93)),
        ("bottle", (462, 47, 479, 72)),
    ],
    "camera.png": [  # the cameraman; camera and tripod are not COCO classes
        ("person", (0, 64, 332, 512)),
    ],
}
# Whole photos with no COCO-class object.
DISTRACTORS = ["rocket.jpg", "coins.png", "hubble_deep_field.jpg", "brick.png"]

MIN_VISIBLE = 0.5  # a cropped box is kept when at least this fraction of its area stays visible


def find_wheel() -> str:
    hits = sorted(glob.glob(os.path.join(ROOT, ".cache", "downloads", "scikit_image-*.whl")))
    if not hits:
        sys.exit("ERROR: scikit-image wheel not found in .cache/downloads (scripts/setup.sh downloads it)")
    return hits[-1]


class Source:
    def __init__(self):
        self.zip = zipfile.ZipFile(find_wheel())

    def raw(self, name: str) -> bytes:
        return self.zip.read(f"skimage/data/{name}")

    def image(self, name: str) -> Image.Image:
        im = Image.open(io.BytesIO(self.raw(name)))
        im.load()
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        return im


# ------------------------------------------------------------------------------------------
# box transforms (boxes are (name, [x1, y1, x2, y2]) in float)
# ------------------------------------------------------------------------------------------
def crop_boxes(boxes, rect):
    cx1, cy1, cx2, cy2 = rect
    out = []
    for name, (x1, y1, x2, y2) in boxes:
        ix1, iy1, ix2, iy2 = max(x1, cx1), max(y1, cy1), min(x2, cx2), min(y2, cy2)
        if ix2 <= ix1 or iy2 <= iy1:
            continue
        if (ix2 - ix1) * (iy2 - iy1) < MIN_VISIBLE * (x2 - x1) * (y2 - y1):
            continue
        out.append((name, [ix1 - cx1, iy1 - cy1, ix2 - cx1, iy2 - cy1]))
    return out


def flip_boxes(boxes, width):
    return [(n, [width - x2, y1, width - x1, y2]) for n, (x1, y1, x2, y2) in boxes]


def scale_boxes(boxes, sx, sy):
    return [(n, [x1 * sx, y1 * sy, x2 * sx, y2 * sy]) for n, (x1, y1, x2, y2) in boxes]


# ------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------
def save_png(im: Image.Image, path: str):
    im.save(path, format="PNG", optimize=False, compress_level=6)


def save_jpeg(im: Image.Image, path: str, quality: int, exif: bytes | None = None):
    kw = {"format": "JPEG", "quality": quality, "optimize": False, "progressive": False}
    if im.mode == "RGB":
        kw["subsampling"] = 0 if quality >= 90 else 2
    if exif is not None:
        kw["exif"] = exif
    im.save(path, **kw)


def orientation_exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


# Pixels to STORE so that a viewer applying the EXIF orientation shows the upright image:
# ImageOps.exif_transpose applies ROTATE_270 for 6 and ROTATE_90 for 8, so store the inverse.
STORE_FOR_ORIENTATION = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def build(out: str, src: Source) -> dict:
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir)
    images, annotations, exif_checks = [], [], []

    def add(file_name, width, height, boxes):
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for name, b in boxes:
            x1, y1, x2, y2 = (round(float(v), 2) for v in b)
            w, h = round(x2 - x1, 2), round(y2 - y1, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": COCO_IDS[name], "bbox": [x1, y1, w, h],
                                "area": round(w * h, 2), "iscrowd": 0})

    def base_boxes(name):
        return [(n, [float(v) for v in b]) for n, b in BASE[name]]

    def stem(name):
        return os.path.splitext(name)[0]

    # 1. originals, copied byte for byte
    for name in BASE:
        im = src.image(name)
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(src.raw(name))
        add(name, im.width, im.height, base_boxes(name))

    # 2. distractors: whole photos, copied byte for byte
    for name in DISTRACTORS:
        im = src.image(name)
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(src.raw(name))
        add(name, im.width, im.height, [])

    # 3. crops: (source, tag, rect) -- some keep objects (clipped), some cut them away
    crops = [
        ("coffee.png", "left", (0, 0, 330, 400)),          # cup 67 %, table 55 %, spoon dropped (5 %)
        ("chelsea.png", "face", (60, 20, 400, 300)),       # cat clipped (79 %)
        ("astronaut.png", "lower", (0, 150, 512, 512)),    # person clipped (73 %)
        ("astronaut.png", "flag", (0, 0, 100, 200)),       # background: flag only (distractor)
        ("camera.png", "person", (0, 40, 360, 512)),       # person kept whole
        ("camera.png", "sky", (345, 0, 512, 260)),         # background: sky, buildings (distractor)
        ("motorcycle_left.png", "left", (0, 0, 450, 500)),    # motorcycle clipped (60 %), rest kept
        ("motorcycle_right.png", "right", (300, 0, 741, 500)),  # motorcycle 57 %, bench/bicycle cut
        ("motorcycle_left.png", "shelf", (300, 0, 741, 45)),  # top shelf: motorcycle 6 % -> dropped
    ]
    for name, tag, rect in crops:
        im = src.image(name).crop(rect)
        fn = f"{stem(name)}_crop_{tag}.png"
        save_png(im, os.path.join(img_dir, fn))
        add(fn, im.width, im.height, crop_boxes(base_boxes(name), rect))

    # 4. horizontal flips
    for name in BASE:
        im = src.image(name).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        fn = f"{stem(name)}_flip.png"
        save_png(im, os.path.join(img_dir, fn))
        add(fn, im.width, im.height, flip_boxes(base_boxes(name), im.width))

    # 5. rescales (Pillow LANCZOS); boxes scaled by the exact per-axis factors
    rescales = [(n, 0.5) for n in BASE] + [("chelsea.png", 1.5), ("coffee.png", 1.5), ("camera.png", 1.5)]
    for name, s in rescales:
        im = src.image(name)
        nw, nh = int(round(im.width * s)), int(round(im.height * s))
        out_im = im.resize((nw, nh), Image.Resampling.LANCZOS)
        fn = f"{stem(name)}_x{str(s).replace('.', 'p')}.png"
        save_png(out_im, os.path.join(img_dir, fn))
        add(fn, nw, nh, scale_boxes(base_boxes(name), nw / im.width, nh / im.height))

    # 6. JPEG quality 40
    for name in BASE:
        im = src.image(name)
        fn = f"{stem(name)}_q40.jpg"
        save_jpeg(im, os.path.join(img_dir, fn), 40)
        add(fn, im.width, im.height, base_boxes(name))

    # 7. EXIF-rotated JPEGs: stored pixels rotated, displayed image upright
    exif_set = [("chelsea.png", 6), ("chelsea.png", 8), ("coffee.png", 6),
                ("motorcycle_left.png", 8), ("astronaut.png", 6), ("camera.png", 8)]
    for name, orient in exif_set:
        im = src.image(name)
        stored = im.transpose(STORE_FOR_ORIENTATION[orient])
        fn = f"{stem(name)}_exif{orient}.jpg"
        save_jpeg(stored, os.path.join(img_dir, fn), 95, exif=orientation_exif(orient))
        add(fn, im.width, im.height, base_boxes(name))
        exif_checks.append((fn, im))

    cats = [{"id": i, "name": n} for n, i in sorted(COCO_IDS.items(), key=lambda kv: kv[1])]
    doc = {"info": {"description": "Spotter retrieval evaluation set (scripts/make_eval_set.py); "
                                   "photos from scikit-image's data folder"},
           "images": images, "annotations": annotations, "categories": cats}
    with open(os.path.join(out, "annotations.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    verify(out, doc, exif_checks)
    return doc


# ------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------
def fail(msg):
    sys.exit(f"ERROR: {msg}")


def displayed(path) -> Image.Image:
    im = Image.open(path)
    return ImageOps.exif_transpose(im)


def verify(out, doc, exif_checks):
    by_id = {im["id"]: im for im in doc["images"]}
    for im in doc["images"]:
        d = displayed(os.path.join(out, "images", im["file_name"]))
        if d.size != (im["width"], im["height"]):
            fail(f"{im['file_name']}: displayed size {d.size} != recorded {(im['width'], im['height'])}")
    for a in doc["annotations"]:
        im = by_id[a["image_id"]]
        x, y, w, h = a["bbox"]
        if not (w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im["width"] + 1e-6
                and y + h <= im["height"] + 1e-6):
            fail(f"annotation {a['id']} {a['bbox']} outside {im['file_name']} {im['width']}x{im['height']}")
    for fn, intended in exif_checks:
        raw = Image.open(os.path.join(out, "images", fn))
        orient = raw.getexif().get(0x0112)
        if orient not in (6, 8):
            fail(f"{fn}: EXIF orientation {orient}")
        if raw.size != (intended.height, intended.width):
            fail(f"{fn}: stored size {raw.size} is not the rotated {intended.size}")
        shown = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"), np.float64)
        want = np.asarray(intended.convert("RGB"), np.float64)
        err = np.abs(shown - want).mean()
        # what a viewer rotating the wrong way would show (the upright image turned by 180 degrees)
        wrong = np.asarray(raw.transpose(Image.Transpose.ROTATE_90 if orient == 6 else Image.Transpose.ROTATE_270)
                           .convert("RGB"), np.float64)
        wrong_err = np.abs(wrong - want).mean()
        if err > 3.0:
            fail(f"{fn}: exif_transpose differs from the intended upright image (mean |diff| {err:.2f})")
        if wrong_err < 10 * err + 5:
            fail(f"{fn}: upright check is not discriminative ({err:.2f} vs {wrong_err:.2f})")


def tree_digest(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for fn in files:
            p = os.path.join(dirpath, fn)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def draw(out, doc, draw_dir):
    os.makedirs(draw_dir, exist_ok=True)
    names = {c["id"]: c["name"] for c in doc["categories"]}
    anns = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    for im in doc["images"]:
        d = displayed(os.path.join(out, "images", im["file_name"])).convert("RGB")
        g = ImageDraw.Draw(d)
        for a in anns.get(im["id"], []):
            x, y, w, h = a["bbox"]
            g.rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=2)
            g.text((x + 3, y + 3), names[a["category_id"]], fill=(255, 255, 0))
        d.save(os.path.join(draw_dir, os.path.splitext(im["file_name"])[0] + ".png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ap.add_argument("--draw", metavar="DIR", help="also write every image with its boxes drawn")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        if not args.force:
            fail(f"{out} exists (use --force to replace it)")
        shutil.rmtree(out)
    src = Source()
    doc = build(out, src)
    with tempfile.TemporaryDirectory() as tmp:
        again = os.path.join(tmp, "again")
        build(again, src)
        a, b = tree_digest(out), tree_digest(again)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            fail(f"build is not deterministic: {diff[:10]}")
    if args.draw:
        draw(out, doc, args.draw)

    names = {c["id"]: c["name"] for c in doc["categories"]}
    per_cat_ann, per_cat_img = {}, {}
    for a in doc["annotations"]:
        n = names[a["category_id"]]
        per_cat_ann[n] = per_cat_ann.get(n, 0) + 1
        per_cat_img.setdefault(n, set()).add(a["image_id"])
    with_boxes = {a["image_id"] for a in doc["annotations"]}
    print(f"{out}: {len(doc['images'])} images ({len(doc['images']) - len(with_boxes)} without any box), "
          f"{len(doc['annotations'])} annotations; deterministic (second build identical)")
    print(f"{'category':<14} {'id':>3} {'boxes':>6} {'images':>7}")
    for n in sorted(per_cat_ann, key=lambda n: COCO_IDS[n]):
        print(f"{n:<14} {COCO_IDS[n]:>3} {per_cat_ann[n]:>6} {len(per_cat_img[n]):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
