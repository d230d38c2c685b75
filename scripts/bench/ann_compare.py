#!/usr/bin/env python3
"""ANN engine comparison on vectors shaped like Spotter's: same vectors, same machine, one run.

Spotter scores a proposal by the inner product <q, v> of a query q = [t ; 1] (t the unit text
embedding) and a stored vector v = [s_l * e ; b_l] (e the image-side embedding, s_l and b_l the
scale and bias of its scoring level). This script generates such vectors, computes the exact
top-100 by inner product, and measures on each engine: build time, memory, recall@10/@100 and
single-thread queries/s at several search breadths.

Engines: exact scan (FAISS IndexFlatIP), Spotter's embedded HNSW (`spotter`:
examples/bench_vectors.rs, hnsw_rs graphs per level and norm band + exact re-ranking), Spotter's
quantised engine (`spotter-ivf`: per level and norm band, inverted lists of int8 codes under hnsw_rs
centroid graphs, re-ranked from fine codes; the default for new indexes), hnswlib (space='ip'),
FAISS IndexHNSWFlat (METRIC_INNER_PRODUCT), FAISS IndexIVFFlat (inner product, nlist ~ sqrt(N)),
and FAISS's quantised indexes on the same lists: IndexIVFScalarQuantizer (8-bit, `faiss-ivf-sq8`),
IndexIVFPQ (D/8 sub-quantisers of 8 bits, `faiss-ivf-pq`) and IndexHNSWSQ (8-bit, `faiss-hnsw-sq`),
and (only when asked: --engines ...,milvus) Spotter's Milvus engine: a collection on the Milvus
server at $SPOTTER_BENCH_MILVUS (default 127.0.0.1:19530; `scripts/milvus.sh start`) with HNSW
on inner product, measured through the same example (build it with --features milvus); its
queries are gRPC round trips and its memory is the server's (not measured here).

Datasets (see docs/ann-comparison.md for the assumptions):
  starter    384-d ConSE top-3 mixtures of 80 class directions, [12 * e ; -9] (constant norm)
  wedetect   768-d, 3 levels with WeDetect-Base's exp(logit_scale) and bias, embedding norms
             lognormal around 30 (an assumption: the real distribution is unknown here)
  random     384-d i.i.d. Gaussian vectors, [v ; -9], Gaussian queries (no structure)
  clustered  384-d Gaussian mixture of 1000 clusters, lognormal norms, [v ; -9]

Usage (creates and re-executes itself in the throwaway venv .cache/annvenv):
  python3 scripts/bench/ann_compare.py                       # 100k, all four datasets
  python3 scripts/bench/ann_compare.py --datasets starter --n 1000000 --engines exact,faiss-ivf
  python3 scripts/bench/ann_compare.py --report-only         # rebuild the markdown report

Raw results: .cache/bench/ann/<dataset>-<n>.json; report: .cache/bench/ann/report.md.
The Rust example must be built first: cargo build --release --example bench_vectors
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "annvenv"
REQUIREMENTS = ROOT / "scripts" / "bench" / "ann_requirements.txt"
OUT = ROOT / ".cache" / "bench" / "ann"
# $SPOTTER_BENCH_VECTORS: another build of the example (one with --features milvus, kept apart
# from the target folder that other builds overwrite).
SPOTTER_BIN = Path(os.environ.get("SPOTTER_BENCH_VECTORS", ROOT / "target" / "release" / "examples" / "bench_vectors"))
ALL_DATASETS = ["starter", "wedetect", "random", "clustered"]
ALL_ENGINES = ["exact", "spotter", "spotter-ivf", "hnswlib", "faiss-hnsw", "faiss-ivf",
               "faiss-ivf-sq8", "faiss-ivf-pq", "faiss-hnsw-sq"]
# Reported when present; run only when named in --engines (needs a Milvus server).
REPORTED_ENGINES = ALL_ENGINES + ["milvus", "milvus-ivf_flat", "milvus-ivf_sq8"]


def ensure_venv() -> None:
    """Re-executes this script with the venv's Python, creating the venv first if needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} from {REQUIREMENTS}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Datasets


