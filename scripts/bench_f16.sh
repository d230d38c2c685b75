#!/usr/bin/env bash
# What f16 vector storage costs: index one archive with f32 and with --f16, run the same queries
# on both, and report top-k overlap and the largest score difference.
#   scripts/bench_f16.sh [ARCHIVE]      default: .cache/bench/archive-200 (made by bench_index.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ARCHIVE="${1:-.cache/bench/archive-200}"
WORK=.cache/bench/f16
S=target/release/spotter
rm -rf "$WORK" && mkdir -p "$WORK"
"$S" index "$ARCHIVE" --index "$WORK/f32" --quiet >/dev/null 2>&1
"$S" index "$ARCHIVE" --index "$WORK/f16" --f16 --quiet >/dev/null 2>&1
for q in cat person motorcycle cup "a mug of coffee" kitty motorbike rocket dog car; do
  "$S" search "$q" --index "$WORK/f32" -k 50 --threshold 0 --json 2>/dev/null > "$WORK/f32-$q.jsonl"
  "$S" search "$q" --index "$WORK/f16" -k 50 --threshold 0 --json 2>/dev/null > "$WORK/f16-$q.jsonl"
done
.venv/bin/python - "$WORK" <<'PYEOF'
import glob, json, os, sys
work = sys.argv[1]
overlap10, overlap50, maxdiff, n = 0.0, 0.0, 0.0, 0
for f32 in sorted(glob.glob(os.path.join(work, "f32-*.jsonl"))):
    f16 = f32.replace("f32-", "f16-")
    a = [json.loads(l) for l in open(f32)]
    b = [json.loads(l) for l in open(f16)]
    key = lambda h: (h["path"], tuple(round(x, 1) for x in h["box"]))
    ka, kb = [key(h) for h in a], [key(h) for h in b]
    overlap10 += len(set(ka[:10]) & set(kb[:10])) / max(1, min(10, len(ka)))
    overlap50 += len(set(ka) & set(kb)) / max(1, len(ka))
    sb = {key(h): h["score"] for h in b}
    maxdiff = max([maxdiff] + [abs(h["score"] - sb[key(h)]) for h in a if key(h) in sb])
    n += 1
du = lambda d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
print(f"queries {n}: top-10 overlap {overlap10 / n:.3f}, top-50 overlap {overlap50 / n:.3f}, "
      f"max score difference {maxdiff:.5f}; disk f32 {du(work + '/f32') / 2**20:.1f} MiB, f16 {du(work + '/f16') / 2**20:.1f} MiB")
PYEOF
