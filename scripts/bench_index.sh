#!/usr/bin/env bash
# Indexing throughput benchmark (issue: offline indexer). For each archive size N it measures,
# in one run on this machine, with the same model, device and batch:
#   model alone   the image graph on pre-letterboxed tensors (examples/bench_model.rs)
#   spotter index the whole pipeline into a fresh index (walk, read, hash, decode, letterbox,
#                 model, NMS, sled, HNSW), peak memory, disk per proposal
#   python peer   scripts/bench/python_pipeline.py (Pillow + numpy + onnxruntime)
# and prints a markdown table (ratios are the figures to compare; absolute numbers are noisy).
#
#   scripts/bench_index.sh [N ...]        default: 200 1000
# Env: MODEL (default starter), BATCH (default 4), DEVICE (default auto).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SIZES=("$@"); [[ ${#SIZES[@]} -gt 0 ]] || SIZES=(200 1000)
MODEL="${MODEL:-starter}"; BATCH="${BATCH:-4}"; DEVICE="${DEVICE:-auto}"
PY=.venv/bin/python
WORK=.cache/bench
mkdir -p "$WORK"
cargo build --release --quiet --bin spotter --example bench_model

echo "| images | model alone (img/s) | spotter index (img/s) | index / model | python peer (img/s) | spotter / python | outside-model ms/img spotter | outside-model ms/img python | proposals | peak RSS (MB) | index disk (bytes/proposal) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for N in "${SIZES[@]}"; do
  ARCHIVE="$WORK/archive-$N"
  if [[ ! -f "$ARCHIVE/manifest.json" ]]; then
    "$PY" scripts/make_test_corpus.py archive "$ARCHIVE" --count "$N" --force >/dev/null
  fi
  model=$(target/release/examples/bench_model "exported_onnx/$MODEL" data/samples "$BATCH" "$N" 2>/dev/null)
  rm -rf "$WORK/index-$N"
  /usr/bin/time -f "%M" -o "$WORK/rss-$N" target/release/spotter index "$ARCHIVE" --index "$WORK/index-$N" \
      --model "$MODEL" --batch "$BATCH" --device "$DEVICE" --quiet --json > "$WORK/report-$N.json" 2>/dev/null
  python_run=$("$PY" scripts/bench/python_pipeline.py --model "exported_onnx/$MODEL" --batch "$BATCH" "$ARCHIVE")
  disk=$(du -sb "$WORK/index-$N" | cut -f1)
  "$PY" - "$model" "$python_run" "$WORK/report-$N.json" "$WORK/rss-$N" "$disk" "$N" <<'PYEOF'
import json, sys
model, py = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rep = json.load(open(sys.argv[3]))
rss = int(open(sys.argv[4]).read().split()[-1]) / 1024
disk, n = int(sys.argv[5]), int(sys.argv[6])
ours = rep["images_per_second"]
props = max(rep["proposals_added"], 1)
# Wall time not spent inside the image graph, per image: what a faster model (a GPU) exposes.
ours_out = (rep["seconds"] - rep["model_seconds"]) / n * 1e3
py_out = (py["seconds"] - py["model_seconds"]) / n * 1e3
print(f"| {n} | {model['images_per_second']:.2f} | {ours:.2f} | {ours / model['images_per_second']:.2f} | "
      f"{py['images_per_second']:.2f} | {ours / py['images_per_second']:.2f} | {ours_out:.1f} | {py_out:.1f} | "
      f"{rep['proposals_added']} | {rss:.0f} | {disk / props:.0f} |")
PYEOF
done
