#!/usr/bin/env python3
"""Random-weight WeDetect checkpoints in the published layouts, built from a WeDetect checkout's
own classes: what the export and the reference checks are tested with where the real weights
cannot be downloaded. Their scores mean nothing; their shapes, key layouts and costs are real.

- `wedetect_{size}_uni.pth`: a flat dict (no `state_dict` wrapper) in mmdet key layout
  (`backbone.image_model.model.*`, `bbox_head.head_module.{cls,reg}_preds.i.{0,1}.{conv,bn}.*`,
  `.i.2.*`, `cls_contrasts.*`, `embeddings` 256x768), plus the 4 ConvNeXt classifier keys
  mmdet's backbone carries, which the proposal model ignores.
- `wedetect_{size}.pth`: `{"state_dict": {"backbone.text_model.model.*", "backbone.text_model.head.*"},
  "meta": ...}`, XLM-R of the checkout's config with random weights; `meta` pickles an object of
  a module named `mmengine.logging.history_buffer`, as mmengine checkpoints do, so that loading
  without mmengine is exercised.

Calibration (so that the post-processing sees realistic counts): exp(logit_scale) per level is
set to the Base-Uni constants; prompt 0 is scaled so that its logits on the calibration image
have a standard deviation of 2 (clear winners, as a trained prompt gives), prompts 1..255 are
shrunk to 0.1x so that prompt 0 dominates, as after training; each level's bias is set so that
about --pass-rate of the candidates of the calibration image pass objectness 0.1.

    python scripts/wedetect/random_checkpoints.py --wedetect-repo W --size base --out DIR [--image photo.jpg]

Cost on 2 cores: Base 1.5 GB of files, 15 s; Large 3.2 GB.
"""

import argparse
import math
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BASE_UNI_SCALES = [0.0609, 0.1997, 0.2794]
SIDES = {"base": 640, "large": 1280}


def mmdet_head_key(key):
    """Plain-module head key -> the mmdet key the reference loader maps back to it."""
    parts = key.split(".")
    # bbox_head.{cls,reg}_preds.<level>.<index>.<param>
    if parts[1] in ("cls_preds", "reg_preds") and len(parts) >= 5:
        index = {"0": "0.conv", "1": "0.bn", "3": "1.conv", "4": "1.bn", "6": "2"}[parts[3]]
        parts = parts[:3] + index.split(".") + parts[4:]
    return "bbox_head.head_module." + ".".join(parts[1:])


def calibration_image(path, side):
    from PIL import Image

    if path:
        img = Image.open(path).convert("RGB")
    else:
        rng = np.random.default_rng(0)
        img = Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8))
    img = img.resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(img, np.float32).transpose(2, 0, 1)[None] / np.float32(255)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--wedetect-repo", required=True)
    ap.add_argument("--size", choices=sorted(SIDES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--image", help="calibration photo (default: noise)")
    ap.add_argument("--pass-rate", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from export_torch import import_reference
    from transformers import AutoConfig, XLMRobertaModel

    torch.manual_seed(args.seed)
    torch.set_grad_enabled(False)
    ref = import_reference(args.wedetect_repo)
    os.makedirs(args.out, exist_ok=True)
    side = SIDES[args.size]

    detector = ref.SimpleYOLOWorldProposalDetector(args.size, prompt_dim=768, num_prompts=256).eval()
    for i, contrast in enumerate(detector.bbox_head.cls_contrasts):
        contrast.logit_scale.fill_(math.log(BASE_UNI_SCALES[i]))
    detector.embeddings[1:] *= 0.1
    deploy = ref.VisionProposalDeployModel(detector, img_size=side).eval()
    deploy.embeddings = detector.embeddings.data[:1].clone()
    x = torch.from_numpy(calibration_image(args.image, side))
    counts = [(side // s) ** 2 for s in (8, 16, 32)]
    scores, _, embeds = deploy(x)  # bias 0: logit = scale * <e, p0>
    logits = torch.logit(scores[0, :, 0].clamp(1e-7, 1 - 1e-7))
    # spread prompt 0's logits (std 2) so that objectness has clear winners, as trained prompts do
    spread = 2.0 / float(logits.std())
    detector.embeddings[0] *= spread
    logits = logits * spread
    start = 0
    for i, n in enumerate(counts):
        q = float(torch.quantile(logits[start:start + n], 1 - args.pass_rate))
        detector.bbox_head.cls_contrasts[i].bias.fill_(math.log(0.1 / 0.9) - q)
        start += n

    uni = {}
    for key, value in detector.state_dict().items():
        if key.startswith("backbone."):
            uni["backbone.image_model.model." + key[len("backbone."):]] = value
        elif key.startswith("bbox_head."):
            uni[mmdet_head_key(key)] = value
        else:
            uni[key] = value
    dims = ref.ConvNeXt.DIMS[args.size]
    uni["backbone.image_model.model.norm.weight"] = torch.ones(dims[-1])
    uni["backbone.image_model.model.norm.bias"] = torch.zeros(dims[-1])
    uni["backbone.image_model.model.head.weight"] = torch.zeros(1000, dims[-1])
    uni["backbone.image_model.model.head.bias"] = torch.zeros(1000)
    uni_path = os.path.join(args.out, f"wedetect_{args.size}_uni.pth")
    torch.save(uni, uni_path)

    xlmr_dir = os.path.join(args.wedetect_repo, f"xlm-roberta-{args.size}")
    cfg = AutoConfig.from_pretrained(xlmr_dir)
    xlmr = XLMRobertaModel(cfg).eval()
    head = torch.nn.Linear(cfg.hidden_size, 768)
    text = {"backbone.text_model.model." + k: v for k, v in xlmr.state_dict().items()}
    text.update({"backbone.text_model.head." + k: v for k, v in head.state_dict().items()})
    # an mmengine-like training object in `meta`, pickled by reference to its module
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self.log = [1.0, 2.0]

    HistoryBuffer.__module__ = module.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["mmengine.logging.history_buffer"] = module
    text_path = os.path.join(args.out, f"wedetect_{args.size}.pth")
    torch.save({"state_dict": text, "meta": {"message_hub": {"loss": HistoryBuffer()}}}, text_path)
    for name in ("mmengine.logging.history_buffer", "mmengine.logging", "mmengine"):
        del sys.modules[name]
    print(f"wrote {uni_path} ({os.path.getsize(uni_path) / 1e6:.0f} MB), {text_path} "
          f"({os.path.getsize(text_path) / 1e6:.0f} MB); biases "
          f"{[round(float(c.bias), 3) for c in detector.bbox_head.cls_contrasts]}")


if __name__ == "__main__":
    main()
