#!/usr/bin/env python3
"""Build deterministic image corpora for Spotter's indexer tests and benchmarks.

All output is generated from the sample photos in data/samples/ with fixed seeds,
so two runs with the same arguments produce byte-identical files (given the same
Pillow/libjpeg/zlib build).

Subcommands (each writes into OUT, creating it; a non-empty OUT is refused unless
--force is given, in which case files are overwritten in place and anything else
already there is left alone and reported):

  bad OUT
      "Bad input" corpus for the indexer's robustness tests: truncated / empty /
      non-image files, a decompression-bomb PNG header, odd pixel formats
      (16-bit grey, CMYK, RGBA, palette, WebP, BMP, TIFF), a very wide image,
      unicode / space / upper-case file names, and a good/ folder of 3 normal
      photos. OUT/manifest.json lists every file with
      "expect": "indexed" | "failed" | "either" and a "why".

  exif OUT
      EXIF orientation corpus: upright.jpg (900x600, mid-grey canvas with the cat
      from chelsea.png at x 400..851, y 250..550 in displayed coordinates) and
      orientation_2.jpg .. orientation_8.jpg, whose stored pixels are the inverse
      transform of the displayed image with EXIF Orientation = n. The script
      checks that PIL.ImageOps.exif_transpose reproduces the upright image.
      OUT/manifest.json gives displayed_size, object_box (displayed, [x0, y0, x1, y1)
      with exclusive ends) and per file the stored size and stored object box.

  archive OUT [--count N] [--seed S]
      N (default 50) distinct real-looking JPEGs made from the samples by random
      but seeded flips, crops (60-100% of the area), scales (0.5-1.5), small
      rotations, brightness/contrast jitter, JPEG quality 60-95 and an occasional
      EXIF orientation tag (pixels stored so the displayed image is upright).
      Files go to OUT/0000/img_000000.jpg ... (100 per folder); every file is
      byte-distinct. OUT/manifest.json records each file's source and transforms.

Examples:
  .venv/bin/python scripts/make_test_corpus.py bad /tmp/corpus_bad
  .venv/bin/python scripts/make_test_corpus.py exif /tmp/corpus_exif
  .venv/bin/python scripts/make_test_corpus.py archive /tmp/corpus_archive --count 10000
"""
import argparse
import hashlib
import io
import json
import math
import os
import random
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageStat, features

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
SAMPLE_NAMES = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                "motorcycle_right.png", "rocket.jpg", "camera.png"]
ORIENTATION_TAG = 0x0112

T = Image.Transpose
# What a viewer applies for orientation n (same table as PIL.ImageOps.exif_transpose).
APPLY = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
         6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}
# Inverse of APPLY[n]: what a camera stores so that applying n gives the upright image.
INVERSE = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
           6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}


def die(msg):
    print(f"make_test_corpus: error: {msg}", file=sys.stderr)
    sys.exit(1)


def load_sample(name):
    path = SAMPLES / name
    if not path.is_file():
        die(f"missing sample photo {path}")
    with Image.open(path) as im:
        im.load()
        return im.copy()