def unit(x):
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def blend(centre, cos, rng):
    """Unit vectors whose cosine with their (unit) centre row is `cos` (per row)."""
    import numpy as np

    noise = rng.standard_normal(centre.shape, dtype=np.float32)
    noise -= (noise * centre).sum(1, keepdims=True) * centre  # orthogonal to the centre
    noise = unit(noise)
    cos = np.asarray(cos, dtype=np.float32).reshape(-1, 1)
    return (cos * centre + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def generate(name: str, n: int, nq: int, seed: int = 1):
    """Stored vectors (n, D+1) and queries (nq, D+1), float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chunk = 100_000
    if name == "starter":
        d = 384
        real = ROOT / ".cache" / "starter" / "class_embeddings.npy"
        if real.exists():  # the starter model's real MiniLM class-prompt embeddings
            classes = np.load(real).astype(np.float32)
        else:  # correlated like them: mean pairwise cosine ~0.4
            common = unit(rng.standard_normal(d, dtype=np.float32))
            classes = unit(0.63 * common + 0.77 * unit(rng.standard_normal((80, d), dtype=np.float32)))
        parts = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            # Top-3 class probabilities of a detector: a dominant class and two weaker ones.
            top = np.stack([rng.permutation(80)[:3] for _ in range(m)])
            p1 = rng.uniform(0.3, 0.95, m)
            p2 = rng.uniform(0.02, 1.0, m) * np.minimum(p1, 0.5)
            p3 = rng.uniform(0.0, 1.0, m) * p2
            w = np.stack([p1, p2, p3], 1).astype(np.float32)
            e = unit(np.einsum("mk,mkd->md", w, classes[top]))
            parts.append(np.hstack([12.0 * e, np.full((m, 1), -9.0, np.float32)]))
        base = np.vstack(parts)
        # Queries: a class prompt reworded (cosine ~0.85 with its class), or two classes mixed.
        c = rng.integers(0, 80, nq)
        t = blend(classes[c], rng.uniform(0.75, 0.95, nq), rng)
        mix = rng.random(nq) < 0.3
        t[mix] = unit(t[mix] + 0.6 * classes[rng.integers(0, 80, mix.sum())])
        queries = np.hstack([unit(t), np.ones((nq, 1), np.float32)])
    elif name == "wedetect":
        d = 768
        scale = np.array([0.0609, 0.1997, 0.2794], np.float32)  # exp(logit_scale) per level
        bias = np.array([-12.315, -10.934, -9.574], np.float32)
        concepts = unit(rng.standard_normal((1000, d), dtype=np.float32))
        parts = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            level = rng.integers(0, 3, m)
            e = blend(concepts[rng.integers(0, 1000, m)], rng.uniform(0.3, 0.8, m), rng)
            norms = rng.lognormal(np.log(30.0), 0.25, m).astype(np.float32)  # ASSUMPTION
            v = e * (scale[level] * norms)[:, None]
            parts.append(np.hstack([v, bias[level][:, None]]).astype(np.float32))
        base = np.vstack(parts)
        # Text queries: near a concept but across the modality gap (cosine 0.3-0.6).
        t = blend(concepts[rng.integers(0, 1000, nq)], rng.uniform(0.3, 0.6, nq), rng)
        queries = np.hstack([t, np.ones((nq, 1), np.float32)])
    elif name == "random":
        d = 384
        parts = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            v = rng.standard_normal((m, d), dtype=np.float32) * (12.0 / np.sqrt(d))
            parts.append(np.hstack([v, np.full((m, 1), -9.0, np.float32)]))
        base = np.vstack(parts)
        queries = np.hstack([unit(rng.standard_normal((nq, d), dtype=np.float32)), np.ones((nq, 1), np.float32)])
    elif name == "clustered":
        d = 384
        centres = unit(rng.standard_normal((1000, d), dtype=np.float32))
        spread = rng.uniform(0.5, 0.9, 1000)  # per-cluster tightness (cosine to the centre)
        parts = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            c = rng.integers(0, 1000, m)
            e = blend(centres[c], spread[c] + rng.uniform(-0.1, 0.1, m), rng)
            norms = rng.lognormal(np.log(12.0), 0.3, m).astype(np.float32)
            parts.append(np.hstack([e * norms[:, None], np.full((m, 1), -9.0, np.float32)]))
        base = np.vstack(parts)
        t = blend(centres[rng.integers(0, 1000, nq)], rng.uniform(0.4, 0.8, nq), rng)
        queries = np.hstack([t, np.ones((nq, 1), np.float32)])
    else:
        raise SystemExit(f"unknown dataset {name}")
    return np.ascontiguousarray(base, np.float32), np.ascontiguousarray(queries, np.float32)


def dataset(name: str, n: int, nq: int, threads: int):
    """Generates (or reuses) the dataset's .npy files and the exact top-100 by inner product."""
    import faiss
    import numpy as np

    folder = OUT / "data" / f"{name}-{n}-{nq}"
    files = {k: folder / f"{k}.npy" for k in ("base", "queries", "gt")}
    if all(f.exists() for f in files.values()):
        log(f"{name}-{n}: reusing {folder}")
        return files, {"reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    t = time.time()
    base, queries = generate(name, n, nq)
    gen_s = time.time() - t
    faiss.omp_set_num_threads(threads)
    t = time.time()
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    gt = np.empty((nq, 100), np.int64)
    for s in range(0, nq, 256):  # batched exact search
        _, gt[s : s + 256] = flat.search(queries[s : s + 256], 100)
    gt_s = time.time() - t
    np.save(files["base"], base)
    np.save(files["queries"], queries)
    np.save(files["gt"], gt)
    d = base.shape[1] - 1
    norms = np.linalg.norm(base[:, :d], axis=1)
    info = {
        "generate_s": gen_s,
        "ground_truth_s": gt_s,
        "embedding_norm": {q: float(np.quantile(norms, p)) for q, p in (("p1", 0.01), ("p50", 0.5), ("p99", 0.99))},
        "biases": sorted({float(b) for b in np.unique(base[:, d])}),
    }
    log(f"{name}-{n}: generated in {gen_s:.1f} s, ground truth in {gt_s:.1f} s; {info}")
    return files, info


# ----------------------------------------------------------------------------------------------
# Engines


def recall(got, gt, k: int) -> float:
    import numpy as np

    hits = sum(len(np.intersect1d(got[i, :k], gt[i, :k])) for i in range(len(gt)))
    return hits / (k * len(gt))


def run_exact(base, queries, gt, args):
    import faiss

    faiss.omp_set_num_threads(args.threads)
    r0 = rss_mib()
    t = time.time()
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    build = time.time() - t
    faiss.omp_set_num_threads(1)
    # One query at a time on one thread: what a server does per request.
    t = time.time()
    done = 0
    for i in range(len(queries)):
        index.search(queries[i : i + 1], 100)
        done += 1
        if done >= 20 and time.time() - t > args.max_seconds:
            break
    qps_one = done / (time.time() - t)
    # All queries in one call on one thread (BLAS matrix product; for reference only).
    t = time.time()
    _, got = index.search(queries, 100)
    qps_batch = len(queries) / (time.time() - t)
    return {
        "build_s": build,
        "rss_delta_mib": rss_mib() - r0,
        "index_mib": base.nbytes / 2**20,
        "qps_one_at_a_time": qps_one,
        "qps_batched": qps_batch,
        "results": [
            {"param": "exact", "k": k, "recall": recall(got, gt, k), "qps": qps_one} for k in args.k
        ],
    }


def run_spotter(files, args, engine="spotter-hnsw"):
    if not SPOTTER_BIN.exists():
        raise RuntimeError(f"{SPOTTER_BIN} missing: cargo build --release --example bench_vectors")
    # The quantised engine's breadth: lists per part = max(24, ef / 8), so ef up to 8192.
    efs = args.ef if engine == "spotter-hnsw" else [202, 512, 1024, 2048, 4096, 8192]
    cmd = [
        str(SPOTTER_BIN), "--vectors", str(files["base"]), "--queries", str(files["queries"]),
        "--ground-truth", str(files["gt"]), "--m", str(args.m), "--ef-construction", str(args.ef_construction),
        "--ef", ",".join(map(str, efs)), "--k", ",".join(map(str, args.k)),
        "--max-seconds", str(args.max_seconds), "--json", "--engine", engine,
    ]
    log("  " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["command"] = " ".join(cmd)
    for r in out["results"]:
        r["param"] = f"ef={r['ef']}"
    return out


def run_milvus(files, name, n, args):
    """Spotter's Milvus engine through bench_vectors --engine milvus://… (a fresh collection)."""
    address = os.environ.get("SPOTTER_BENCH_MILVUS", "127.0.0.1:19530")
    collection = args.milvus_collection or f"bench_{name}_{n}_{int(time.time())}"
    cmd = [
        str(SPOTTER_BIN), "--vectors", str(files["base"]), "--queries", str(files["queries"]),
        "--ground-truth", str(files["gt"]), "--m", str(args.m), "--ef-construction", str(args.ef_construction),
        "--ef", ",".join(map(str, args.ef)), "--k", ",".join(map(str, args.k)),
        "--max-seconds", str(args.max_seconds), "--json", "--engine",
        f"milvus://{address}/{collection}" + (f"?index={args.milvus_index}" if args.milvus_index else ""),
    ]
    log("  " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["command"] = " ".join(cmd)
    out["memory_note"] = "server-side, not measured"
    out.pop("peak_rss_mib", None)
    out.pop("rss_delta_mib", None)
    for r in out["results"]:
        r["param"] = f"ef={r['ef']}"
    return out


def run_hnswlib(base, queries, gt, args):
    import hnswlib

    n, dim = base.shape
    r0 = rss_mib()
    t = time.time()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=args.ef_construction, M=args.m, random_seed=100)
    index.add_items(base, num_threads=args.threads)
    build = time.time() - t
    delta = rss_mib() - r0
    with tempfile.TemporaryDirectory() as td:
        index.save_index(f"{td}/i.bin")
        size = os.path.getsize(f"{td}/i.bin") / 2**20
    results = []
    for ef in args.ef:
        index.set_ef(ef)  # hnswlib searches with max(ef, k)
        for k in args.k:
            t = time.time()
            got, _ = index.knn_query(queries, k=k, num_threads=1)
            qps = len(queries) / (time.time() - t)
            results.append({"param": f"ef={ef}", "ef": ef, "k": k, "recall": recall(got, gt, k), "qps": qps})
    return {"build_s": build, "rss_delta_mib": delta, "index_mib": size, "results": results}


def run_faiss_hnsw(base, queries, gt, args):
    import faiss

    faiss.omp_set_num_threads(args.threads)
    r0 = rss_mib()
    t = time.time()
    index = faiss.IndexHNSWFlat(base.shape[1], args.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    index.add(base)
    build = time.time() - t
    delta = rss_mib() - r0
    size = faiss.serialize_index(index).nbytes / 2**20
    faiss.omp_set_num_threads(1)
    results = []
    for ef in args.ef:
        index.hnsw.efSearch = ef
        results += faiss_sweep(index, queries, gt, args.k, "ef", ef)
    return {"build_s": build, "rss_delta_mib": delta, "index_mib": size, "results": results}


def faiss_sweep(index, queries, gt, ks, name, value):
    """Recall and single-thread queries/s of a FAISS index at its current setting, for each k."""
    rows = []
    for k in ks:
        t = time.time()
        _, got = index.search(queries, k)
        qps = len(queries) / (time.time() - t)
        rows.append({"param": f"{name}={value}", name: value, "k": k, "recall": recall(got, gt, k), "qps": qps})
    return rows


def run_faiss_ivf(base, queries, gt, args):
    """FAISS IndexIVFFlat (inner product, nlist ~ sqrt(N))."""
    return run_faiss_quantised(base, queries, gt, args, "ivf-flat")


def run_faiss_quantised(base, queries, gt, args, kind):
    """FAISS's IVF indexes (flat, SQ8, PQ with D/8 bytes per vector) and HNSW-SQ8, inner product."""
    import faiss
    import numpy as np

    n, dim = base.shape
    nlist = max(16, int(round(np.sqrt(n))))
    faiss.omp_set_num_threads(args.threads)
    r0 = rss_mib()
    t = time.time()
    if kind == "hnsw-sq":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, args.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.train(base[np.random.default_rng(0).choice(n, min(n, 100_000), replace=False)])
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        elif kind == "ivf-sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            m = next(m for m in (dim // 8, 96, 64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(base[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
    index.add(base)
    build = time.time() - t
    delta = rss_mib() - r0
    size = faiss.serialize_index(index).nbytes / 2**20
    faiss.omp_set_num_threads(1)
    results = []
    if kind == "hnsw-sq":
        for ef in args.ef:
            index.hnsw.efSearch = ef
            results += faiss_sweep(index, queries, gt, args.k, "ef", ef)
    else:
        for nprobe in args.nprobe:
            if nprobe <= nlist:
                index.nprobe = nprobe
                results += faiss_sweep(index, queries, gt, args.k, "nprobe", nprobe)
    return {"build_s": build, "rss_delta_mib": delta, "index_mib": size, "nlist": nlist, "results": results}


def estimated_build_s(engine: str, name: str, n: int) -> float | None:
    """Build time at n extrapolated (n log n) from the largest smaller run of the same dataset."""
    import math

    best = None
    for path in OUT.glob(f"{name}-*.json"):
        data = json.loads(path.read_text())
        e = data["engines"].get(engine, {})
        if "build_s" in e and data["n"] < n and (best is None or data["n"] > best[0]):
            best = (data["n"], e["build_s"])
    if best is None:
        return None
    m, s = best
    return s * (n / m) * math.log(n) / math.log(m)


def versions() -> dict:
    from importlib.metadata import version

    import faiss
    import numpy as np

    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    hnsw_rs = "?"
    lock = (ROOT / "Cargo.lock").read_text().split("[[package]]")
    for p in lock:
        if 'name = "hnsw_rs"' in p:
            hnsw_rs = p.split('version = "')[1].split('"')[0]
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
        "faiss_simd": faiss.get_compile_options(), "hnswlib": version("hnswlib"), "rustc": rustc,
        "hnsw_rs": hnsw_rs, "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def run_dataset(name: str, n: int, args) -> None:
    import numpy as np

    files, info = dataset(name, n, args.queries, args.threads)
    base = np.load(files["base"])
    queries = np.load(files["queries"])
    gt = np.load(files["gt"])
    path = OUT / f"{name}-{n}.json"
    data = json.loads(path.read_text()) if path.exists() else {"dataset": name, "n": n, "engines": {}}
    data.update({"dim": int(base.shape[1]), "queries": int(len(queries)), "versions": versions(),
                 "command": " ".join(sys.argv)})
    if not info.get("reused"):
        data["data"] = info
    for engine in args.engines:
        est = estimated_build_s(engine, name, n) if engine != "exact" else None
        if est is not None and est > args.max_build_s:
            why = f"skipped: estimated build {est:.0f} s > {args.max_build_s:.0f} s"
            log(f"{name}-{n} {engine}: {why}")
            data["engines"][engine] = {"skipped": why}
            path.write_text(json.dumps(data, indent=1))
            continue
        log(f"{name}-{n} {engine}: start")
        try:
            if engine == "exact":
                res = run_exact(base, queries, gt, args)
            elif engine == "spotter":
                res = run_spotter(files, args)
            elif engine == "spotter-ivf":
                res = run_spotter(files, args, "spotter-ivf")
            elif engine == "hnswlib":
                res = run_hnswlib(base, queries, gt, args)
            elif engine == "faiss-hnsw":
                res = run_faiss_hnsw(base, queries, gt, args)
            elif engine == "faiss-ivf":
                res = run_faiss_ivf(base, queries, gt, args)
            elif engine in ("faiss-ivf-sq8", "faiss-ivf-pq", "faiss-hnsw-sq"):
                res = run_faiss_quantised(base, queries, gt, args, engine.removeprefix("faiss-"))
            elif engine == "milvus":
                res = run_milvus(files, name, n, args)
            else:
                raise SystemExit(f"unknown engine {engine}")
        except Exception as e:  # keep the other engines' numbers
            log(f"{name}-{n} {engine}: FAILED {e}")
            res = {"failed": str(e)}
        key = engine
        if engine == "milvus" and args.milvus_index:
            key = "milvus-" + args.milvus_index.split("&")[0]
        data["engines"][key] = res
        if "build_s" in res:
            best = {}
            for r in res["results"]:
                best[r["k"]] = max(best.get(r["k"], 0), r["recall"])
            log(f"{name}-{n} {engine}: build {res['build_s']:.1f} s, best recall {best}")
        path.write_text(json.dumps(data, indent=1))
    import gc

    del base
    gc.collect()


# ----------------------------------------------------------------------------------------------
# Report


def first_reaching(results, k, target):
    """The fastest setting reaching `target` recall@k (None if none does)."""
    ok = [r for r in results if r["k"] == k and r["recall"] >= target]
    return max(ok, key=lambda r: r["qps"]) if ok else None


def report() -> str:
    files = sorted(OUT.glob("*.json"), key=lambda p: (json.loads(p.read_text())["n"], p.name))
    lines = ["# ANN comparison (generated by scripts/bench/ann_compare.py)", ""]
    for path in files:
        data = json.loads(path.read_text())
        eng = data["engines"]
        exact = eng.get("exact", {})
        exact_qps = exact.get("qps_one_at_a_time")
        lines.append(f"## {data['dataset']}, {data['n']:,} vectors of {data['dim']} floats, {data['queries']} queries")
        lines.append("")
        if "data" in data:
            lines.append(f"Embedding norms p1/p50/p99: {', '.join(f'{v:.2f}' for v in data['data']['embedding_norm'].values())}; biases {data['data']['biases']}.")
            lines.append("")
        lines.append("| engine | build s | memory MiB (RSS Δ / index) | notes |")
        lines.append("|---|---:|---:|---|")
        for name in REPORTED_ENGINES:
            e = eng.get(name)
            if e is None:
                continue
            if "build_s" not in e:
                lines.append(f"| {name} | | | {e.get('skipped') or e.get('failed')} |")
                continue
            size = e.get("index_mib")
            note = ""
            if name == "exact":
                note = f"{e['qps_one_at_a_time']:.1f} q/s one at a time, {e['qps_batched']:.1f} q/s batched (1 thread)"
            if name in ("spotter", "spotter-ivf"):
                note = f"{e['groups']} group(s); " if name == "spotter" else ""
                note += f"peak RSS {e['peak_rss_mib']:.0f} MiB incl. {e['input_mib']:.0f} MiB input"
            if name.startswith("faiss-ivf"):
                note = f"nlist={e['nlist']}"
            if name.startswith("milvus"):
                note = (f"upserts + flush {e['insert_s']:.1f} s ({data['n'] / e['insert_s']:.0f} vectors/s), then the "
                        "server's index build; Bounded consistency; queries over gRPC; memory is the server's")
            mem = f"{e['rss_delta_mib']:.0f}" if "rss_delta_mib" in e else "—"
            mem += f" / {size:.0f}" if size else ""
            lines.append(f"| {name} | {e['build_s']:.1f} | {mem} | {note} |")
        lines.append("")
        lines.append("| engine | setting | recall@10 | q/s @10 | recall@100 | q/s @100 | × exact @100 |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for name in REPORTED_ENGINES:
            e = eng.get(name, {})
            rows = {}
            for r in e.get("results", []):
                rows.setdefault(r["param"], {})[r["k"]] = r
            for param, by_k in rows.items():
                r10, r100 = by_k.get(10), by_k.get(100)
                cells = []
                for r in (r10, r100):
                    cells += [f"{r['recall']:.4f}", f"{r['qps']:.0f}"] if r else ["", ""]
                x = f"{r100['qps'] / exact_qps:.1f}×" if r100 and exact_qps else ""
                lines.append(f"| {name} | {param} | {' | '.join(cells)} | {x} |")
        lines.append("")
        # Goal: Spotter recall@100 >= 0.98 while >= 20x the exact scan, no slower than hnswlib.
        sp = eng.get("spotter", {}).get("results")
        if sp and exact_qps:
            s = first_reaching(sp, 100, 0.98)
            if s is None:
                best = max((r for r in sp if r["k"] == 100), key=lambda r: r["recall"])
                lines.append(f"**Goal:** Spotter never reaches recall@100 0.98 (best {best['recall']:.4f} at {best['param']}, {best['qps'] / exact_qps:.1f}× exact).")
            else:
                msg = f"**Goal:** Spotter reaches recall@100 {s['recall']:.4f} at {s['param']}, {s['qps']:.0f} q/s = {s['qps'] / exact_qps:.1f}× the exact scan ({'meets' if s['qps'] >= 20 * exact_qps else 'misses'} 20×)"
                hl = eng.get("hnswlib", {}).get("results")
                if hl:
                    # "Equal recall": hnswlib's fastest setting within 0.001 of Spotter's recall.
                    h = first_reaching(hl, 100, s["recall"] - 0.001)
                    if h:
                        msg += f"; hnswlib at equal recall (±0.001): {h['recall']:.4f} at {h['param']}, {h['qps']:.0f} q/s (Spotter {s['qps'] / h['qps']:.2f}× hnswlib's speed)"
                    else:
                        msg += "; hnswlib does not reach that recall"
                lines.append(msg + ".")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    global OUT
    ensure_venv()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(ALL_DATASETS))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--engines", default=",".join(ALL_ENGINES))
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="16,32,64,128,256,512")
    ap.add_argument("--nprobe", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--k", default="10,100")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for builds and ground truth")
    ap.add_argument("--max-seconds", type=float, default=15.0, help="cap on one query setting (exact scan, Spotter)")
    ap.add_argument("--max-build-s", type=float, default=600.0, help="skip an engine whose extrapolated build exceeds this")
    ap.add_argument("--out", default=str(OUT), help="folder for data, JSON and report")
    ap.add_argument("--milvus-collection", default="",
                    help="measure this existing collection of an earlier run (same vectors) instead of building a fresh one")
    ap.add_argument("--milvus-index", default="",
                    help="Milvus index of the milvus engine as in Spotter's URL, e.g. 'ivf_sq8&nlist=1024' (default HNSW)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    OUT = Path(args.out).resolve()
    for key in ("ef", "nprobe", "k"):
        setattr(args, key, [int(x) for x in getattr(args, key).split(",")])
    args.engines = args.engines.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.datasets.split(","):
            run_dataset(name, args.n, args)
    (OUT / "report.md").write_text(report())
    log(f"report: {OUT / 'report.md'}")


if __name__ == "__main__":
    main()
