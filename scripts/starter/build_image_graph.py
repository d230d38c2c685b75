"""Turn the converted NanoDet-m graph into the starter image graph (image.onnx).

Input: the raw tf2onnx conversion of the TF.js NanoDet-m model (input `input_1:0` [1,3,416,416],
six outputs: per stride 8/16/32 class probabilities [1,N_s,80] and GFL box distributions
[1,N_s,44]), and the text-tower embeddings of the 80 class prompts [80,384].

Output graph (opset 13, dynamic batch B, N = 52²+26²+13² = 3549 candidates):
  pixels      float32 [B,3,416,416]  BGR, (x - mean) / std  (see model.json)
  boxes       float32 [B,N,4]        x1,y1,x2,y2 in letterboxed input pixels
  objectness  float32 [B,N]          max class probability
  embeddings  float32 [B,N,384]      ConSE: L2-normalised sum of the top-T class-prompt
                                     embeddings weighted by their class probabilities

The raw graph's head Reshapes use a shape computed for batch 1; they are replaced by our own
head taken from the per-stride Split outputs (class logits [B,80,H,W] and box logits
[B,44,H,W]), reshaped with `0` (copy) for the batch dimension.

Box decoding (checked empirically, see exported_onnx/README.md): anchor centre of cell (row,col)
at stride s is ((col+0.5)·s, (row+0.5)·s); the 44 box logits are 4 sides (left, top, right,
bottom) × 11 bins; distance = Σ softmax(bins)·[0..10] · s.

Usage: build_image_graph.py RAW_ONNX CLASS_EMB_NPY OUT_ONNX [TOP_T]   (default: common.TOP_T)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import INPUT_SIZE, REG_MAX, STRIDES, TOP_T

N_CLASSES = 80


def anchor_tables():
    """Per-candidate centre [N,4] (cx,cy,cx,cy) and signed stride [N,4] (-s,-s,+s,+s)."""
    centres, signed = [], []
    for s in STRIDES:
        n = INPUT_SIZE // s
        row, col = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")  # index = row*n + col
        cx = (col.ravel() + 0.5) * s
        cy = (row.ravel() + 0.5) * s
        centres.append(np.stack([cx, cy, cx, cy], 1))
        signed.append(np.tile(np.array([-s, -s, s, s], np.float64), (n * n, 1)))
    return np.concatenate(centres).astype(np.float32), np.concatenate(signed).astype(np.float32)


def find_head_splits(model) -> list[tuple[str, str]]:
    """(class-logit, box-logit) outputs of the three head Splits, ordered by stride 8, 16, 32.

    Identified by shape: run a shape inference and sort by spatial size (52, 26, 13)."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in inferred.graph.value_info:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    heads = []
    for node in graph.node:
        if node.op_type != "Split" or len(node.output) != 2:
            continue
        a, b = (shapes.get(o) for o in node.output)
        if a and b and len(a) == 4 and a[1] == N_CLASSES and b[1] == 4 * (REG_MAX + 1):
            heads.append((a[2], node.output[0], node.output[1]))
    heads.sort(reverse=True)
    got = [h[0] for h in heads]
    want = [INPUT_SIZE // s for s in STRIDES]
    if got != want:
        raise SystemExit(f"ERROR: expected head feature maps {want}, found {got}: unexpected NanoDet graph")
    return [(c, r) for _, c, r in heads]


def build(raw_path: Path, class_emb: np.ndarray, out_path: Path, top_t: int) -> None:
    assert class_emb.shape == (N_CLASSES, 384)
    model = onnx.load(str(raw_path))
    g = model.graph
    if len(g.input) != 1:
        raise SystemExit("ERROR: raw NanoDet graph should have one input")
    old_in = g.input[0].name
    heads = find_head_splits(model)

    # Rename the input to `pixels` and make the batch dimension dynamic.
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == old_in:
                node.input[i] = "pixels"
    g.input[0].name = "pixels"
    g.input[0].type.tensor_type.shape.dim[0].ClearField("dim_value")
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "B"

    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(op_type, inputs, out, **attrs):
        nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    const("sp_shape_cls", np.array([0, N_CLASSES, -1], np.int64))
    const("sp_shape_reg", np.array([0, 4 * (REG_MAX + 1), -1], np.int64))
    cls_parts, reg_parts = [], []
    for s, (c, r) in zip(STRIDES, heads):
        prob = op("Sigmoid", [c], f"sp_prob_s{s}")
        cls_parts.append(op("Reshape", [prob, "sp_shape_cls"], f"sp_cls_s{s}"))
        reg_parts.append(op("Reshape", [r, "sp_shape_reg"], f"sp_reg_s{s}"))
    cls = op("Transpose", [op("Concat", cls_parts, "sp_cls_cn", axis=2)], "sp_cls", perm=[0, 2, 1])  # [B,N,80]
    reg = op("Transpose", [op("Concat", reg_parts, "sp_reg_cn", axis=2)], "sp_reg", perm=[0, 2, 1])  # [B,N,44]

    # objectness = max class probability
    op("ReduceMax", [cls], "objectness", axes=[2], keepdims=0)

    # boxes: GFL integral over 11 bins per side, scaled by the stride, around the cell centre
    centres, signed = anchor_tables()
    bins = op("Reshape", [reg, const("sp_shape_bins", np.array([0, 0, 4, REG_MAX + 1], np.int64))], "sp_bins")
    probs = op("Softmax", [bins], "sp_bins_softmax", axis=-1)
    dist = op("MatMul", [probs, const("sp_bin_values", np.arange(REG_MAX + 1, dtype=np.float32))], "sp_dist")  # [B,N,4]
    offs = op("Mul", [dist, const("sp_signed_stride", signed)], "sp_offsets")
    raw_boxes = op("Add", [offs, const("sp_centres", centres)], "sp_boxes_unclipped")
    op("Clip", [raw_boxes, const("sp_zero", np.array(0.0, np.float32)), const("sp_size", np.array(float(INPUT_SIZE), np.float32))], "boxes")

    # ConSE embedding: keep the top-T class probabilities, weight the class-prompt embeddings
    topv = helper.make_node("TopK", [cls, const("sp_top_t", np.array([top_t], np.int64))], ["sp_topv", "sp_topi"],
                            name="sp_topk", axis=-1, largest=1, sorted=1)
    nodes.append(topv)
    kth = op("Slice", ["sp_topv", const("sp_kth_start", np.array([top_t - 1], np.int64)),
                       const("sp_kth_end", np.array([top_t], np.int64)), const("sp_kth_axis", np.array([2], np.int64))], "sp_kth")
    keep = op("GreaterOrEqual", [cls, kth], "sp_keep")
    weights = op("Where", [keep, cls, const("sp_fzero", np.array(0.0, np.float32))], "sp_weights")
    mixed = op("MatMul", [weights, const("sp_class_embeddings", class_emb.astype(np.float32))], "sp_mixed")  # [B,N,384]
    sq = op("ReduceSum", [op("Mul", [mixed, mixed], "sp_sq"), const("sp_axis2", np.array([2], np.int64))], "sp_sqsum", keepdims=1)
    norm = op("Max", [op("Sqrt", [sq], "sp_norm0"), const("sp_eps", np.array(1e-12, np.float32))], "sp_norm")
    op("Div", [mixed, norm], "embeddings")

    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", "N", 4]),
        helper.make_tensor_value_info("objectness", TensorProto.FLOAT, ["B", "N"]),
        helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["B", "N", 384]),
    ])

    # Drop everything the new outputs do not need (the old batch-1 head, its shape arithmetic).
    needed = {o.name for o in g.output}
    kept = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del g.node[:]
    g.node.extend(reversed(kept))
    live = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(live)
    del g.value_info[:]
    model.doc_string = f"Spotter starter: NanoDet-m (COCO-80) + ConSE top-{top_t} projection into all-MiniLM-L6-v2 space"
    onnx.checker.check_model(model, full_check=True)
    tmp = out_path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out_path)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    top_t = int(sys.argv[4]) if len(sys.argv) == 5 else TOP_T
    build(Path(sys.argv[1]), np.load(sys.argv[2]), Path(sys.argv[3]), top_t)
    print(f"wrote {sys.argv[3]}")
