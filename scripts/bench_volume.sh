#!/usr/bin/env bash
# Production volume: what an index of N WeDetect-shaped proposals costs and how its vector engine
# answers, measured on the real binaries.
#   scripts/bench_volume.sh [N]     default 1000000 (about 15 minutes on 2 cores; 100000: ~3)
# Steps:
#   1. a source index of data/samples made with the WeDetect-Uni Base reference-architecture
#      package (exported_onnx/wedetect-uni-base-random, see scripts/wedetect/README.md) when it
#      exists, else with the starter model (then the shapes are the starter's, said in "model");
#   2. examples/make_fixture.rs copies its proposals (directions jittered) into a new index of N
#      proposals through Index::commit_image, the indexer's own write path: the ingest rate;
#   3. `spotter serve` on that index and on an empty one of the same model, 1000 distinct text
#      queries each; RAM = the difference of their peak resident sets (VmHWM: opening included)
#      after the queries (the current sets, VmRSS, are reported beside);
#   4. disk = every byte in the index folder;
#   5. examples/bench_volume.rs --index: recall@100 against an exact f32 scan of the stored
#      vectors (200 queries) and single-thread ANN latency (1000 queries, k = 100).
# The last line printed is one JSON object with the figures (schema in docs/benchmarks.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${1:-1000000}"
[[ "$N" =~ ^[0-9]+$ ]] || { echo "usage: scripts/bench_volume.sh [N]" >&2; exit 2; }
PY=.venv/bin/python
S=target/release/spotter
WORK=.cache/bench/volume
mkdir -p "$WORK"
cargo build --release --quiet --bin spotter --example make_fixture --example bench_volume

MODEL=exported_onnx/wedetect-uni-base-random
[[ -f "$MODEL/model.json" ]] || MODEL=exported_onnx/starter
NAME=$(basename "$MODEL")
SOURCE="$WORK/source-$NAME"
if [[ ! -d "$SOURCE/db" ]]; then
  echo "==> source index: data/samples with $NAME" >&2
  "$S" index data/samples --index "$SOURCE" --model "$MODEL" --quiet >&2
fi
EMPTY="$WORK/empty-$NAME"
if [[ ! -d "$EMPTY/db" ]]; then
  mkdir -p "$WORK/no-photos"
  "$S" index "$WORK/no-photos" --index "$EMPTY" --model "$MODEL" --quiet >&2
fi

FIX="$WORK/fixture-$NAME-$N"
rm -rf "$FIX"
echo "==> $N proposals through the indexer's write path (make_fixture)" >&2
FIXTURE_LINE=$(target/release/examples/make_fixture "$SOURCE" "$FIX" "$N" | tail -1)
echo "    $FIXTURE_LINE" >&2
INGEST=$(sed -n 's/.*s (\([0-9.]*\) proposals\/s).*/\1/p' <<<"$FIXTURE_LINE")
DISK=$(du -sb "$FIX" | cut -f1)

# Peak and current resident set of `spotter serve` on $1 after 1000 distinct queries, in bytes.
serve_rss() {
  local idx=$1 port=$(( 20000 + RANDOM % 20000 )) pid rss
  # One malloc arena per thread count would make the resident set depend on scheduling.
  MALLOC_ARENA_MAX=2 "$S" serve --index "$idx" --model "$MODEL" --addr "127.0.0.1:$port" --device cpu >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do curl -sf "127.0.0.1:$port/api/health" >/dev/null 2>&1 && break; sleep 0.5; done
  "$PY" - "$port" <<'PYEOF' >&2
import sys, urllib.parse, urllib.request
port = sys.argv[1]
words = ["car", "person", "dog", "cat", "red bicycle", "a cup of coffee", "rocket", "camera",
         "motorcycle", "astronaut", "tree", "window", "chair", "bottle", "bird", "boat"]
for i in range(1000):
    q = urllib.parse.quote(f"{words[i % len(words)]} {i}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q={q}&k=100&threshold=0", timeout=120) as r:
        r.read()
PYEOF
  rss=$(awk '/^VmHWM:/ {h = $2} /^VmRSS:/ {r = $2} END {printf "%.0f %.0f", h * 1024, r * 1024}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$rss"
}
echo "==> serve RSS after 1000 queries: the index, then an empty one" >&2
read -r HWM_FULL RSS_FULL <<<"$(serve_rss "$FIX")"
read -r HWM_EMPTY RSS_EMPTY <<<"$(serve_rss "$EMPTY")"
echo "==> recall and latency of the vector engine (bench_volume --index)" >&2
ENGINE_JSON=$(target/release/examples/bench_volume --index "$FIX" --queries 1000 --truth 200)

"$PY" - "$ENGINE_JSON" "$N" "$NAME" "$INGEST" "$DISK" "$HWM_FULL" "$HWM_EMPTY" "$RSS_FULL" "$RSS_EMPTY" <<'PYEOF'
import json, sys
engine = json.loads(sys.argv[1])
n, name, ingest, disk = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
full, empty, now_full, now_empty = (int(x) for x in sys.argv[6:10])
proposals = engine["proposals"]
print(f"model {name}: {proposals} proposals; serve peak RSS {full / 2**20:.0f} MiB (empty index {empty / 2**20:.0f} MiB), "
      f"current {now_full / 2**20:.0f} MiB (empty {now_empty / 2**20:.0f} MiB), "
      f"disk {disk / 2**20:.0f} MiB", file=sys.stderr)
print(json.dumps({
    "proposals": proposals,
    "ram_bytes_per_proposal": round((full - empty) / proposals, 1),
    "disk_bytes_per_proposal": round(disk / proposals, 1),
    "recall_at_100": engine["recall_at_100"],
    "ingest_proposals_per_s": round(ingest, 1),
    "ann_p50_ms": round(engine["ann_p50_ms"], 3),
    "model": name,
    "max_logit_error": engine["max_logit_error"],
    "ann_p99_ms": round(engine["ann_p99_ms"], 3),
    "ram_now_bytes_per_proposal": round((now_full - now_empty) / proposals, 1),
    "serve_peak_rss_bytes": full,
    "empty_serve_peak_rss_bytes": empty,
}))
PYEOF
