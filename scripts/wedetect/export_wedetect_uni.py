#!/usr/bin/env python3
"""Export WeDetect-Uni (image tower) + the WeDetect text tower as a Spotter model package.

    python scripts/wedetect/export_wedetect_uni.py \\
        --wedetect-repo ../WeDetect \\
        --uni-checkpoint checkpoints/wedetect_base_uni.pth \\
        --text-checkpoint checkpoints/wedetect_base.pth \\
        --size base --out exported_onnx/wedetect-uni-base

Writes image.onnx, text.onnx (+ text.onnx.data for large), tokenizer.json and model.json as
docs/model-contract.md describes, all mode 0644. Needs torch, transformers (4.57 or 5.x),
sentencepiece, tokenizers, onnx and onnxruntime, and a full WeDetect checkout recent enough to
have wedetect_anything/models.py: the graphs wrap its model classes, so the towers are exactly
the reference ones. Checkpoints that pickle mmengine objects load without mmengine.

Image graph  pixels [B,3,S,S] float32, RGB / 255, letterboxed (S = 640 base, 1280 large)
             -> boxes [B,N,4] (xyxy, letterbox pixels), objectness [B,N],
                embeddings [B,N,768] (after the per-level BatchNorm, not normalised),
                levels [B,N] int64 (0/1/2 = strides 8/16/32)
             objectness = sigmoid(exp(logit_scale_l) * <BN_l(e), p> + bias_l) by --objectness:
               max                 max over all learned prompts p, raw: the rule of
                                   eval_recall/eval_recall.py, with which the published
                                   AR@100 66.9 / AR@300 69.6 were measured (it scores all 256
                                   prompts; NMS there is per prompt, Spotter's is class-agnostic)
               prompt0             prompt 0 only, raw (generate_proposal.py, the deploy model)
               prompt0-normalised  prompt 0 L2-normalised, as training scores it
             The rule and |p0| are recorded in model.json (image.objectness).
Text graph   input_ids, attention_mask int64 [K,L] -> text_embeddings [K,768]:
             XLM-R hidden state of <s> -> Linear -> L2 norm (pad id 1).

Order of work: every input file is checked first, then the tokenizer (scripts/wedetect/
xlmr_tokenizer.py: the checkout's own tokenizer.json, or its sentencepiece.bpe.model converted,
proven id for id against the sentencepiece library on 2,000 strings, vocabulary 250,002), then
the graphs; afterwards ONNX Runtime is compared with PyTorch (batch 1 and 2, texts, padding
invariance). Everything is written to a temporary folder beside --out and moved into place only
when every step passed: a failed export leaves no package behind. Exit status 1 with the reason
on any failure.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xlmr_tokenizer  # noqa: E402
from package import wedetect_manifest  # noqa: E402

SIZES = {  # input side, XLM-R folder inside the WeDetect checkout
    "base": (640, "xlm-roberta-base"),
    "large": (1280, "xlm-roberta-large"),
}
EMBED_DIM = 768  # WeDetect's embedding space (the text head's output)
OBJECTNESS_RULES = {"max": "max_over_prompts", "prompt0": "prompt0", "prompt0-normalised": "prompt0_normalised"}
CHECK_TEXTS = ["cat", "car", "a person riding a bicycle", "猫", "一只黑色的狗", "Traffic Light",
               "  two   spaces ", "東京タワー", "🙂 emoji", "x" * 40]


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def check_inputs(args, xlmr_dir):
    """Every file the export reads, checked before any work; all problems reported at once."""
    problems = []
    models = os.path.join(args.wedetect_repo, "wedetect_anything", "models.py")
    if not os.path.isfile(models):
        problems.append(f"{models} not found: --wedetect-repo must be a WeDetect checkout with wedetect_anything/ "
                        "(added to the repository in 2026)")
    for label, path in (("--uni-checkpoint", args.uni_checkpoint), ("--text-checkpoint", args.text_checkpoint)):
        if not os.path.isfile(path):
            problems.append(f"{label} {path} not found")
        elif os.path.getsize(path) < 1024 * 1024:
            problems.append(f"{label} {path} is {os.path.getsize(path)} bytes: not a checkpoint (a Git LFS pointer "
                            "or a failed download?)")
    if not os.path.isfile(os.path.join(xlmr_dir, "config.json")):
        problems.append(f"{xlmr_dir}/config.json not found (the XLM-R folder of the checkout for --size {args.size})")
    if problems:
        fail("cannot export:\n  " + "\n  ".join(problems))
    for ckpt in (args.uni_checkpoint, args.text_checkpoint):
        other = "large" if args.size == "base" else "base"
        if other in os.path.basename(ckpt):
            print(f"WARNING: --size {args.size} but {ckpt} looks like a {other} checkpoint")


def manifest(args, side, scales, biases, p0_norm, num_prompts):
    rule = {"max": f"max over {num_prompts} prompts", "prompt0": "prompt 0",
            "prompt0-normalised": "prompt 0 normalised"}[args.objectness]
    m = wedetect_manifest(
        name=os.path.basename(os.path.normpath(args.out)),
        description=(f"WeDetect-Uni {args.size.capitalize()} proposals ({side}x{side}) with the WeDetect "
                     f"{args.size.capitalize()} XLM-R text tower; objectness = {rule} (|p0| = {p0_norm:.3f})"),
        license_text="GPL-3.0 (WeDetect, WeChatCV); XLM-RoBERTa: MIT",
        embedding_dim=EMBED_DIM, side=side, scales=scales, biases=biases)
    m["image"]["objectness"] = {"rule": OBJECTNESS_RULES[args.objectness], "prompts": num_prompts,
                                "prompt0_norm": round(p0_norm, 6)}
    return m


def install(staging, out):
    """Moves the finished package into place (replacing an older one only now)."""
    for name in os.listdir(staging):
        os.chmod(os.path.join(staging, name), 0o644)
    os.chmod(staging, 0o755)
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)), prefix=".old-")
        os.rename(out, os.path.join(old, "package"))
    os.rename(staging, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export WeDetect-Uni as a Spotter model package",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--wedetect-repo", required=True, help="a full WeDetect checkout (with wedetect_anything/)")
    ap.add_argument("--uni-checkpoint", required=True, help="wedetect_{base,large}_uni.pth (image tower)")
    ap.add_argument("--text-checkpoint", required=True, help="wedetect_{base,large}.pth (text tower)")
    ap.add_argument("--size", choices=sorted(SIZES), required=True)
    ap.add_argument("--out", required=True, help="package folder, e.g. exported_onnx/wedetect-uni-base")
    ap.add_argument("--objectness", choices=sorted(OBJECTNESS_RULES), default="max",
                    help="objectness rule (default max: the published AR numbers' rule; see below)")
    ap.add_argument("--skip-checks", action="store_true", help="do not run ONNX Runtime against PyTorch")
    args = ap.parse_args(argv)

    side, xlmr_name = SIZES[args.size]
    xlmr_dir = os.path.join(args.wedetect_repo, xlmr_name)
    check_inputs(args, xlmr_dir)
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.normpath(args.out))}.partial-")
    try:
        status = export(args, side, xlmr_dir, staging)
        if status == 0:
            install(staging, args.out)
            print(f"done: {args.out}")
        return status
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def export(args, side, xlmr_dir, out):
    # tokenizer first: cheap, and nothing else is worth doing with a wrong one
    try:
        tokenizer, line = xlmr_tokenizer.write(xlmr_dir, os.path.join(out, "tokenizer.json"))
    except xlmr_tokenizer.TokenizerError as e:
        fail(f"tokenizer: {e}")
    print(f"[tokenizer] {line}")

    import numpy as np
    import export_torch as et  # torch and the reference classes, only now
    import torch

    torch.set_grad_enabled(False)
    ref = et.import_reference(args.wedetect_repo)
    image_graph, scales, biases, p0_norm, num_prompts = et.build_image_graph(ref, args, side)
    image_path = os.path.join(out, "image.onnx")
    batch_axis = {0: "batch"}
    et.onnx_export(image_graph, (torch.zeros(2, 3, side, side),), image_path, ["pixels"],
                   ["boxes", "objectness", "embeddings", "levels"],
                   {"pixels": batch_axis, "boxes": batch_axis, "objectness": batch_axis,
                    "embeddings": batch_axis, "levels": batch_axis})

    text_graph = et.build_text_graph(xlmr_dir, args.text_checkpoint, tokenizer.get_vocab_size())
    text_path = os.path.join(out, "text.onnx")
    enc = tokenizer.encode_batch(CHECK_TEXTS[:4])
    L = max(len(e.ids) for e in enc)
    ids = torch.ones(len(enc), L, dtype=torch.int64)
    mask = torch.zeros(len(enc), L, dtype=torch.int64)
    for k, e in enumerate(enc):
        ids[k, :len(e.ids)] = torch.tensor(e.ids)
        mask[k, :len(e.ids)] = 1
    et.onnx_export(text_graph, (ids, mask), text_path, ["input_ids", "attention_mask"], ["text_embeddings"],
                   {"input_ids": {0: "num_texts", 1: "seq_len"}, "attention_mask": {0: "num_texts", 1: "seq_len"},
                    "text_embeddings": {0: "num_texts"}})

    with open(os.path.join(out, "model.json"), "w", encoding="utf-8") as f:
        json.dump(manifest(args, side, scales, biases, p0_norm, num_prompts), f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"[manifest] objectness rule {args.objectness}, |p0| = {p0_norm:.4f}")

    if args.skip_checks:
        return 0
    import onnxruntime as ort

    ok = True
    sess = ort.InferenceSession(image_path, providers=["CPUExecutionProvider"])
    x1 = et.test_image(args.wedetect_repo, side)
    x2 = np.concatenate([x1, x1[:, :, ::-1].copy()])  # batch 2: the image and its vertical flip
    for x in (x1, x2):
        got = sess.run(None, {"pixels": x})
        want = [t.numpy() for t in image_graph(torch.from_numpy(x))]
        b = x.shape[0]
        ok &= et.report(f"boxes (batch {b})", got[0], want[0], 0.01, 1e-4)
        ok &= et.report(f"objectness (batch {b})", got[1], want[1], 1e-3)
        ok &= et.report(f"embeddings (batch {b})", got[2], want[2], 1e-3, 1e-3)
        ok &= bool(got[3].dtype == np.int64 and np.array_equal(got[3], want[3]))
    obj = got[1][0]
    print(f"[check] objectness on the test image: max {obj.max():.3f}, {(obj >= 0.1).sum()} of {obj.size} >= 0.1")

    tsess = ort.InferenceSession(text_path, providers=["CPUExecutionProvider"])
    (t_onnx,) = tsess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    ok &= et.report("text_embeddings", t_onnx, text_graph(ids, mask).numpy(), 1e-4)
    # padding must not change a text's embedding (XLM-R derives positions from ids != 1)
    alone = tokenizer.encode(CHECK_TEXTS[0]).ids
    (t_alone,) = tsess.run(None, {"input_ids": np.array([alone], np.int64),
                                  "attention_mask": np.ones((1, len(alone)), np.int64)})
    ok &= et.report("text padding invariance", t_alone[0], t_onnx[0], 1e-4)
    if not ok:
        fail("ONNX Runtime and PyTorch disagree beyond the tolerances above; no package written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
