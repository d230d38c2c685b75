#!/usr/bin/env bash
# Every benchmark in one command.
#   scripts/bench.sh          full mode: real figures, rewrites the generated tables in
#                             docs/benchmarks.md (marked <!-- bench:NAME -->) — about 25 minutes
#   scripts/bench.sh --quick  smoke mode for CI-sized runs: tiny sizes, writes
#                             target/bench-quick.md and leaves the docs alone
# Numbers are measurements, never assertions: nothing here fails on a slow machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
PY=.venv/bin/python
OUT=.cache/bench/run
mkdir -p "$OUT"
cargo build --release --quiet --bin spotter --examples

if [[ $QUICK == 1 ]]; then
  SIZES=(30); VECTORS=2000; FIXTURE=5000; CLIENTS=8; SECONDS_LOAD=5; DOC=target/bench-quick.md
  printf '# Quick benchmark smoke run (not real figures)\n\n<!-- bench:indexing -->\n<!-- /bench:indexing -->\n\n<!-- bench:vectors -->\n<!-- /bench:vectors -->\n\n<!-- bench:load -->\n<!-- /bench:load -->\n' > "$DOC"
else
  SIZES=(200 1000); VECTORS=20000; FIXTURE=100000; CLIENTS=64; SECONDS_LOAD=60; DOC=docs/benchmarks.md
fi

echo "==> indexing throughput (${SIZES[*]} images)"
bash scripts/bench_index.sh "${SIZES[@]}" | tee "$OUT/indexing.md"
"$PY" scripts/bench/update_doc.py "$DOC" indexing "$OUT/indexing.md"

echo "==> vector index ($VECTORS vectors)"
{ echo '```'; target/release/examples/bench_vectors "$VECTORS" 384 16 200; echo '```'; } | tee "$OUT/vectors.md"
"$PY" scripts/bench/update_doc.py "$DOC" vectors "$OUT/vectors.md"

echo "==> load test ($FIXTURE proposals, $CLIENTS clients, ${SECONDS_LOAD}s)"
SOURCE=".cache/bench/index-${SIZES[-1]}"
FIX=".cache/bench/fixture-$FIXTURE"   # reused between runs
[[ -d "$FIX" ]] || target/release/examples/make_fixture "$SOURCE" "$FIX" "$FIXTURE"
PORT=$(( 20000 + RANDOM % 20000 ))
target/release/spotter serve --index "$FIX" --addr "127.0.0.1:$PORT" --device cpu >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$PORT/api/health" >/dev/null 2>&1 && break; sleep 0.2; done
target/release/examples/load_test "http://127.0.0.1:$PORT" "$CLIENTS" "$SECONDS_LOAD" > "$OUT/load.json"
kill $SERVER; wait $SERVER 2>/dev/null || true
"$PY" - "$OUT/load.json" "$FIXTURE" > "$OUT/load.md" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_ms"]; s = r["server_split_ms"]
print("| proposals | clients | seconds | requests | errors | requests/s | p50 ms | p90 ms | p99 ms | max ms | ANN ms | records ms | text ms (uncached, n) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {sys.argv[2]} | {r['clients']} | {r['seconds']:.0f} | {r['requests']} | {r['errors']} | {r['requests_per_second']:.0f} | "
      f"{l['p50']:.1f} | {l['p90']:.1f} | {l['p99']:.1f} | {l['max']:.0f} | {s['ann_mean']:.2f} | {s['meta_mean']:.2f} | "
      f"{s['text_uncached_mean']:.1f} ({s['text_uncached_count']}) |")
PYEOF
cat "$OUT/load.md"
"$PY" scripts/bench/update_doc.py "$DOC" load "$OUT/load.md"

if [[ $QUICK == 0 && -f scripts/bench/ann_compare.py ]]; then
  echo "==> ANN engine comparison (scripts/bench/ann_compare.py; writes docs/ann-comparison.md)"
  python3 scripts/bench/ann_compare.py
fi
echo "Tables written to $DOC"
