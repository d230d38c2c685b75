#!/usr/bin/env python3
"""Export WeDetect-Uni (image tower) + the WeDetect text tower as a Spotter model package.

    python scripts/wedetect/export_wedetect_uni.py \
        --wedetect-repo ../WeDetect \
        --uni-checkpoint checkpoints/wedetect_base_uni.pth \
        --text-checkpoint checkpoints/wedetect_base.pth \
        --size base --out exported_onnx/wedetect-uni-base

Writes image.onnx, text.onnx (+ text.onnx.data for large), tokenizer.json and model.json as
docs/model-contract.md describes. Needs the environment of the WeDetect repository (torch,
transformers, sentencepiece) and a checkout recent enough to have wedetect_anything/models.py: the
graphs wrap its model classes, so the towers are exactly the reference ones.

Image graph  pixels [B,3,S,S] float32, RGB / 255, letterboxed (S = 640 base, 1280 large)
             -> boxes [B,N,4] (xyxy, letterbox pixels), objectness [B,N],
                embeddings [B,N,768] (after the per-level BatchNorm, not normalised),
                levels [B,N] int64 (0/1/2 = strides 8/16/32)
             objectness = sigmoid(exp(logit_scale_l) * <BN_l(e), p0> + bias_l), p0 = the first
             learned objectness prompt, used raw (not L2-normalised) as the reference inference
             (VisionProposalDeployModel / generate_proposal.py) does. `--objectness max` uses the
             max over all prompts instead, like infer_anything.py.
Text graph   input_ids, attention_mask int64 [K,L] -> text_embeddings [K,768]:
             XLM-R hidden state of <s> -> Linear -> L2 norm (pad id 1).

After writing, the script checks: ONNX Runtime vs PyTorch on a test image and texts, batch 1 and 2,
text embeddings independent of padding, and tokenizer.json ids equal to the reference tokenizer's.
"""
import argparse
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile

import numpy as np

# mmdet checkpoints pickle more than tensors; torch >= 2.6 refuses them by default (weights_only).
# They are the user's own files, and the reference loader calls torch.load itself.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

OPSET = 17
from package import STRIDES, wedetect_manifest  # noqa: E402  (scripts/wedetect/package.py)
EMBED_DIM = 768
SIZES = {  # input side, XLM-R folder inside the WeDetect checkout
    "base": (640, "xlm-roberta-base"),
    "large": (1280, "xlm-roberta-large"),
}
# exp(logit_scale) / bias of the Base-Uni checkpoint as hard-coded in the reference inference;
# only used to warn when the checkpoint read here disagrees.
BASE_UNI_REFERENCE = ([0.0609, 0.1997, 0.2794], [-12.315, -10.934, -9.574])
CHECK_TEXTS = ["cat", "car", "a person riding a bicycle", "猫", "一只黑色的狗", "Traffic Light",
               "  two   spaces ", "東京タワー", "🙂 emoji", "x" * 40]
TWO_GB = 2 * 1024**3


