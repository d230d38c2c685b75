"""Independent numpy reference forward pass of all-MiniLM-L6-v2 (sentence-transformers).

BERT encoder (6 layers, 12 heads, hidden 384, GELU with erf, LayerNorm eps 1e-12) -> mean pooling
over the attention mask -> L2 normalisation. Computed in float64, one text at a time and without
padding, so that it shares no code path (and no masking trick) with the ONNX graph in
build_text_graph.py.

Usage as a module: `embed(texts) -> (embeddings [K,384] float64, token_ids list[list[int]])`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common import DOWNLOADS, load_safetensors

MINILM_DIR = DOWNLOADS / "minilm"
N_LAYERS = 6
N_HEADS = 12
HIDDEN = 384
LN_EPS = 1e-12

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _layer_norm(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * gamma + beta


def _linear(x, w, b):
    # PyTorch Linear convention: weight is [out, in]
    return x @ w.T + b


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class MiniLM:
    def __init__(self, weights: Path = MINILM_DIR / "model.safetensors", tokenizer: Path = MINILM_DIR / "tokenizer.json"):
        from tokenizers import Tokenizer

        self.w = {k: v.astype(np.float64) for k, v in load_safetensors(weights).items() if v.dtype.kind == "f"}
        self.tok = Tokenizer.from_file(str(tokenizer))
        self.tok.no_padding()
        self.tok.enable_truncation(128)

    def token_ids(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def forward_ids(self, ids: list[int]) -> np.ndarray:
        w = self.w
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        hd = HIDDEN // N_HEADS
        for i in range(N_LAYERS):
            p = f"encoder.layer.{i}."
            heads = []
            q = _linear(x, w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"])
            k = _linear(x, w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"])
            v = _linear(x, w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"])
            for h in range(N_HEADS):
                sl = slice(h * hd, (h + 1) * hd)
                att = _softmax(q[:, sl] @ k[:, sl].T / math.sqrt(hd))
                heads.append(att @ v[:, sl])
            ctx = np.concatenate(heads, axis=1)
            a = _linear(ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            x = _layer_norm(a + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            f = _gelu(_linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            f = _linear(f, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            x = _layer_norm(f + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = x.mean(0)  # no padding here, so the mean over all tokens is the masked mean
        return pooled / max(np.linalg.norm(pooled), 1e-12)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
        ids = [self.token_ids(t) for t in texts]
        return np.stack([self.forward_ids(i) for i in ids]), ids


def embed(texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    return MiniLM().embed(texts)


if __name__ == "__main__":
    import sys

    texts = sys.argv[1:] or ["a photo of a cat", "kitty", "automobile"]
    e, _ = embed(texts)
    print(np.round(e @ e.T, 3))
