#!/usr/bin/env python3
"""Build a deterministic SYNTHETIC model package with the WeDetect-Uni signature.

    python scripts/wedetect/make_synthetic.py --out exported_onnx/wedetect-synthetic [--seed 0]

The package has exactly the inputs, outputs, dtypes, ranks and manifest layout of the real
WeDetect-Uni package written by export_wedetect_uni.py (see docs/model-contract.md), but tiny random
weights (numpy + the `onnx` helper API, no torch), so that the engine, its tests and the Python
reference pipeline can run anywhere in seconds. Its scores mean nothing.

What is the same as the real model:
  * image graph `pixels` [B,3,S,S] float32 (RGB, /255) -> `boxes` [B,N,4] (xyxy, letterbox pixels),
    `objectness` [B,N], `embeddings` [B,N,D] (BatchNorm-ed, NOT normalised), `levels` [B,N] int64;
  * 3 levels with strides 8/16/32, candidates ordered level by level and row-major inside a level,
    anchor points at ((i+0.5)*stride, (j+0.5)*stride), boxes decoded inside the graph from DFL
    logits (4 sides x 16 bins, softmax -> expectation -> x stride -> ltrb around the anchor);
  * objectness = sigmoid(scale_l * <BN(e), p0> + bias_l) with one fixed prompt vector p0 and the
    per-level scale/bias that the manifest lists (the Base-Uni constants);
  * text graph `input_ids`, `attention_mask` int64 [K,L] -> `text_embeddings` [K,D], L2-normalised;
    pad id 1; tokenizer.json with <s>=0 <pad>=1 </s>=2 <unk>=3 and an XLM-R-like "<s> $A </s>"
    post-processor (Metaspace + Unigram, like XLM-R's SentencePiece).

What differs: the towers (a few strided convolutions / a mean-pooled embedding table), D (32 by
default) and the input size (160 by default, a manifest parameter).

Same arguments and seed -> byte-identical files (no randomness outside the seeded generator, no
floating-point work whose result depends on the machine).
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # ir_version of opset 17; keeps the files loadable by older ONNX Runtimes too
from package import STRIDES, wedetect_manifest  # noqa: E402  (scripts/wedetect/package.py)
REG_MAX = 16
# Per-level exp(logit_scale) and bias of the WeDetect-Uni Base checkpoint (as hard-coded in the
# reference inference); the synthetic embeddings are scaled so these give sensible probabilities.
UNI_BASE_SCALES = (0.0609, 0.1997, 0.2794)
UNI_BASE_BIASES = (-12.315, -10.934, -9.574)
FEAT_CH = 16  # channels of the synthetic feature maps
TEXT_HIDDEN = 16  # width of the synthetic token embedding table
OBJ_TARGET = (-3.0, -1.6, -1.6)  # designed mean objectness logit per level, see make_weights

# Vocabulary of the synthetic tokenizer: words that tests and demos are likely to use.
ENGLISH_WORDS = """
a an the of and with on in at photo picture image
person people man woman child boy girl face hand
cat dog bird horse sheep cow elephant bear zebra giraffe fish
car bus truck train bicycle motorcycle airplane boat ship
chair couch sofa bed table desk tv laptop phone book clock vase cup bottle bowl
tree flower grass sky cloud sun road street house building window door sign light
red green blue yellow black white orange purple brown gray
big small left right top bottom
""".split()
CHINESE_WORDS = """
人 男人 女人 孩子 猫 狗 鸟 马 羊 牛 大象 熊 斑马 长颈鹿 鱼
汽车 公交车 卡车 火车 自行车 摩托车 飞机 船
椅子 沙发 床 桌子 电视 笔记本电脑 手机 书 时钟 花瓶 杯子 瓶子 碗
树 花 草 天空 云 太阳 路 街道 房子 建筑 窗户 门 标志 灯
红色 绿色 蓝色 黄色 黑色 白色 一只 一个 的
""".split()


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
class GraphBuilder:
    """Collects nodes and initializers with unique, readable names."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self._n = 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, name, **attrs):
        self._n += 1
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"n{self._n}_{name}", **attrs))
        return name


