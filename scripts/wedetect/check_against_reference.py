#!/usr/bin/env python3
"""Spotter against WeDetect's own forward pass and post-processing, on real photos.

Given a WeDetect checkout and its checkpoints (or, with --random, random weights in the
published key layout built from the checkout's classes by random_checkpoints.py), this exports
the package (or takes --package), runs `spotter detect --json --embeddings` on a set of photos,
and runs the reference on the same photos: `wedetect_anything/models.py` (`letterbox`, PIL
bilinear, `VisionProposalDeployModel` in PyTorch) with the objectness rule of the package's
manifest, then class-agnostic NMS 0.7 (torchvision), the manifest's threshold and top-k, and the
boxes mapped back the reference's way (minus half the padding as a float, divided by the ratio,
clamped). It reports, per photo, how many proposals agree and the largest box, objectness and
embedding differences, and names and measures each known difference:

- half-pixel offset: the reference pastes at pad//2 but subtracts pad/2; with odd padding every
  box is 0.5 px off. Reported raw and after undoing that offset.
- EXIF orientation: Spotter applies it, the reference does not. The EXIF photo is compared with
  the reference run on the rotated pixels, and the raw disagreement is reported.
- JPEG decoding: Spotter uses the `image` crate, the reference libjpeg(-turbo) through Pillow. The
  JPEG photo is also compared as a lossless PNG of Pillow's decoding: agreement there and not on
  the JPEG puts the difference on the decoder.
- cv2 vs PIL resize: `infer_anything.py` resizes with cv2 INTER_LINEAR. Measured as the share of
  letterbox pixels that differ by >= 1 and the proposals that change when the reference resizes
  with cv2.

    python scripts/wedetect/check_against_reference.py --wedetect-repo W --size base \\
        (--uni-checkpoint U --text-checkpoint T | --random | --package DIR) [--out report.json]

Cost (2-core CPU, measured): Base export 72 s and 1.6 GB, the comparison 1–2 min; Large export
4.6 min, 3.2 GB and 10.7 GB of peak memory, the comparison 8–16 min. Before NMS it also compares every candidate's objectness (33,600 at Large) and counts the
overlapping candidate pairs whose objectness differs by < 1e-6, where float noise decides which
one NMS keeps. Exit status 1 when, on a photo without a JPEG or EXIF difference, fewer than 90 %
of the reference's proposals have an equal Spotter proposal (boxes within 0.01 px), unless the
candidates themselves agree (objectness within 1e-5, the same count above the threshold ±1) and
such near-tied pairs exist.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

BOX_EQUAL_PX = 0.01
# Share of the reference's proposals that must have an equal Spotter proposal. Below 1 because
# near-tied objectness (differences ~1e-7 between ONNX Runtime and PyTorch) can swap which of two
# overlapping candidates NMS keeps; the report shows how many did.
AGREEMENT = 0.9
SAMPLES = os.path.join(ROOT, "data", "samples")


def make_photos(folder):
    """The photo set: upscaled PNG, downscaled PNG, JPEG (+ its PNG), odd padding, EXIF rotation."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    photos = {}
    cat = Image.open(os.path.join(SAMPLES, "chelsea.png")).convert("RGB")  # 451x300: upscaled
    cat.save(os.path.join(folder, "upscaled.png"))
    photos["upscaled.png"] = {}
    big = Image.open(os.path.join(SAMPLES, "astronaut.png")).convert("RGB").resize((1024, 683), Image.Resampling.BICUBIC)
    big.save(os.path.join(folder, "downscaled.png"))
    photos["downscaled.png"] = {}
    jpeg = os.path.join(folder, "photo.jpg")
    Image.open(os.path.join(SAMPLES, "rocket.jpg")).convert("RGB").save(jpeg, quality=90)
    photos["photo.jpg"] = {"jpeg": True}
    Image.open(jpeg).convert("RGB").save(os.path.join(folder, "photo-decoded-by-pillow.png"))
    photos["photo-decoded-by-pillow.png"] = {}
    odd = Image.open(os.path.join(SAMPLES, "coffee.png")).convert("RGB").resize((640, 427), Image.Resampling.BICUBIC)
    odd.save(os.path.join(folder, "odd-padding.png"))  # 640x427 at 640: 213 rows of padding
    photos["odd-padding.png"] = {}
    exif = Image.open(os.path.join(SAMPLES, "motorcycle_left.png")).convert("RGB")
    e = Image.Exif()
    e[0x0112] = 6  # rotate 90° clockwise to display
    exif.save(os.path.join(folder, "exif-rotated.jpg"), quality=95, exif=e.tobytes())
    photos["exif-rotated.jpg"] = {"jpeg": True, "exif": True}
    return photos


