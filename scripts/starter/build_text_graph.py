"""Build the starter text graph (text.onnx) and tokenizer.json from all-MiniLM-L6-v2 weights.

The graph is written with the onnx helper API directly from model.safetensors:
  input_ids, attention_mask, token_type_ids: int64 [K,L] (K, L dynamic)
  -> 6-layer BERT encoder -> mean pooling over attention_mask -> L2 normalise
  -> text_embeddings: float32 [K,384]

Usage: build_text_graph.py OUT_TEXT_ONNX OUT_TOKENIZER_JSON
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import load_safetensors
from minilm_reference import HIDDEN, LN_EPS, MINILM_DIR, N_HEADS, N_LAYERS

OPSET = 17  # LayerNormalization is a standard op from 17 on
MAX_LENGTH = 128


class G:
    """Tiny graph-building helper: unique names, constants as initializers."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr, base="c"):
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def op(self, op_type, inputs, base=None, **attrs):
        out = self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def build(out_onnx: Path) -> None:
    w = load_safetensors(MINILM_DIR / "model.safetensors")
    g = G()
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731

    def linear(x, prefix):
        wt = g.const(f32(w[prefix + ".weight"].T), prefix.replace(".", "_") + "_wT")
        b = g.const(f32(w[prefix + ".bias"]), prefix.replace(".", "_") + "_b")
        return g.op("Add", [g.op("MatMul", [x, wt]), b])

    def layer_norm(x, prefix):
        gamma = g.const(f32(w[prefix + ".weight"]), prefix.replace(".", "_") + "_g")
        beta = g.const(f32(w[prefix + ".bias"]), prefix.replace(".", "_") + "_b")
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=LN_EPS)

    # --- embeddings
    word = g.op("Gather", [g.const(f32(w["embeddings.word_embeddings.weight"]), "word_emb"), "input_ids"], axis=0)
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.array(1, np.int64))], axis=0)
    positions = g.op("Range", [g.const(np.array(0, np.int64)), seq_len, g.const(np.array(1, np.int64))])
    pos = g.op("Gather", [g.const(f32(w["embeddings.position_embeddings.weight"]), "pos_emb"), positions], axis=0)
    typ = g.op("Gather", [g.const(f32(w["embeddings.token_type_embeddings.weight"]), "type_emb"), "token_type_ids"], axis=0)
    x = g.op("Add", [g.op("Add", [word, pos]), typ])
    x = layer_norm(x, "embeddings.LayerNorm")

    # --- additive attention mask [K,1,1,L]: 0 for tokens, -1e9 for padding
    maskf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask4 = g.op("Unsqueeze", [maskf, g.const(np.array([1, 2], np.int64))])
    neg = g.op("Mul", [g.op("Sub", [g.const(np.array(1.0, np.float32)), mask4]), g.const(np.array(-1e9, np.float32))])

    hd = HIDDEN // N_HEADS
    split_heads = g.const(np.array([0, 0, N_HEADS, hd], np.int64), "split_heads")
    merge_heads = g.const(np.array([0, 0, HIDDEN], np.int64), "merge_heads")
    inv_sqrt = g.const(np.array(1.0 / math.sqrt(hd), np.float32), "inv_sqrt_hd")
    for i in range(N_LAYERS):
        p = f"encoder.layer.{i}"
        q = g.op("Transpose", [g.op("Reshape", [linear(x, p + ".attention.self.query"), split_heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(x, p + ".attention.self.key"), split_heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [linear(x, p + ".attention.self.value"), split_heads])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), inv_sqrt]), neg])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        x = layer_norm(g.op("Add", [linear(ctx, p + ".attention.output.dense"), x]), p + ".attention.output.LayerNorm")
        h = linear(x, p + ".intermediate.dense")
        # exact GELU: 0.5 * h * (1 + erf(h / sqrt(2)))
        erf = g.op("Erf", [g.op("Mul", [h, g.const(np.array(1.0 / math.sqrt(2.0), np.float32))])])
        h = g.op("Mul", [g.op("Mul", [h, g.const(np.array(0.5, np.float32))]), g.op("Add", [erf, g.const(np.array(1.0, np.float32))])])
        x = layer_norm(g.op("Add", [linear(h, p + ".output.dense"), x]), p + ".output.LayerNorm")

    # --- mean pooling over the mask, then L2 normalisation
    m3 = g.op("Unsqueeze", [maskf, g.const(np.array([2], np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), g.const(np.array([1], np.int64))], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m3, g.const(np.array([1], np.int64))], keepdims=0), g.const(np.array(1e-9, np.float32))])
    pooled = g.op("Div", [summed, count])
    norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [pooled, pooled]), g.const(np.array([1], np.int64))], keepdims=1)])
    norm = g.op("Max", [norm, g.const(np.array(1e-12, np.float32))])
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["text_embeddings"], name="l2_normalise"))

    ids_t = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["K", "L"])  # noqa: E731
    graph = helper.make_graph(
        g.nodes,
        "starter_text_minilm_l6",
        [ids_t("input_ids"), ids_t("attention_mask"), ids_t("token_type_ids")],
        [helper.make_tensor_value_info("text_embeddings", TensorProto.FLOAT, ["K", HIDDEN])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spotter-starter")
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_onnx.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out_onnx)


def write_tokenizer(out_json: Path) -> None:
    """Copy the WordPiece tokenizer with fixed padding removed (the engine pads) and truncation 128."""
    tok = json.loads((MINILM_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    tok["padding"] = None
    tok["truncation"] = {"direction": "Right", "max_length": MAX_LENGTH, "strategy": "LongestFirst", "stride": 0}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    build(Path(sys.argv[1]))
    write_tokenizer(Path(sys.argv[2]))
    print(f"wrote {sys.argv[1]} and {sys.argv[2]}")