def f32(a):
    return np.asarray(a, dtype=np.float32)


def unit(v):
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def make_weights(rng, dim):
    """All parameters of both towers, drawn from one seeded generator.

    The embedding statistics are designed (not trained) so that, with the Base-Uni constants,
    roughly half the candidates pass an objectness threshold of 0.1 and text probabilities
    spread over (0, 1):
      e      = m_l * u + g_l * z          (u: one shared unit direction, z: image-dependent part)
      p0     = 0.75 * u + 0.66 * w        (unit norm, w orthogonal to u)
      t_hat ~= cos(theta) * u + ...       (cos(theta) around 0.8, varies per text)
    """
    u = unit(rng.standard_normal(dim))
    w = rng.standard_normal(dim)
    w = unit(w - (w @ u) * u)
    cos_p = 0.75
    p0 = cos_p * u + np.sqrt(1.0 - cos_p**2) * w

    W = {"u": u, "p0": p0}
    # image tower: stem to stride 4, then stride 2 convs to strides 8 / 16 / 32
    W["stem_w"] = rng.standard_normal((FEAT_CH, 3, 4, 4)) * 0.35
    W["stem_b"] = rng.standard_normal(FEAT_CH) * 0.2 - 0.5 * W["stem_w"].sum(axis=(1, 2, 3))
    for li in range(3):
        W[f"down{li}_w"] = rng.standard_normal((FEAT_CH, FEAT_CH, 2, 2)) * (1.0 / np.sqrt(FEAT_CH * 4))
        W[f"down{li}_b"] = rng.standard_normal(FEAT_CH) * 0.1

    for li, (s, b) in enumerate(zip(UNI_BASE_SCALES, UNI_BASE_BIASES)):
        # box branch: 3x3 conv over features (+ pooled pixels) -> 64 DFL logits, biased to short
        # distances (about 2-3 bins) so boxes look like objects rather than the whole image
        W[f"reg{li}_w"] = rng.standard_normal((4 * REG_MAX, FEAT_CH + 3, 3, 3)) * 0.25
        bins = np.arange(REG_MAX)
        W[f"reg{li}_b"] = (np.tile(-0.35 * bins, 4) + rng.standard_normal(4 * REG_MAX) * 0.1)
        # class branch: 3x3 conv + tanh, then 1x1 conv to D, then BatchNorm (eps 1e-3)
        W[f"cls{li}_w1"] = rng.standard_normal((FEAT_CH, FEAT_CH + 3, 3, 3)) * (1.0 / np.sqrt((FEAT_CH + 3) * 9))
        W[f"cls{li}_b1"] = rng.standard_normal(FEAT_CH) * 0.1
        W[f"cls{li}_w2"] = rng.standard_normal((dim, FEAT_CH, 1, 1)) * (1.0 / np.sqrt(FEAT_CH))
        W[f"cls{li}_b2"] = np.zeros(dim)
        # BN: running stats near the pre-BN statistics, affine part places the embeddings
        # mean objectness logit: about -1.7 on every level (level 0's image-dependent part adds
        # about +1.3 on average, hence its lower target)
        m_l = (OBJ_TARGET[li] - b) / (cos_p * s)
        g_l = 2.5 / s * np.sqrt(32.0 / dim)  # image-dependent spread of about +-1.5 logits, any D
        W[f"bn{li}_mean"] = rng.standard_normal(dim) * 0.05
        W[f"bn{li}_var"] = 0.25 + rng.random(dim) * 0.1
        W[f"bn{li}_gamma"] = g_l * (0.8 + 0.4 * rng.random(dim))
        W[f"bn{li}_beta"] = m_l * u + rng.standard_normal(dim) * (0.05 * g_l)

    # text tower: token table (specials are zero rows: they carry no meaning), masked mean,
    # linear to D with a bias along u, L2 norm
    return W