# --------------------------------------------------------------------------------------------
# reference code
# --------------------------------------------------------------------------------------------
def import_reference(repo):
    """wedetect_anything/models.py of the checkout, loaded under a private module name."""
    path = os.path.join(repo, "wedetect_anything", "models.py")
    if not os.path.exists(path):
        sys.exit(f"{path} not found: this export needs a WeDetect checkout with wedetect_anything/")
    spec = importlib.util.spec_from_file_location("wedetect_anything_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_state_dict(path):
    sd = torch.load(path, map_location="cpu")
    return sd.get("state_dict", sd)


# --------------------------------------------------------------------------------------------
# image tower
# --------------------------------------------------------------------------------------------
class ImageGraph(nn.Module):
    """The reference deploy model with Spotter's outputs: objectness from the first prompt
    (or the max over prompts), plus a constant per-candidate level index."""

    def __init__(self, deploy, level_ids, objectness):
        super().__init__()
        self.deploy = deploy
        self.objectness = objectness
        self.register_buffer("level_ids", level_ids.view(1, -1), persistent=False)

    def forward(self, pixels):
        scores, bboxes, embeds = self.deploy(pixels)  # scores are sigmoid-ed already
        if self.objectness == "first":
            objectness = scores[..., 0]
        else:
            objectness = scores.max(dim=-1).values
        levels = self.level_ids.expand(pixels.shape[0], -1)
        return bboxes, objectness, embeds, levels


def build_image_graph(ref, args, side):
    sd = load_state_dict(args.uni_checkpoint)
    if "embeddings" not in sd:
        sys.exit(f"{args.uni_checkpoint} has no 'embeddings' (objectness prompts): not a WeDetect-Uni checkpoint?")
    num_prompts, prompt_dim = sd["embeddings"].shape
    del sd
    detector = ref.SimpleYOLOWorldProposalDetector(args.size, prompt_dim=prompt_dim, num_prompts=num_prompts)

    # the reference loader uses strict=False and only prints the result: capture it and insist
    # that every tensor of the detector was loaded
    captured = {}
    plain_load = detector.load_state_dict

    def load_and_capture(state_dict, strict=True):
        captured["msg"] = plain_load(state_dict, strict=strict)
        return captured["msg"]

    detector.load_state_dict = load_and_capture
    ref.load_proposal_checkpoint(detector, args.uni_checkpoint)
    detector.load_state_dict = plain_load
    missing = list(captured["msg"].missing_keys)
    if missing:
        sys.exit(f"image tower: {len(missing)} tensors missing from the checkpoint, e.g. {missing[:5]}")
    unexpected = list(captured["msg"].unexpected_keys)
    if unexpected:
        print(f"[image] ignored {len(unexpected)} checkpoint keys, e.g. {unexpected[:5]}")
    detector.eval()

    scales, biases = ref.get_head_scale_bias(detector)
    prompts = detector.embeddings.detach()
    p0_norm = float(prompts[0].norm())
    print(f"[image] {num_prompts} prompts x {prompt_dim}; |p0| = {p0_norm:.4f} (used raw, as the reference does)")
    print(f"[image] exp(logit_scale) = {scales}, bias = {biases}")
    if args.size == "base":
        ref_s, ref_b = BASE_UNI_REFERENCE
        if not (np.allclose(scales, ref_s, atol=5e-4) and np.allclose(biases, ref_b, atol=5e-3)):
            print(f"[image] WARNING: differs from the Base-Uni constants of the reference inference {ref_s}, {ref_b}")

    deploy = ref.VisionProposalDeployModel(detector, img_size=side).eval()
    if args.objectness == "first":
        deploy.embeddings = deploy.embeddings[:1].clone()  # only prompt 0 is scored
    counts = [(side // s) ** 2 for s in STRIDES]
    level_ids = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(counts)])
    if deploy.points.shape[0] != level_ids.shape[0]:
        sys.exit(f"anchor count {deploy.points.shape[0]} != {level_ids.shape[0]}")
    graph = ImageGraph(deploy, level_ids, args.objectness).eval()
    return graph, scales, biases, p0_norm, num_prompts


# --------------------------------------------------------------------------------------------
# text tower
# --------------------------------------------------------------------------------------------
class TextGraph(nn.Module):
    def __init__(self, xlmr, head):
        super().__init__()
        self.xlmr = xlmr
        self.head = head

    def forward(self, input_ids, attention_mask):
        hidden = self.xlmr(input_ids=input_ids, attention_mask=attention_mask)[0]  # last_hidden_state
        return F.normalize(self.head(hidden[:, 0]), p=2, dim=-1)


def build_text_graph(xlmr_dir, text_checkpoint):
    from transformers import AutoConfig, XLMRobertaModel

    cfg = AutoConfig.from_pretrained(xlmr_dir)
    try:  # plain attention exports with every torch/transformers pair; SDPA does not always
        cfg._attn_implementation = "eager"
    except Exception:
        pass
    xlmr = XLMRobertaModel(cfg)
    head = nn.Linear(cfg.hidden_size, EMBED_DIM)

    prefix = "backbone.text_model."
    sd = {k[len(prefix):]: v for k, v in load_state_dict(text_checkpoint).items() if k.startswith(prefix)}
    if not sd:
        sys.exit(f"{text_checkpoint} has no '{prefix}*' tensors (the Uni checkpoint has no text tower: "
                 "pass the WeDetect detector checkpoint of the same size)")
    model_sd = {"model." + k: v for k, v in xlmr.state_dict().items()}
    model_sd.update({"head." + k: v for k, v in head.state_dict().items()})
    # the pooler is unused; position/token-type id buffers are persistent in some transformers versions
    missing = [k for k in model_sd if k not in sd and ".pooler." not in k
               and not k.endswith(("position_ids", "token_type_ids"))]
    unexpected = [k for k in sd if k not in model_sd and not k.endswith("position_ids")]
    if missing or unexpected:
        sys.exit(f"text tower mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    xlmr.load_state_dict({k[6:]: v for k, v in sd.items() if k.startswith("model.") and "model." + k[6:] in model_sd},
                         strict=False)
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
    print(f"[text] XLM-R {cfg.hidden_size}-d, {cfg.num_hidden_layers} layers, head {cfg.hidden_size}->{EMBED_DIM}")
    return TextGraph(xlmr, head).eval()


def write_tokenizer(xlmr_dir, path):
    """tokenizer.json from XLM-R's SentencePiece model via transformers' slow->fast conversion
    (falls back to the fast tokenizer transformers loads from the folder), checked against the
    tokenizer the reference code uses."""
    from transformers import AutoTokenizer

    try:
        from transformers import XLMRobertaTokenizer
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer

        slow = XLMRobertaTokenizer(os.path.join(xlmr_dir, "sentencepiece.bpe.model"))
        tok = convert_slow_tokenizer(slow)
        how = "converted from sentencepiece.bpe.model"
    except Exception as e:  # sentencepiece/protobuf missing
        tok = AutoTokenizer.from_pretrained(xlmr_dir, use_fast=True).backend_tokenizer
        how = f"fast tokenizer of {xlmr_dir} (conversion failed: {e})"
    tok.no_padding()
    tok.no_truncation()
    tok.save(path)

    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(path)
    reference = AutoTokenizer.from_pretrained(xlmr_dir)  # what XLMRobertaLanguageBackbone uses
    for text in CHECK_TEXTS:
        a = ours.encode(text).ids
        b = reference(text)["input_ids"]
        if a != b:
            sys.exit(f"tokenizer.json disagrees with the reference tokenizer on {text!r}: {a} vs {b}")
    specials = [ours.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")]
    if specials != [0, 1, 2, 3]:
        sys.exit(f"unexpected special token ids {specials}")
    print(f"[tokenizer] {how}; vocab {ours.get_vocab_size()}; ids match the reference on {len(CHECK_TEXTS)} texts")
    return ours


# --------------------------------------------------------------------------------------------
# export helpers
# --------------------------------------------------------------------------------------------
def onnx_export(module, inputs, path, input_names, output_names, dynamic_axes):
    kwargs = dict(input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                  opset_version=OPSET, do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter, as the reference export uses
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".export-")
    try:
        tmp_path = os.path.join(tmp, os.path.basename(path))
        with torch.no_grad():
            torch.onnx.export(module, inputs, tmp_path, **kwargs)
        save_onnx(tmp_path, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_onnx(src, dst):
    """Re-save src as dst: one file, or dst + dst.data (ONNX external data) above 2 GB."""
    import onnx

    model = onnx.load(src, load_external_data=True)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    for stale in (dst, dst + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    if size > TWO_GB - 64 * 1024**2:
        onnx.save_model(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(dst) + ".data", size_threshold=1024)
        print(f"[onnx] {dst} + {os.path.basename(dst)}.data ({size / 1e9:.2f} GB of weights)")
    else:
        onnx.save_model(model, dst)
        print(f"[onnx] {dst} ({size / 1e6:.0f} MB of weights)")
    onnx.checker.check_model(dst)  # by path: works above 2 GB too


def test_image(repo, side):
    """A letterboxed example image of the checkout (or noise), as the graph input."""
    from PIL import Image

    for name in ("1.jpg", "2.jpg", "3.png"):
        p = os.path.join(repo, "wedetect_anything", "examples", name)
        if os.path.exists(p):
            img = Image.open(p).convert("RGB")
            w, h = img.size
            r = min(side / w, side / h)
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            canvas = Image.new("RGB", (side, side), (114, 114, 114))
            canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), ((side - nw) // 2, (side - nh) // 2))
            return np.asarray(canvas, np.float32).transpose(2, 0, 1)[None] / np.float32(255)
    return np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)


def report(name, got, want, atol, rtol=0.0):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    tol = atol + rtol * (float(np.max(np.abs(want))) if want.size else 0.0)
    ok = got.shape == want.shape and err <= tol
    print(f"[check] {name}: max |onnx - torch| = {err:.3g} ({'ok' if ok else 'TOO LARGE'}, tolerance {tol:.3g})")
    return ok


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def manifest(args, side, scales, biases, p0_norm, num_prompts):
    return wedetect_manifest(
        name=os.path.basename(os.path.normpath(args.out)),
        description=(f"WeDetect-Uni {args.size.capitalize()} proposals ({side}x{side}) with the WeDetect "
                     f"{args.size.capitalize()} XLM-R text tower; objectness = "
                     f"{'prompt 0' if args.objectness == 'first' else f'max over {num_prompts} prompts'} "
                     f"(|p0| = {p0_norm:.3f})"),
        license_text="GPL-3.0 (WeDetect, WeChatCV); XLM-RoBERTa: MIT",
        embedding_dim=EMBED_DIM, side=side, scales=scales, biases=biases)

def main(argv=None):
    ap = argparse.ArgumentParser(description="Export WeDetect-Uni as a Spotter model package")
    ap.add_argument("--wedetect-repo", required=True, help="WeDetect checkout (with wedetect_anything/)")
    ap.add_argument("--uni-checkpoint", required=True, help="wedetect_{base,large}_uni.pth (image tower)")
    ap.add_argument("--text-checkpoint", required=True, help="wedetect_{base,large}.pth (text tower)")
    ap.add_argument("--size", choices=sorted(SIZES), required=True)
    ap.add_argument("--out", required=True, help="package folder, e.g. exported_onnx/wedetect-uni-base")
    ap.add_argument("--objectness", choices=["first", "max"], default="first",
                    help="objectness from prompt 0 (default) or the max over all prompts (infer_anything.py)")
    ap.add_argument("--skip-checks", action="store_true", help="do not run ONNX Runtime against PyTorch")
    args = ap.parse_args(argv)

    side, xlmr_name = SIZES[args.size]
    for ckpt in (args.uni_checkpoint, args.text_checkpoint):
        other = "large" if args.size == "base" else "base"
        if other in os.path.basename(ckpt):
            print(f"WARNING: --size {args.size} but {ckpt} looks like a {other} checkpoint")
    xlmr_dir = os.path.join(args.wedetect_repo, xlmr_name)
    os.makedirs(args.out, exist_ok=True)
    torch.set_grad_enabled(False)
    ref = import_reference(args.wedetect_repo)

    # tokenizer first: cheap, and the text checks need it
    tokenizer = write_tokenizer(xlmr_dir, os.path.join(args.out, "tokenizer.json"))

    image_graph, scales, biases, p0_norm, num_prompts = build_image_graph(ref, args, side)
    image_path = os.path.join(args.out, "image.onnx")
    batch_axis = {0: "batch"}
    onnx_export(image_graph, (torch.zeros(2, 3, side, side),), image_path, ["pixels"],
                ["boxes", "objectness", "embeddings", "levels"],
                {"pixels": batch_axis, "boxes": batch_axis, "objectness": batch_axis,
                 "embeddings": batch_axis, "levels": batch_axis})

    text_graph = build_text_graph(xlmr_dir, args.text_checkpoint)
    text_path = os.path.join(args.out, "text.onnx")
    enc = tokenizer.encode_batch(CHECK_TEXTS[:4])
    L = max(len(e.ids) for e in enc)
    ids = torch.ones(len(enc), L, dtype=torch.int64)
    mask = torch.zeros(len(enc), L, dtype=torch.int64)
    for k, e in enumerate(enc):
        ids[k, :len(e.ids)] = torch.tensor(e.ids)
        mask[k, :len(e.ids)] = 1
    onnx_export(text_graph, (ids, mask), text_path, ["input_ids", "attention_mask"], ["text_embeddings"],
                {"input_ids": {0: "num_texts", 1: "seq_len"}, "attention_mask": {0: "num_texts", 1: "seq_len"},
                 "text_embeddings": {0: "num_texts"}})

    with open(os.path.join(args.out, "model.json"), "w", encoding="utf-8") as f:
        json.dump(manifest(args, side, scales, biases, p0_norm, num_prompts), f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"[manifest] {os.path.join(args.out, 'model.json')}")

    if args.skip_checks:
        return 0
    import onnxruntime as ort

    ok = True
    sess = ort.InferenceSession(image_path, providers=["CPUExecutionProvider"])
    x1 = test_image(args.wedetect_repo, side)
    x2 = np.concatenate([x1, x1[:, :, ::-1].copy()])  # batch 2: the image and its vertical flip
    for x in (x1, x2):
        got = sess.run(None, {"pixels": x})
        want = [t.numpy() for t in image_graph(torch.from_numpy(x))]
        b = x.shape[0]
        ok &= report(f"boxes (batch {b})", got[0], want[0], 0.01, 1e-4)
        ok &= report(f"objectness (batch {b})", got[1], want[1], 1e-3)
        ok &= report(f"embeddings (batch {b})", got[2], want[2], 1e-3, 1e-3)
        ok &= bool(got[3].dtype == np.int64 and np.array_equal(got[3], want[3]))
    obj = got[1][0]
    print(f"[check] objectness on the test image: max {obj.max():.3f}, {(obj >= 0.1).sum()} of {obj.size} >= 0.1")

    tsess = ort.InferenceSession(text_path, providers=["CPUExecutionProvider"])
    (t_onnx,) = tsess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    ok &= report("text_embeddings", t_onnx, text_graph(ids, mask).numpy(), 1e-4)
    # padding must not change a text's embedding (XLM-R derives positions from ids != 1)
    alone = tokenizer.encode(CHECK_TEXTS[0]).ids
    (t_alone,) = tsess.run(None, {"input_ids": np.array([alone], np.int64),
                                  "attention_mask": np.ones((1, len(alone)), np.int64)})
    ok &= report("text padding invariance", t_alone[0], t_onnx[0], 1e-4)
    if not ok:
        sys.exit("checks failed")
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