class Reference:
    """The reference forward pass and post-processing."""

    def __init__(self, ref, uni_checkpoint, size, manifest):
        import torch

        import export_torch as et

        self.torch = torch
        self.ref = ref
        self.side = manifest["image"]["input_size"][0]
        self.rule = (manifest["image"].get("objectness") or {}).get("rule", "prompt0")
        self.proposals = manifest["proposals"]
        sd = et.load_state_dict(uni_checkpoint)
        num_prompts, dim = sd["embeddings"].shape
        del sd
        detector = ref.SimpleYOLOWorldProposalDetector(size, prompt_dim=dim, num_prompts=num_prompts)
        et.patch_reference_loading(ref)
        ref.load_proposal_checkpoint(detector, uni_checkpoint)
        self.deploy = ref.VisionProposalDeployModel(detector.eval(), img_size=self.side).eval()
        if self.rule == "prompt0_normalised":
            self.deploy.embeddings = torch.nn.functional.normalize(self.deploy.embeddings[:1], dim=-1)
        elif self.rule == "prompt0":
            self.deploy.embeddings = self.deploy.embeddings[:1].clone()

    def letterbox(self, img, resize="pil"):
        if resize == "pil":
            return self.ref.letterbox(img, (self.side, self.side))
        import cv2
        from PIL import Image

        w, h = img.size
        r = min(self.side / w, self.side / h)
        nw, nh = int(round(w * r)), int(round(h * r))
        small = cv2.resize(np.asarray(img), (nw, nh), interpolation=cv2.INTER_LINEAR)
        canvas = Image.new("RGB", (self.side, self.side), (114, 114, 114))
        dw, dh = self.side - nw, self.side - nh
        canvas.paste(Image.fromarray(small), (dw // 2, dh // 2))
        return canvas, r, (dw / 2, dh / 2)

    def run(self, img, resize="pil"):
        torch = self.torch
        import torchvision

        boxed, r, (pw, ph) = self.letterbox(img, resize)
        x = torch.from_numpy(np.asarray(boxed, np.float32).transpose(2, 0, 1)[None] / np.float32(255))
        with torch.no_grad():
            scores, boxes, embeds = self.deploy(x)
        objectness = scores[0].max(dim=-1).values if self.rule == "max_over_prompts" else scores[0, :, 0]
        candidates = {"boxes": boxes[0].numpy(), "objectness": objectness.numpy()}
        keep = torch.nonzero(objectness >= self.proposals["objectness_threshold"]).flatten()
        order = keep[torch.argsort(objectness[keep], descending=True, stable=True)]
        kept = torchvision.ops.nms(boxes[0, order], objectness[order], self.proposals["nms_iou"])
        idx = order[kept][: self.proposals["max_per_image"]]
        b = boxes[0, idx] - torch.tensor([pw, ph, pw, ph])
        b = b / r
        w, h = img.size
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        return {"boxes": b.numpy(), "objectness": objectness[idx].numpy(), "embeddings": embeds[0, idx].numpy(),
                "odd_padding": bool(int(round(2 * pw)) % 2 or int(round(2 * ph)) % 2), "letterbox": boxed,
                "candidates": candidates}


def spotter(binary, package, photo):
    out = subprocess.run([binary, "detect", "--json", "--embeddings", "--threshold", "0", "--device", "cpu",
                          "--text", "object", "--model", package, photo], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"spotter detect failed on {photo}:\n{out.stderr}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    rows.sort(key=lambda r: -r["objectness"])
    return {"boxes": np.array([r["box"] for r in rows], np.float64).reshape(-1, 4),
            "objectness": np.array([r["objectness"] for r in rows], np.float64),
            "embeddings": np.array([r["embedding"] for r in rows], np.float64)}


def spotter_candidates(binary, package, photo):
    """Every candidate's objectness as Spotter computes it (no threshold, no NMS)."""
    out = subprocess.run([binary, "detect", "--json", "--threshold", "0", "--device", "cpu", "--text", "object",
                          "--objectness", "0", "--nms-iou", "1", "--max-proposals", "100000000",
                          "--model", package, photo], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"spotter detect failed on {photo}:\n{out.stderr}")
    return np.array([json.loads(line)["objectness"] for line in out.stdout.splitlines() if line.strip()])


def near_ties(boxes, objectness, threshold, nms_iou, gap=1e-6):
    """Pairs of candidates above the threshold that overlap beyond the NMS IoU and whose
    objectness differs by less than `gap`: where float noise decides which one NMS keeps."""
    keep = np.where(objectness >= threshold)[0]
    b, o = boxes[keep].astype(np.float64), objectness[keep].astype(np.float64)
    count = 0
    for i in range(len(keep)):
        j = np.arange(i + 1, len(keep))
        close = j[np.abs(o[j] - o[i]) < gap]
        if close.size == 0:
            continue
        w = np.clip(np.minimum(b[i, 2], b[close, 2]) - np.maximum(b[i, 0], b[close, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[close, 3]) - np.maximum(b[i, 1], b[close, 1]), 0, None)
        inter = w * h
        union = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) + (b[close, 2] - b[close, 0]) * (b[close, 3] - b[close, 1]) - inter
        count += int(np.sum((union > 0) & (inter > nms_iou * np.maximum(union, 1e-12))))
    return count


def compare(ours, theirs):
    """One-to-one matching by box (nearest first); figures over the matched pairs."""
    tb = theirs["boxes"].astype(np.float64)
    ob = ours["boxes"]
    if len(tb) == 0 or len(ob) == 0:
        return {"reference": len(tb), "spotter": len(ob), "equal": 0}
    dist = np.abs(tb[:, None, :] - ob[None, :, :]).max(axis=2)
    used, pairs = set(), []
    for i in np.argsort(dist.min(axis=1)):
        for j in np.argsort(dist[i]):
            if j not in used:
                used.add(j)
                pairs.append((i, j, dist[i, j]))
                break
    equal = [(i, j) for i, j, d in pairs if d <= BOX_EQUAL_PX]
    result = {"reference": len(tb), "spotter": len(ob), "equal": len(equal),
              "max_box_px": float(max(d for _, _, d in pairs))}
    if equal:
        ii, jj = [i for i, _ in equal], [j for _, j in equal]
        result["max_objectness"] = float(np.abs(theirs["objectness"][ii] - ours["objectness"][jj]).max())
        result["max_embedding"] = float(np.abs(theirs["embeddings"][ii] - ours["embeddings"][jj]).max())
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--wedetect-repo", required=True)
    ap.add_argument("--size", choices=["base", "large"], required=True)
    ap.add_argument("--uni-checkpoint")
    ap.add_argument("--text-checkpoint")
    ap.add_argument("--random", action="store_true", help="random weights in the published key layout")
    ap.add_argument("--package", help="an exported package (its checkpoint still needed: --uni-checkpoint)")
    ap.add_argument("--spotter", default=os.path.join(ROOT, "target", "release", "spotter"))
    ap.add_argument("--work", help="folder for checkpoints, package and photos (default: a temporary one)")
    ap.add_argument("--out", help="write the report as JSON")
    args = ap.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="spotter-refcheck-")
    os.makedirs(work, exist_ok=True)
    if args.random and not (args.uni_checkpoint and os.path.exists(args.uni_checkpoint)):
        subprocess.run([sys.executable, os.path.join(HERE, "random_checkpoints.py"), "--wedetect-repo",
                        args.wedetect_repo, "--size", args.size, "--out", work,
                        "--image", os.path.join(SAMPLES, "coffee.png")], check=True)
        args.uni_checkpoint = os.path.join(work, f"wedetect_{args.size}_uni.pth")
        args.text_checkpoint = os.path.join(work, f"wedetect_{args.size}.pth")
    if not args.uni_checkpoint:
        sys.exit("give --uni-checkpoint (and --text-checkpoint), or --random")
    package = args.package or os.path.join(work, "package")
    if not args.package:
        subprocess.run([sys.executable, os.path.join(HERE, "export_wedetect_uni.py"), "--wedetect-repo",
                        args.wedetect_repo, "--uni-checkpoint", args.uni_checkpoint, "--text-checkpoint",
                        args.text_checkpoint, "--size", args.size, "--out", package], check=True)
    with open(os.path.join(package, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)

    from PIL import Image, ImageOps

    import export_torch as et

    ref = et.import_reference(args.wedetect_repo)
    reference = Reference(ref, args.uni_checkpoint, args.size, manifest)
    photos = make_photos(os.path.join(work, "photos"))
    report, failures = {"size": args.size, "rule": reference.rule, "photos": {}}, []
    for name, kind in photos.items():
        path = os.path.join(work, "photos", name)
        ours = spotter(args.spotter, package, path)
        raw = Image.open(path).convert("RGB")  # the reference: no EXIF orientation
        theirs = reference.run(raw)
        row = {"as_reference": compare(ours, theirs)}
        known, judged = [], row["as_reference"]
        if theirs["odd_padding"]:
            # undo the reference's half-pixel offset: it pastes at pad//2 but subtracts pad/2, so
            # its boxes sit 0.5 letterbox px (0.5 / ratio image px) up/left on an odd-padded axis
            w, h = raw.size
            r = min(reference.side / w, reference.side / h)
            odd_w = (reference.side - int(round(w * r))) % 2
            odd_h = (reference.side - int(round(h * r))) % 2
            shifted = dict(theirs)
            original = theirs["boxes"].astype(np.float64)
            edges = np.array([w, h, w, h], np.float64)
            clamped = (original <= 0) | (original >= edges)  # clamped coordinates stay where they are
            b = np.where(clamped, original, original + np.array([odd_w, odd_h, odd_w, odd_h]) * 0.5 / r)
            b = np.minimum(np.maximum(b, 0), edges)
            shifted["boxes"] = b
            row["half_pixel_undone"] = compare(ours, shifted)
            known.append("half-pixel offset of the reference (odd padding)")
            judged = row["half_pixel_undone"]
        upright = theirs  # the reference on the pixels Spotter sees
        if kind.get("exif"):
            upright = reference.run(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
            row["reference_on_rotated_pixels"] = compare(ours, upright)
            known.append("EXIF orientation (Spotter applies it, the reference does not)")
        if kind.get("jpeg"):
            known.append("JPEG decoder (image crate vs libjpeg-turbo through Pillow)")
            judged = None  # reported, not judged: compare the PNG of Pillow's decoding instead
        if known:
            row["known"] = "; ".join(known)
        cv2_theirs = reference.run(raw, resize="cv2")
        pil_box = np.asarray(theirs["letterbox"], np.int16)
        cv2_box = np.asarray(cv2_theirs["letterbox"], np.int16)
        row["cv2_resize"] = {"pixels_differing": float((np.abs(pil_box - cv2_box).max(axis=2) >= 1).mean()),
                             "vs_pil_reference": compare(theirs, cv2_theirs)}
        # Before NMS: every candidate's objectness (sorted, as the two list candidates differently)
        theirs_all = np.sort(upright["candidates"]["objectness"])[::-1]
        ours_all = np.sort(spotter_candidates(args.spotter, package, path))[::-1]
        threshold = reference.proposals["objectness_threshold"]
        row["candidates"] = {
            "count": [int(theirs_all.size), int(ours_all.size)],
            "max_objectness_diff": float(np.abs(theirs_all - ours_all).max()) if theirs_all.size == ours_all.size else None,
            "above_threshold": [int((theirs_all >= threshold).sum()), int((ours_all >= threshold).sum())],
            "near_tied_overlapping_pairs": near_ties(upright["candidates"]["boxes"], upright["candidates"]["objectness"],
                                                     threshold, reference.proposals["nms_iou"]),
        }
        if judged is not None and judged["equal"] < AGREEMENT * judged["reference"]:
            c = row["candidates"]
            same_candidates = (c["max_objectness_diff"] is not None and c["max_objectness_diff"] <= 1e-5
                               and abs(c["above_threshold"][0] - c["above_threshold"][1]) <= 1)
            if same_candidates and c["near_tied_overlapping_pairs"] > 0:
                row["known"] = (row.get("known", "") + "; " if row.get("known") else "") + (
                    "NMS near-ties: the candidates agree, their order within 1e-6 decides which is kept")
            else:
                failures.append(name)
        row["judged"] = judged is not None
        report["photos"][name] = row
        a = row["as_reference"]
        print(f"{name}: reference {a['reference']}, spotter {a['spotter']}, equal boxes {a['equal']}, "
              f"max box diff {a.get('max_box_px', 0):.3g} px, objectness {a.get('max_objectness', float('nan')):.2g}, "
              f"embeddings {a.get('max_embedding', float('nan')):.2g}"
              + (f"; {row['known']}" if "known" in row else ""))
        for key in ("half_pixel_undone", "reference_on_rotated_pixels"):
            if key in row:
                b = row[key]
                print(f"    {key}: equal {b['equal']} of {b['reference']}, max box diff {b.get('max_box_px', 0):.3g} px")
        c = row["candidates"]
        print(f"    all {c['count'][0]} candidates before NMS: max objectness diff {c['max_objectness_diff']}, "
              f"above {threshold}: {c['above_threshold'][0]} / {c['above_threshold'][1]}, "
              f"near-tied overlapping pairs {c['near_tied_overlapping_pairs']}")
        c = row["cv2_resize"]
        print(f"    cv2 resize: {100 * c['pixels_differing']:.1f} % of letterbox pixels differ by >= 1; "
              f"{c['vs_pil_reference']['equal']} of {c['vs_pil_reference']['reference']} proposals unchanged")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if failures:
        print(f"disagreement without a known cause on: {', '.join(failures)}")
        return 1
    print("every photo without a known difference agrees with the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