def make_text_weights(rng, dim, vocab_size, u):
    table = rng.standard_normal((vocab_size, TEXT_HIDDEN))
    table[:3] = 0.0  # <s>, <pad>, </s>
    lin_w = rng.standard_normal((TEXT_HIDDEN, dim)) * (1.0 / np.sqrt(TEXT_HIDDEN))
    # a one-word text gives h = row/3 (mean over <s> word </s>), |h W| ~ sqrt(D)/3; a bias of
    # 1.6 * that along u puts cos(t_hat, u) around 0.85
    lin_b = u * (1.6 * np.sqrt(dim) / 3.0)
    return table, lin_w, lin_b


# --------------------------------------------------------------------------------------------
# image graph
# --------------------------------------------------------------------------------------------
def anchor_points(size):
    pts, strides, levels = [], [], []
    for li, s in enumerate(STRIDES):
        n = size // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")  # row-major: x fastest
        pts.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1))
        strides.append(np.full((n * n, 1), s))
        levels.append(np.full(n * n, li))
    return f32(np.concatenate(pts)), f32(np.concatenate(strides)), np.concatenate(levels).astype(np.int64)


def build_image_graph(W, size, dim, scales, biases):
    g = GraphBuilder()
    points, strides, levels = anchor_points(size)
    n_total = points.shape[0]

    x = "pixels"
    feat = g.op("Relu", [g.op("Conv", [x, g.const("stem_w", f32(W["stem_w"])), g.const("stem_b", f32(W["stem_b"]))],
                              "stem_conv", kernel_shape=[4, 4], strides=[4, 4])], "stem")
    boxes, objs, embs = [], [], []
    for li, s in enumerate(STRIDES):
        feat = g.op("Relu", [g.op("Conv", [feat, g.const(f"down{li}_w", f32(W[f"down{li}_w"])),
                                           g.const(f"down{li}_b", f32(W[f"down{li}_b"]))],
                                  f"down{li}_conv", kernel_shape=[2, 2], strides=[2, 2])], f"p{li}")
        # the local mean colour keeps every level directly tied to the pixels
        pooled = g.op("AveragePool", [x], f"pool{li}", kernel_shape=[s, s], strides=[s, s])
        fin = g.op("Concat", [feat, pooled], f"head_in{li}", axis=1)
        h = size // s

        # box branch: DFL over 16 bins, decoded in the graph
        reg = g.op("Conv", [fin, g.const(f"reg{li}_w", f32(W[f"reg{li}_w"])), g.const(f"reg{li}_b", f32(W[f"reg{li}_b"]))],
                   f"reg{li}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        reg = g.op("Reshape", [reg, g.const(f"reg{li}_shape", np.array([-1, 4, REG_MAX, h * h], np.int64))], f"reg{li}_r")
        reg = g.op("Transpose", [reg], f"reg{li}_t", perm=[0, 3, 1, 2])  # B, hw, 4, 16
        reg = g.op("Softmax", [reg], f"reg{li}_sm", axis=-1)
        dist = g.op("MatMul", [reg, g.const(f"proj{li}", f32(np.arange(REG_MAX).reshape(REG_MAX, 1)))], f"dist{li}")
        dist = g.op("Reshape", [dist, g.const(f"dist{li}_shape", np.array([-1, h * h, 4], np.int64))], f"dist{li}_r")
        boxes.append(dist)

        # class branch: embedding, BatchNorm, objectness with prompt p0
        c = g.op("Tanh", [g.op("Conv", [fin, g.const(f"cls{li}_w1", f32(W[f"cls{li}_w1"])),
                                         g.const(f"cls{li}_b1", f32(W[f"cls{li}_b1"]))],
                                f"cls{li}_c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], f"cls{li}_a")
        c = g.op("Conv", [c, g.const(f"cls{li}_w2", f32(W[f"cls{li}_w2"])), g.const(f"cls{li}_b2", f32(W[f"cls{li}_b2"]))],
                 f"cls{li}_c2", kernel_shape=[1, 1])
        c = g.op("BatchNormalization", [c, g.const(f"bn{li}_gamma", f32(W[f"bn{li}_gamma"])),
                                        g.const(f"bn{li}_beta", f32(W[f"bn{li}_beta"])),
                                        g.const(f"bn{li}_mean", f32(W[f"bn{li}_mean"])),
                                        g.const(f"bn{li}_var", f32(W[f"bn{li}_var"]))],
                 f"bn{li}", epsilon=1e-3)
        e = g.op("Reshape", [c, g.const(f"emb{li}_shape", np.array([0, dim, h * h], np.int64))], f"emb{li}_r")
        e = g.op("Transpose", [e], f"emb{li}", perm=[0, 2, 1])  # B, hw, D
        embs.append(e)
        logit = g.op("MatMul", [e, g.const(f"p0_{li}", f32(W["p0"]).reshape(dim, 1))], f"obj{li}_dot")
        logit = g.op("Add", [g.op("Mul", [logit, g.const(f"scale{li}", f32(scales[li]))], f"obj{li}_s"),
                             g.const(f"bias{li}", f32(biases[li]))], f"obj{li}_logit")
        objs.append(logit)

    dist = g.op("Concat", boxes, "dist", axis=1)  # B, N, 4 in bins (l, t, r, b)
    dist = g.op("Mul", [dist, g.const("strides", strides)], "dist_px")
    lt = g.op("Slice", [dist, g.const("s0", np.array([0], np.int64)), g.const("s2", np.array([2], np.int64)),
                        g.const("ax2", np.array([2], np.int64))], "lt")
    rb = g.op("Slice", [dist, "s2", g.const("s4", np.array([4], np.int64)), "ax2"], "rb")
    pts = g.const("points", points)
    g.op("Concat", [g.op("Sub", [pts, lt], "x1y1"), g.op("Add", [pts, rb], "x2y2")], "boxes", axis=2)
    obj = g.op("Concat", objs, "obj_logit", axis=1)  # B, N, 1
    obj = g.op("Squeeze", [obj, g.const("ax_last", np.array([2], np.int64))], "obj_logit_sq")
    g.op("Sigmoid", [obj], "objectness")
    g.op("Concat", embs, "embeddings", axis=1)
    # levels [B, N] int64: constant per candidate, broadcast to the batch
    batch = g.op("Slice", [g.op("Shape", [x], "pix_shape"), "s0", g.const("s1", np.array([1], np.int64))], "batch")
    shape = g.op("Concat", [batch, g.const("n_total", np.array([n_total], np.int64))], "levels_shape", axis=0)
    g.op("Expand", [g.const("level_ids", levels.reshape(1, n_total)), shape], "levels")

    inputs = [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])]
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", n_total, 4]),
        helper.make_tensor_value_info("objectness", TensorProto.FLOAT, ["batch", n_total]),
        helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", n_total, dim]),
        helper.make_tensor_value_info("levels", TensorProto.INT64, ["batch", n_total]),
    ]
    graph = helper.make_graph(g.nodes, "wedetect_synthetic_image", inputs, outputs, g.inits)
    return finish(graph), n_total


# --------------------------------------------------------------------------------------------
# text graph
# --------------------------------------------------------------------------------------------
def build_text_graph(table, lin_w, lin_b, dim):
    g = GraphBuilder()
    tok = g.op("Gather", [g.const("token_table", f32(table)), "input_ids"], "tok", axis=0)  # K, L, H
    mask = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT),
                              g.const("ax2", np.array([2], np.int64))], "mask3")  # K, L, 1
    ax1 = g.const("ax1", np.array([1], np.int64))
    summed = g.op("ReduceSum", [g.op("Mul", [tok, mask], "tok_masked"), ax1], "tok_sum", keepdims=0)
    count = g.op("ReduceSum", [mask, ax1], "tok_count", keepdims=0)  # K, 1
    count = g.op("Max", [count, g.const("one", f32(1.0))], "tok_count_safe")
    h = g.op("Div", [summed, count], "tok_mean")
    y = g.op("Add", [g.op("MatMul", [h, g.const("proj_w", f32(lin_w))], "proj_mm"), g.const("proj_b", f32(lin_b))], "proj")
    norm = g.op("ReduceL2", [y], "norm", axes=[-1], keepdims=1)
    norm = g.op("Max", [norm, g.const("eps", f32(1e-12))], "norm_safe")
    g.op("Div", [y, norm], "text_embeddings")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["num_texts", "seq_len"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["num_texts", "seq_len"])]
    outputs = [helper.make_tensor_value_info("text_embeddings", TensorProto.FLOAT, ["num_texts", dim])]
    return finish(helper.make_graph(g.nodes, "wedetect_synthetic_text", inputs, outputs, g.inits))


