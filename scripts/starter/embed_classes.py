"""Embed the 80 COCO class prompts ("a photo of a {name}") with the package's text graph.

These embeddings are baked into the image graph (ConSE projection), so they are computed with the
very graph and tokenizer the engine uses for queries.
Usage: embed_classes.py PACKAGE_DIR OUT_NPY
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from check_text import onnx_embed
from common import CLASS_PROMPT, COCO_CLASSES

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    emb, _ = onnx_embed(Path(sys.argv[1]), [CLASS_PROMPT.format(c) for c in COCO_CLASSES])
    out = Path(sys.argv[2])
    with open(out.with_suffix(".tmp"), "wb") as f:
        np.save(f, emb.astype(np.float32))
    out.with_suffix(".tmp").replace(out)
    print(f"wrote {out} {emb.shape}")
