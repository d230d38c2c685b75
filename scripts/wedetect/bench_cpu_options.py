#!/usr/bin/env python3
"""What makes CPU inference of a WeDetect-Uni image graph faster, and what int8 would cost.

On one package (the real architecture: a real export, or random weights from
random_checkpoints.py) and a folder of photos, in one run (ratios are the figures to read; the
machine is noisy):

1. ONNX Runtime settings, each against the baseline Spotter uses (graph optimisation "all",
   intra-op threads = cores, sequential execution, batch 1): threads, optimisation level,
   parallel execution, batch 2 and 4, IO binding. Each row gives images/s, the ratio to the baseline and the
   largest output difference from the baseline (outputs must stay within float tolerance).
2. An int8 image graph (onnxruntime.quantization, static QDQ, per-channel weights, calibrated on
   --calibrate photos that are not measured): images/s, and agreement with the f32 graph after
   Spotter's post-processing (as scripts/reference_pipeline.py writes it out) (objectness >= threshold, class-agnostic NMS, top-k of the
   manifest): share of f32 proposals with an int8 proposal at IoU >= 0.9, objectness and
   embedding (cosine) differences of those pairs.

    python scripts/wedetect/bench_cpu_options.py --package exported_onnx/wedetect-uni-base-random \\
        --photos DIR [--count 8] [--calibrate 8] [--out results.json]

Cost on 2 cores (Base, measured): 5 min, 0.55 GB of temporary files (the int8 graph and its
pre-processed input).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reference_pipeline import iou_one_to_many, letterbox, load_rgb, select_proposals, to_tensor  # noqa: E402


def session(path, threads=None, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, parallel=False):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    if threads:
        so.intra_op_num_threads = threads
    if parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.inter_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bound_runner(sess, batch):
    """A run function with IO binding: the input bound in place, the outputs written into
    preallocated buffers (no output copies)."""
    name = sess.get_inputs()[0].name
    probe = sess.run(None, {name: np.zeros((batch,) + tuple(sess.get_inputs()[0].shape[1:]), np.float32)})
    buffers = [ort.OrtValue.ortvalue_from_numpy(np.empty_like(o)) for o in probe]
    binding = sess.io_binding()
    for out, buf in zip(sess.get_outputs(), buffers):
        binding.bind_ortvalue_output(out.name, buf)

    def run(x):
        binding.bind_cpu_input(name, np.ascontiguousarray(x))
        sess.run_with_iobinding(binding)
        return [b.numpy() for b in buffers]

    return run


def run_all(sess, inputs, batch, io_binding=False):
    """images/s and the outputs (boxes, objectness, embeddings) per image."""
    name = sess.get_inputs()[0].name
    if io_binding:
        bound = bound_runner(sess, batch)
        run = lambda x: [o.copy() for o in bound(x)]  # noqa: E731  (copies only to keep results)
    else:
        run = lambda x: sess.run(None, {name: x})  # noqa: E731
    run(inputs[:batch])  # warm-up
    outs = []
    start = time.perf_counter()
    for i in range(0, len(inputs), batch):
        got = run(inputs[i:i + batch])
        for k in range(got[0].shape[0]):
            outs.append([got[0][k], got[1][k].reshape(-1), got[2][k]])
    elapsed = time.perf_counter() - start
    return len(inputs) / elapsed, outs


def agreement(f32_outs, int8_outs, params):
    """Spotter's selection (reference_pipeline.select_proposals) on both graphs' outputs; each
    f32 proposal matched to the int8 proposal it overlaps most (each used once), kept when
    IoU >= 0.9."""
    matched = total = 0
    obj_diffs, cosines = [], []
    select = lambda b, o: select_proposals(b, o, params["objectness_threshold"], params["nms_iou"],  # noqa: E731
                                           params["max_per_image"])[0]
    for (b, o, e), (qb, qo, qe) in zip(f32_outs, int8_outs):
        keep, qkeep = select(b, o), select(qb, qo)
        total += len(keep)
        free = list(qkeep)
        for i in keep:
            if not free:
                break
            overlaps = iou_one_to_many(b[i], qb[free])
            best = int(np.argmax(overlaps))
            if overlaps[best] < 0.9:
                continue
            j = free.pop(best)
            matched += 1
            obj_diffs.append(abs(float(o[i]) - float(qo[j])))
            cosines.append(float(np.dot(e[i], qe[j]) / (np.linalg.norm(e[i]) * np.linalg.norm(qe[j]) + 1e-12)))
    return {"f32_proposals": total, "matched_iou_0.9": matched,
            "share": matched / total if total else 0.0,
            "objectness_mean_abs_diff": float(np.mean(obj_diffs)) if obj_diffs else None,
            "objectness_max_abs_diff": float(np.max(obj_diffs)) if obj_diffs else None,
            "embedding_min_cosine": float(np.min(cosines)) if cosines else None,
            "embedding_mean_cosine": float(np.mean(cosines)) if cosines else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--package", required=True)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--count", type=int, default=8, help="photos measured (default 8)")
    ap.add_argument("--calibrate", type=int, default=8, help="other photos for int8 calibration (default 8)")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()

    with open(os.path.join(args.package, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    graph = os.path.join(args.package, manifest["image"]["graph"])
    files = sorted(os.path.join(root, n) for root, _, names in os.walk(args.photos) for n in names
                   if n.lower().endswith((".jpg", ".jpeg", ".png")))
    if len(files) < args.count + args.calibrate:
        sys.exit(f"{args.photos}: {len(files)} photos, need {args.count + args.calibrate}")
    def tensor(path):  # Spotter's own pixel pipeline, as reference_pipeline.py writes it out
        return to_tensor(letterbox(load_rgb(path), manifest)[0], manifest)

    inputs = np.stack([tensor(p) for p in files[:args.count]])
    calibration = [tensor(p) for p in files[args.count:args.count + args.calibrate]]
    cores = os.cpu_count() or 1

    rows = []
    base_rate, base_outs = run_all(session(graph, threads=cores), inputs, 1)

    def row(label, rate, outs):
        diff = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(outs, base_outs))
        box = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(outs, base_outs))
        rows.append({"setting": label, "images_per_s": rate, "ratio": rate / base_rate,
                     "max_objectness_diff": diff, "max_box_diff_px": box})
        print(f"| {label} | {rate:.3f} | {rate / base_rate:.2f} | {diff:.2g} | {box:.2g} |", flush=True)

    print("| setting | images/s | vs baseline | max objectness diff | max box diff (px) |")
    print("|---|---:|---:|---:|---:|")
    row(f"baseline: optimisation all, {cores} threads, sequential, batch 1", base_rate, base_outs)
    for label, kwargs, batch in [
        ("1 thread", dict(threads=1), 1),
        ("optimisation basic", dict(threads=cores, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC), 1),
        ("optimisation extended", dict(threads=cores, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED), 1),
        ("optimisation off", dict(threads=cores, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL), 1),
        ("parallel execution (2 inter-op threads)", dict(threads=cores, parallel=True), 1),
        ("batch 2", dict(threads=cores), 2),
        ("batch 4", dict(threads=cores), 4),
    ]:
        rate, outs = run_all(session(graph, **kwargs), inputs, batch)
        row(label, rate, outs)
    rate, outs = run_all(session(graph, threads=cores), inputs, 1, io_binding=True)
    row("IO binding (input in place, preallocated outputs)", rate, outs)

    result = {"package": args.package, "photos": args.count, "cores": cores, "ort": ort.__version__, "settings": rows}
    if not args.skip_int8:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter([{"pixels": x[None]} for x in calibration])

            def get_next(self):
                return next(self.items, None)

        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.package))) as tmp:
            pre = os.path.join(tmp, "pre.onnx")
            q = os.path.join(tmp, "image.int8.onnx")
            started = time.perf_counter()
            quant_pre_process(graph, pre, skip_symbolic_shape=True)
            quantize_static(pre, q, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
            quant_s = time.perf_counter() - started
            rate, outs = run_all(session(q, threads=cores), inputs, 1)
            agree = agreement(base_outs, outs, manifest["proposals"])
            result["int8"] = {"images_per_s": rate, "ratio": rate / base_rate, "quantize_s": quant_s,
                              "size_mb": os.path.getsize(q) / 1e6, "f32_size_mb": os.path.getsize(graph) / 1e6,
                              "agreement": agree}
            print(f"\nint8 (static QDQ, per-channel, {args.calibrate} calibration photos, {quant_s:.0f} s to make): "
                  f"{rate:.3f} images/s = {rate / base_rate:.2f}x f32; {os.path.getsize(q) / 1e6:.0f} MB vs "
                  f"{os.path.getsize(graph) / 1e6:.0f} MB; top-k agreement {agree}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