def finish(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="spotter-make-synthetic", producer_version="1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------
def vocab_pieces():
    """Unigram pieces (piece, log-prob). Ids 0-3 are the XLM-R special tokens."""
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -5.0)]
    seen = {p for p, _ in pieces}

    def add(p, score):
        if p not in seen:
            seen.add(p)
            pieces.append((p, score))

    for wd in ENGLISH_WORDS:
        add("\u2581" + wd, -8.0)
    for wd in CHINESE_WORDS:
        add("\u2581" + wd, -8.0)
        add(wd, -9.0)
    # single characters so that any ASCII word (and the Chinese characters above) tokenises
    # without <unk>; anything else becomes <unk>
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-'.,":
        add(ch, -12.0)
    for ch in sorted({c for wd in CHINESE_WORDS for c in wd}):
        add(ch, -12.0)
    return pieces


def build_tokenizer(path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces = vocab_pieces()
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "<pad>", "</s>", "<unk>")])
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    tok.save(path, pretty=True)
    return tok, len(pieces)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def manifest(args, dim, n_total):
    return wedetect_manifest(
        name=os.path.basename(os.path.normpath(args.out)),
        description=(f"SYNTHETIC test model with the WeDetect-Uni signature (seed {args.seed}, "
                     f"{args.input_size}x{args.input_size}, {n_total} candidates, D={dim}); "
                     "random weights, its scores mean nothing"),
        license_text="synthetic, generated by scripts/wedetect/make_synthetic.py; no third-party weights",
        embedding_dim=dim, side=args.input_size, scales=UNI_BASE_SCALES, biases=UNI_BASE_BIASES)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="package folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-size", type=int, default=160, help="square input size, a multiple of 32")
    ap.add_argument("--dim", type=int, default=32, help="embedding dimension (768 like the real model)")
    args = ap.parse_args(argv)
    if args.input_size % 32 or args.input_size < 32:
        ap.error("--input-size must be a positive multiple of 32")

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    W = make_weights(rng, args.dim)
    image_model, n_total = build_image_graph(W, args.input_size, args.dim, UNI_BASE_SCALES, UNI_BASE_BIASES)
    onnx.save(image_model, os.path.join(args.out, "image.onnx"))

    _, vocab_size = build_tokenizer(os.path.join(args.out, "tokenizer.json"))
    table, lin_w, lin_b = make_text_weights(rng, args.dim, vocab_size, W["u"])
    onnx.save(build_text_graph(table, lin_w, lin_b, args.dim), os.path.join(args.out, "text.onnx"))

    with open(os.path.join(args.out, "model.json"), "w", encoding="utf-8") as f:
        json.dump(manifest(args, args.dim, n_total), f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}: image.onnx (N={n_total}, D={args.dim}), text.onnx, tokenizer.json "
          f"({vocab_size} pieces), model.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
