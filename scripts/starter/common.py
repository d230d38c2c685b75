"""Shared helpers for the starter model build (paths, COCO names, safetensors, letterbox)."""
from __future__ import annotations

import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
DOWNLOADS = CACHE / "downloads"
WORK = CACHE / "starter"  # intermediate build products
OUT_DIR = REPO / "exported_onnx" / "starter"

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
REG_MAX = 10  # GFL: 11 bins per side, distances 0..10 (in units of the stride)
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)
PAD_VALUE = 114

# The 80 COCO detection classes in NanoDet's output order, with natural names for the prompts.
COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
assert len(COCO_CLASSES) == 80

# Prompt used for each class embedding (ConSE) -- the same template the manifest gives queries.
CLASS_PROMPT = "a photo of a {}"


def die(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader: u64 little-endian header length, JSON header, raw data."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ValueError(f"unsupported dtype {info['dtype']} for {name}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).astype(np.float32 if info["dtype"].startswith("F") else arr.dtype)
    return out


def letterbox(img, size: int = INPUT_SIZE, pad_value: int = PAD_VALUE):
    """Contract pixel pipeline up to the pad: keep aspect, bilinear, centred (odd pixel right/bottom).

    Returns (uint8 HxWx3 RGB array, scale, (pad_left, pad_top)).
    """
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    s = min(size / w, size / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    resized = img.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (pad_value,) * 3)
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas.paste(resized, (left, top))
    return np.asarray(canvas), s, (left, top)


def to_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 [1,3,H,W] BGR normalised as the manifest says."""
    bgr = rgb[:, :, ::-1].astype(np.float32)
    x = (bgr - np.array(MEAN_BGR, np.float32)) / np.array(STD_BGR, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def skimage_wheel() -> Path | None:
    found = sorted(DOWNLOADS.glob("scikit_image-*.whl"))
    return found[-1] if found else None


def test_image(name: str):
    """Open a sample photo (e.g. 'chelsea.png') from the scikit-image wheel in the download cache."""
    import io

    from PIL import Image

    whl = skimage_wheel()
    if whl is None:
        die("scikit-image wheel not found in .cache/downloads (the build script downloads it)")
    with zipfile.ZipFile(whl) as z:
        return Image.open(io.BytesIO(z.read(f"skimage/data/{name}")))

# ConSE: number of top class probabilities mixed into a proposal's embedding (see calibrate.py).
TOP_T = 3