def prepare_out(out, force):
    out = Path(out)
    if out.exists() and not out.is_dir():
        die(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        die(f"{out} is not empty (use --force to write into it anyway)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def warn_extras(out, produced):
    """With --force, report entries in OUT that this run did not write."""
    produced = {Path(p) for p in produced}
    extras = []
    for root, dirs, files in os.walk(out):
        for f in files:
            rel = Path(root, f).relative_to(out)
            if rel not in produced:
                extras.append(str(rel))
    if extras:
        print(f"warning: {len(extras)} file(s) in {out} were not written by this run, "
              f"e.g. {extras[:3]}", file=sys.stderr)


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()


def jpeg_bytes(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def write_manifest(out, data):
    with open(out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


# ---------------------------------------------------------------------------- bad

def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png():
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" + b"\x00" * 30, 9)  # one filter byte + a few pixels
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def cmd_bad(args):
    out = prepare_out(args.out, args.force)
    chelsea = load_sample("chelsea.png")
    coffee = load_sample("coffee.png")
    moto = load_sample("motorcycle_left.png")
    astronaut = load_sample("astronaut.png")
    rocket = load_sample("rocket.jpg")
    camera = load_sample("camera.png")
    files = []
    notes = []

    def add(name, expect, why, data=None, img=None, **save_kw):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if img is not None:
            img.save(path, **save_kw)
        else:
            path.write_bytes(data)
        files.append({"name": name, "expect": expect, "why": why})

    full = jpeg_bytes(chelsea, quality=90)
    add("truncated.jpg", "either",
        f"first 40% ({int(len(full) * 0.4)} of {len(full)} bytes) of a baseline JPEG of chelsea; "
        "no EOI marker. Lenient decoders (Pillow with LOAD_TRUNCATED_IMAGES, some Rust "
        "decoders) recover the top part and grey-fill the rest, strict ones report an error",
        data=full[: int(len(full) * 0.4)])
    add("zero.jpg", "failed", "empty file (0 bytes) with a .jpg extension", data=b"")
    add("text.jpg", "failed", "UTF-8 plain text with a .jpg extension, not an image",
        data="This is not a JPEG. Ceci n'est pas une image. 这不是图片。\n".encode("utf-8"))
    add("bomb.png", "failed",
        "decompression bomb: valid PNG signature and IHDR (correct CRC) declaring "
        "100000x100000 8-bit RGB (30 GB decoded), then a tiny IDAT and IEND; must be "
        "refused from the header without allocating", data=bomb_png())

    add("tiny_1x1.png", "indexed", "1x1 RGB PNG (smallest possible image)",
        img=Image.new("RGB", (1, 1), (200, 30, 40)))
    strip = astronaut.resize((300, 300), Image.Resampling.BICUBIC)
    wide = Image.new("RGB", (20000, 300))
    for k, x in enumerate(range(0, 20000, 300)):
        wide.paste(ImageOps.mirror(strip) if k % 2 else strip, (x, 0))
    add("wide_20000x300.png", "indexed",
        "20000x300 RGB PNG (aspect ratio 66:1): astronaut scaled to 300x300 and tiled, "
        "alternately mirrored", img=wide)
    g = np.asarray(chelsea.convert("L"), dtype=np.uint16) * 257
    gray16 = Image.frombytes("I;16", chelsea.size, g.astype("<u2").tobytes())
    add("gray16.png", "indexed", "16-bit greyscale PNG (Pillow mode I;16) of chelsea",
        img=gray16)
    add("gray8.jpg", "indexed", "8-bit greyscale (1-channel) JPEG of camera.png",
        img=camera.convert("L"), quality=90)
    add("cmyk.jpg", "indexed", "4-channel CMYK JPEG of coffee (Adobe APP14 marker, "
        "inverted CMYK as Pillow/Photoshop write it)", img=coffee.convert("CMYK"), quality=90)
    w, h = moto.size
    alpha = Image.linear_gradient("L").resize((w, h)).rotate(90, expand=False)  # alpha 0 at the left edge, 255 at the right
    rgba = moto.convert("RGBA")
    rgba.putalpha(alpha)
    add("alpha.png", "indexed", "RGBA PNG of motorcycle_left with a horizontal alpha "
        "gradient (alpha 0 = transparent at the left edge rising to 255 at the right)", img=rgba)
    add("palette.gif", "indexed", "palette (mode P, 256-colour adaptive) GIF of rocket",
        img=rocket.convert("P", palette=Image.Palette.ADAPTIVE, colors=256))
    if features.check("webp"):
        add("image.webp", "indexed", "lossless WebP of coffee", img=coffee,
            format="WEBP", lossless=True, method=4)
    else:
        notes.append("image.webp skipped: this Pillow has no WebP support")
    add("image.bmp", "indexed", "24-bit uncompressed BMP of chelsea", img=chelsea)
    add("image.tiff", "indexed", "RGB TIFF (LZW compression) of motorcycle_right",
        img=load_sample("motorcycle_right.png"), compression="tiff_lzw")
    add("Ünïcödé name ✓.jpg", "indexed", "non-ASCII UTF-8 file name (NFC) with a space "
        "and a check mark; JPEG of astronaut (quality 85)", img=astronaut, quality=85)
    add("name with  spaces .png", "indexed", "file name with a double space and a space "
        "before the extension; PNG of coffee", img=coffee)
    add("UPPER.JPG", "indexed", "upper-case .JPG extension; JPEG of chelsea",
        img=chelsea, quality=90)
    for name, img in [("astronaut.jpg", astronaut), ("motorcycle_right.jpg",
                      load_sample("motorcycle_right.png")), ("rocket.jpg", rocket)]:
        add(f"good/{name}", "indexed", "normal RGB baseline JPEG photo (quality 90)",
            img=img, quality=90)

    # Sanity checks on what we wrote. Every file is byte-distinct, so an indexer that
    # de-duplicates by content hash still has to index each "indexed" file.
    digests = {}
    for f in files:
        d = hashlib.sha256((out / f["name"]).read_bytes()).hexdigest()
        if d in digests:
            die(f"{f['name']} is byte-identical to {digests[d]}")
        digests[d] = f["name"]
    assert gray16 is not None and Image.open(out / "gray16.png").mode == "I;16"
    assert Image.open(out / "cmyk.jpg").mode == "CMYK"
    try:
        Image.open(out / "bomb.png")
        die("bomb.png was not rejected by Pillow's decompression-bomb check")
    except Image.DecompressionBombError:
        pass

    manifest = {"generator": "scripts/make_test_corpus.py bad",
                "note": "paths are relative to this folder; manifest.json itself is not an image",
                "files": files}
    if notes:
        manifest["skipped"] = notes
    write_manifest(out, manifest)
    if args.force:
        warn_extras(out, [f["name"] for f in files] + ["manifest.json"])
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    counts = {k: sum(f["expect"] == k for f in files) for k in ("indexed", "failed", "either")}
    return (f"bad: wrote {len(files)} files to {out} "
            f"({counts['indexed']} indexed, {counts['failed']} failed, {counts['either']} either)")


# ---------------------------------------------------------------------------- exif

def cmd_exif(args):
    out = prepare_out(args.out, args.force)
    size = (900, 600)
    box = [400, 250, 851, 550]
    cat = load_sample("chelsea.png").convert("RGB")
    assert cat.size == (box[2] - box[0], box[3] - box[1])
    upright = Image.new("RGB", size, (128, 128, 128))
    upright.paste(cat, (box[0], box[1]))
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    ref = np.asarray(upright, dtype=np.int16)

    def check(name, expect_n):
        with Image.open(out / name) as im:
            got_n = im.getexif().get(ORIENTATION_TAG)
            if got_n != expect_n:
                die(f"{name}: EXIF orientation is {got_n}, expected {expect_n}")
            shown = ImageOps.exif_transpose(im).convert("RGB")
        if shown.size != size:
            die(f"{name}: exif_transpose gives size {shown.size}, expected {size}")
        diff = float(np.abs(np.asarray(shown, dtype=np.int16) - ref).mean())
        if diff >= 3:
            die(f"{name}: exif_transpose differs from the upright image (mean abs diff {diff:.2f})")
        return diff

    upright.save(out / "upright.jpg", quality=95)
    files = [{"name": "upright.jpg", "orientation": None, "stored_size": list(size),
              "stored_object_box": box, "mean_abs_diff": round(check("upright.jpg", None), 3)}]
    for n in range(2, 9):
        stored = upright.transpose(INVERSE[n])
        # Round trip must be exact before JPEG noise.
        assert stored.transpose(APPLY[n]).tobytes() == upright.tobytes()
        name = f"orientation_{n}.jpg"
        stored.save(out / name, quality=95, exif=exif_bytes(n))
        sbox = list(mask.transpose(INVERSE[n]).getbbox())
        files.append({"name": name, "orientation": n, "stored_size": list(stored.size),
                      "stored_object_box": sbox,
                      "mean_abs_diff": round(check(name, n), 3)})
    write_manifest(out, {
        "generator": "scripts/make_test_corpus.py exif",
        "displayed_size": list(size),
        "object_box": box,
        "note": "boxes are [x0, y0, x1, y1] in pixels with exclusive x1/y1; object_box is in "
                "displayed (EXIF-applied) coordinates and the same for every file; "
                "stored_* are raw pixel coordinates before applying the orientation; "
                "mean_abs_diff is exif_transpose(file) vs the uncompressed upright image",
        "files": files})
    if args.force:
        warn_extras(out, [f["name"] for f in files] + ["manifest.json"])
    worst = max(f["mean_abs_diff"] for f in files)
    return f"exif: wrote {len(files)} files to {out}, all verified (worst mean abs diff {worst:.2f})"


# ---------------------------------------------------------------------------- archive

def make_variant(src, rng):
    """One random-but-seeded variant of a sample photo; returns (jpeg bytes, params)."""
    img = src
    p = {}
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
        p["flip"] = True
    w, h = img.size
    area = rng.uniform(0.6, 1.0)
    aspect = rng.uniform(0.8, 1.25)
    cw = min(w, max(16, round(w * math.sqrt(area * aspect))))
    ch = min(h, max(16, round(h * math.sqrt(area / aspect))))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    p["crop"] = [x0, y0, x0 + cw, y0 + ch]
    scale = rng.uniform(0.5, 1.5)
    nw, nh = max(16, round(img.width * scale)), max(16, round(img.height * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    p["scale"] = round(scale, 4)
    if rng.random() < 0.4:
        angle = rng.uniform(-4.0, 4.0)
        img = img.rotate(angle, Image.Resampling.BILINEAR)
        m = math.ceil(max(img.size) * math.sin(math.radians(abs(angle)))) + 1
        img = img.crop((m, m, img.width - m, img.height - m))  # drop the black corners
        p["rotate_deg"] = round(angle, 3)
    # Brightness b then contrast c around the mean grey level, as one lookup table
    # (the formula of ImageEnhance.Brightness followed by ImageEnhance.Contrast, up to rounding).
    b, c = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    mean = b * ImageStat.Stat(img.convert("L")).mean[0]
    lut = [min(255, max(0, round((min(255.0, v * b) - mean) * c + mean))) for v in range(256)]
    img = img.point(lut * len(img.getbands()))
    p["brightness"], p["contrast"] = round(b, 4), round(c, 4)
    q = rng.randint(60, 95)
    p["quality"] = q
    p["displayed_size"] = list(img.size)
    kw = {"quality": q}
    if rng.random() < 0.1:
        n = rng.choice([3, 6, 8, 2])
        img = img.transpose(INVERSE[n])
        kw["exif"] = exif_bytes(n)
        p["exif_orientation"] = n
    return jpeg_bytes(img, **kw), p


_SAMPLES = None


def _load_archive_samples():
    global _SAMPLES
    if _SAMPLES is None:
        _SAMPLES = []
        for name in SAMPLE_NAMES:
            im = load_sample(name)
            _SAMPLES.append((name, im if im.mode in ("RGB", "L") else im.convert("RGB")))
    return _SAMPLES


def _variant_job(job):
    """(seed, index, attempt) -> (jpeg bytes, params); the same job always gives the same bytes."""
    seed, i, attempt = job
    samples = _load_archive_samples()
    name, src = samples[i % len(samples)]
    data, params = make_variant(src, random.Random(f"{seed}:{i}:{attempt}"))
    return data, {"source": name, **params}


def cmd_archive(args):
    if args.count < 1:
        die("--count must be at least 1")
    if args.jobs < 1:
        die("--jobs must be at least 1")
    out = prepare_out(args.out, args.force)
    t0 = time.perf_counter()
    _load_archive_samples()
    jobs = ((args.seed, i, 0) for i in range(args.count))
    pool = None
    if args.jobs > 1 and args.count >= 50:
        import multiprocessing
        pool = multiprocessing.Pool(args.jobs)
        results = pool.imap(_variant_job, jobs, chunksize=8)
    else:
        results = map(_variant_job, jobs)
    seen = set()
    files = []
    total_bytes = 0
    retries = 0
    made_dirs = set()
    try:
        for i, (data, params) in enumerate(results):
            digest = hashlib.sha256(data).digest()
            attempt = 0
            while digest in seen:  # byte-identical to an earlier file: draw again
                attempt += 1
                retries += 1
                if attempt > 100:
                    die(f"could not make a distinct variant for file {i}")
                data, params = _variant_job((args.seed, i, attempt))
                digest = hashlib.sha256(data).digest()
            seen.add(digest)
            folder = f"{i // 100:04d}"
            if folder not in made_dirs:
                (out / folder).mkdir(exist_ok=True)
                made_dirs.add(folder)
            rel = f"{folder}/img_{i:06d}.jpg"
            (out / rel).write_bytes(data)
            total_bytes += len(data)
            files.append({"name": rel, **params})
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    assert len(seen) == args.count
    write_manifest(out, {"generator": "scripts/make_test_corpus.py archive",
                         "seed": args.seed, "count": args.count,
                         "note": "displayed_size is after EXIF orientation; crop is in source "
                                 "pixels after the optional flip",
                         "files": files})
    if args.force:
        warn_extras(out, [f["name"] for f in files] + ["manifest.json"])
    dt = time.perf_counter() - t0
    return (f"archive: wrote {args.count} byte-distinct JPEGs ({total_bytes / 1e6:.1f} MB, "
            f"{retries} redraws) in {len(made_dirs)} folders under {out} in {dt:.1f}s "
            f"({args.count / dt:.0f} files/s, {args.jobs if pool else 1} process(es))")


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(
        prog="make_test_corpus.py",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{bad,exif,archive}")

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("out", metavar="OUT", help="output folder (created; must be empty)")
        p.add_argument("--force", action="store_true",
                       help="write into a non-empty OUT, overwriting same-named files")
        return p

    add("bad", "robustness corpus of broken, odd-format and odd-named files + manifest.json")
    add("exif", "upright.jpg + orientation_2..8.jpg with EXIF orientation, verified + manifest.json")
    p = add("archive", "N distinct JPEG variants of the samples in OUT/0000/... (100 per folder)")
    p.add_argument("--count", type=int, default=50, metavar="N", help="number of images (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), metavar="J",
                   help="worker processes (default: CPU count, at most 8); the output does "
                        "not depend on it")
    args = ap.parse_args()
    t0 = time.perf_counter()
    summary = {"bad": cmd_bad, "exif": cmd_exif, "archive": cmd_archive}[args.cmd](args)
    if args.cmd != "archive":
        summary += f" in {time.perf_counter() - t0:.1f}s"
    print(summary)


if __name__ == "__main__":
    main()
