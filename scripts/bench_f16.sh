#!/usr/bin/env bash
# What the compact vector storage costs in quality: index one archive three times — the HNSW
# engine with f32 vectors (the reference), the HNSW engine with --f16, and the default quantised
# engine (int8 codes re-ranked from fine residual codes) — run the same queries on each, and
# report top-k overlap (also tie-aware: hits tied with the 100th to 1e-6 may swap) and the
# largest score difference against the f32 index.
#   scripts/bench_f16.sh [ARCHIVE] [MODEL]   defaults: .cache/bench/archive-200 (made by
#                                            bench_index.sh) and the starter model
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ARCHIVE="${1:-.cache/bench/archive-200}"
MODEL="${2:-starter}"
WORK=.cache/bench/f16
S=target/release/spotter
rm -rf "$WORK" && mkdir -p "$WORK"
"$S" index "$ARCHIVE" --index "$WORK/f32" --model "$MODEL" --vector-engine hnsw --quiet >/dev/null 2>&1
"$S" index "$ARCHIVE" --index "$WORK/f16" --model "$MODEL" --vector-engine hnsw --f16 --quiet >/dev/null 2>&1
"$S" index "$ARCHIVE" --index "$WORK/quantised" --model "$MODEL" --quiet >/dev/null 2>&1
for q in cat person motorcycle cup "a mug of coffee" kitty motorbike rocket dog car; do
  for v in f32 f16 quantised; do
    "$S" search "$q" --index "$WORK/$v" --model "$MODEL" -k 100 --threshold 0 --json 2>/dev/null > "$WORK/$v-$q.jsonl"
  done
done
.venv/bin/python - "$WORK" <<'PYEOF'
import glob, json, os, sys
work = sys.argv[1]
du = lambda d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
for other in ("f16", "quantised"):
    overlap10, overlap100, tied100, maxdiff, n = 0.0, 0.0, 0.0, 0.0, 0
    for f32 in sorted(glob.glob(os.path.join(work, "f32-*.jsonl"))):
        a = [json.loads(l) for l in open(f32)]
        b = [json.loads(l) for l in open(f32.replace("f32-", other + "-"))]
        key = lambda h: (h["path"], tuple(round(x, 1) for x in h["box"]))
        ka, kb = [key(h) for h in a], [key(h) for h in b]
        overlap10 += len(set(ka[:10]) & set(kb[:10])) / max(1, min(10, len(ka)))
        overlap100 += len(set(ka) & set(kb)) / max(1, len(ka))
        # Tie-aware: a reference hit missing from the other list counts as found when its score
        # is within 1e-6 of the reference's last score (hits tied at the cut can swap places).
        cut = a[-1]["score"] if a else 0.0
        found = sum(1 for h, k in zip(a, ka) if k in set(kb) or abs(h["score"] - cut) <= 1e-6)
        tied100 += found / max(1, len(ka))
        sb = {key(h): h["score"] for h in b}
        maxdiff = max([maxdiff] + [abs(h["score"] - sb[key(h)]) for h in a if key(h) in sb])
        n += 1
    print(f"{other} vs f32 (hnsw): {n} queries, top-10 overlap {overlap10 / n:.3f}, top-100 overlap "
          f"{overlap100 / n:.3f} (tie-aware {tied100 / n:.3f}), max score difference {maxdiff:.6f}; disk f32 {du(work + '/f32') / 2**20:.1f} MiB, "
          f"{other} {du(work + '/' + other) / 2**20:.1f} MiB")
PYEOF
