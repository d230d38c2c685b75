"""Check the text graph against the independent numpy reference; optionally write the Rust golden file.

Runs text.onnx with onnxruntime on a padded batch (tokenised with the package's tokenizer.json and
padded to the longest text with pad id 0, as the engine does) and compares with
minilm_reference.py (float64, one unpadded text at a time). Exits non-zero if the max abs
difference exceeds TOLERANCE or the token ids disagree.

Usage: check_text.py PACKAGE_DIR [GOLDEN_JSON]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common import die
from minilm_reference import MiniLM

TOLERANCE = 1e-5

# Texts of the golden file used by the Rust test (keep short: it is checked in).
GOLDEN_TEXTS = [
    "cat",
    "a photo of a dog",
    "kitty",
    "automobile",
    "Café crème in a ☕ cup, naïve Größe",
    "a",
    "a photo of a red double-decker bus parked next to a fire hydrant on a rainy street",
    "",
]

# More texts for the numeric check only: long ones (truncation), unknown characters, punctuation.
EXTRA_TEXTS = [
    "a mug of coffee",
    "UPPER case and MiXeD",
    "东京 タワー 🗼",
    " ".join(["word"] * 200),  # truncated to 128 tokens
    "a photo of a cell phone",
]


def onnx_embed(pkg: Path, texts: list[str]):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(pkg / "tokenizer.json"))
    if tok.padding is not None:
        die("tokenizer.json still has padding enabled")
    if not tok.truncation or tok.truncation["max_length"] != 128:
        die(f"tokenizer.json truncation should be 128, got {tok.truncation}")
    enc = [tok.encode(t).ids for t in texts]
    L = max(len(e) for e in enc)
    ids = np.zeros((len(enc), L), np.int64)
    mask = np.zeros((len(enc), L), np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = e
        mask[i, : len(e)] = 1
    sess = ort.InferenceSession(str(pkg / "text.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["text_embeddings"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out, enc


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    pkg = Path(sys.argv[1])
    texts = GOLDEN_TEXTS + EXTRA_TEXTS
    ref_model = MiniLM()
    ref, ref_ids = ref_model.embed(texts)
    got, got_ids = onnx_embed(pkg, texts)
    if got_ids != ref_ids:
        die("token ids from the package tokenizer differ from the original tokenizer")
    if got.shape != ref.shape:
        die(f"text graph output shape {got.shape}, expected {ref.shape}")
    diff = float(np.abs(got - ref).max())
    norms = np.linalg.norm(got, axis=1)
    print(f"text graph vs numpy reference: {len(texts)} texts, max abs diff {diff:.2e} "
          f"(tolerance {TOLERANCE:.0e}), norms {norms.min():.6f}..{norms.max():.6f}, "
          f"longest {max(len(i) for i in got_ids)} tokens")
    if not diff <= TOLERANCE:
        die(f"text graph does NOT match the numpy reference (max abs diff {diff:.3e} > {TOLERANCE:.0e})")
    # Batch composition must not matter (padding is masked): embed one text alone too.
    alone, _ = onnx_embed(pkg, [texts[0]])
    d1 = float(np.abs(alone[0] - got[0]).max())
    if d1 > TOLERANCE:
        die(f"padding changes the embedding of {texts[0]!r} by {d1:.3e}")

    if len(sys.argv) == 3:
        n = len(GOLDEN_TEXTS)
        golden = {
            "model": "starter text graph (all-MiniLM-L6-v2), numpy float64 reference",
            "tolerance": 1e-4,
            "texts": GOLDEN_TEXTS,
            "token_ids": ref_ids[:n],
            "embeddings": [[round(float(v), 7) for v in row] for row in ref[:n]],
        }
        out = Path(sys.argv[2])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(golden, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
