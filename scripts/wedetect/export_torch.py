"""The PyTorch half of export_wedetect_uni.py: the reference classes of a WeDetect checkout
wrapped into Spotter's image and text graphs, checkpoint loading, ONNX export and the ONNX
Runtime vs PyTorch checks. Imported only after the cheap checks (files, tokenizer) passed."""

import importlib.util
import inspect
import os
import pickle
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

from package import STRIDES  # noqa: E402  (scripts/wedetect/package.py)

OPSET = 17
EMBED_DIM = 768
# exp(logit_scale) / bias of the Base-Uni checkpoint as hard-coded in the reference inference;
# only used to warn when the checkpoint read here disagrees.
BASE_UNI_REFERENCE = ([0.0609, 0.1997, 0.2794], [-12.315, -10.934, -9.574])
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


class _Placeholder:
    """Stands in for a pickled training-time object (an mmengine message hub, a history
    buffer...) whose package is not installed; checkpoints keep tensors in plain dicts."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class _TolerantUnpickler(pickle.Unpickler):
    stubbed = set()

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ModuleNotFoundError, AttributeError):
            if module.split(".")[0] in ("torch", "numpy", "collections", "builtins"):
                raise
            _TolerantUnpickler.stubbed.add(f"{module}.{name}")
            return _Placeholder


class _TolerantPickle:
    """A pickle module for torch.load whose Unpickler tolerates missing training packages."""

    Unpickler = _TolerantUnpickler
    load = pickle.load
    loads = pickle.loads
    dump = pickle.dump
    dumps = pickle.dumps
    __name__ = "pickle"


def load_state_dict(path):
    """The tensors of a checkpoint (its `state_dict` when it has one). Checkpoints saved by
    mmengine pickle training objects too; when their package is not installed those objects
    are replaced by placeholders (the tensors are all that is used) and named."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        print(f"[checkpoint] {path} pickles objects of {e.name!r}, which is not installed; "
              "loading its tensors without them")
        sd = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TolerantPickle)
        if _TolerantUnpickler.stubbed:
            print(f"[checkpoint] not loaded (training metadata): {sorted(_TolerantUnpickler.stubbed)}")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        sys.exit(f"{path}: not a readable PyTorch checkpoint ({e}); a truncated download? "
                 "Compare its size with the published file.")
    if not isinstance(sd, dict):
        sys.exit(f"{path}: a {type(sd).__name__}, expected a dict of tensors")
    sd = sd.get("state_dict", sd)
    if not isinstance(sd, dict) or not any(torch.is_tensor(v) for v in sd.values()):
        sys.exit(f"{path}: holds no tensors")
    return sd


def patch_reference_loading(ref):
    """Makes the reference loader read checkpoints with load_state_dict's rules: it calls
    torch.load itself, which fails on mmengine pickles without mmengine."""
    plain = ref.torch.load

    def tolerant(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)):
            return load_state_dict(path)
        return plain(path, *args, **kwargs)

    ref.torch = _TorchWithLoad(ref.torch, tolerant)


class _TorchWithLoad:
    def __init__(self, torch_module, load):
        self._torch = torch_module
        self.load = load

    def __getattr__(self, name):
        return getattr(self._torch, name)


# --------------------------------------------------------------------------------------------
# image tower
# --------------------------------------------------------------------------------------------
class ImageGraph(nn.Module):
    """The reference deploy model with Spotter's outputs: objectness by one of OBJECTNESS_RULES,
    plus a constant per-candidate level index."""

    def __init__(self, deploy, level_ids, objectness):
        super().__init__()
        self.deploy = deploy
        self.objectness = objectness
        self.register_buffer("level_ids", level_ids.view(1, -1), persistent=False)

    def forward(self, pixels):
        scores, bboxes, embeds = self.deploy(pixels)  # scores are sigmoid-ed already
        if self.objectness == "max":
            objectness = scores.max(dim=-1).values
        else:  # prompt0 / prompt0-normalised: the deploy model scores that one prompt only
            objectness = scores[..., 0]
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
    patch_reference_loading(ref)
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
    norms = prompts.norm(dim=-1)
    print(f"[image] {num_prompts} prompts x {prompt_dim}; |p0| = {p0_norm:.4f}; |p| over all prompts "
          f"{float(norms.min()):.4f}..{float(norms.max()):.4f}; objectness rule: {args.objectness}")
    print(f"[image] exp(logit_scale) = {scales}, bias = {biases}")
    if args.size == "base":
        ref_s, ref_b = BASE_UNI_REFERENCE
        if not (np.allclose(scales, ref_s, atol=5e-4) and np.allclose(biases, ref_b, atol=5e-3)):
            print(f"[image] WARNING: differs from the Base-Uni constants of the reference inference {ref_s}, {ref_b}")

    deploy = ref.VisionProposalDeployModel(detector, img_size=side).eval()
    if args.objectness == "prompt0":
        deploy.embeddings = deploy.embeddings[:1].clone()  # only prompt 0, raw (infer scripts)
    elif args.objectness == "prompt0-normalised":
        deploy.embeddings = F.normalize(deploy.embeddings[:1], dim=-1)  # as training scores it
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


def build_text_graph(xlmr_dir, text_checkpoint, vocab_size):
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
    rows = sd.get("model.embeddings.word_embeddings.weight")
    if rows is None or rows.shape[0] != vocab_size or cfg.vocab_size != vocab_size:
        sys.exit(f"text tower vocabulary: checkpoint {None if rows is None else rows.shape[0]} rows, "
                 f"{xlmr_dir}/config.json {cfg.vocab_size}, tokenizer {vocab_size}: they must agree "
                 "(wrong checkpoint or XLM-R folder for this --size?)")
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
    for written in (dst, dst + ".data"):  # onnx writes external data 0600; servers run as others
        if os.path.exists(written):
            os.chmod(written, 0o644)


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


