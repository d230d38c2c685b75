#!/usr/bin/env bash
# Every benchmark in one command.
#   scripts/bench.sh          full mode: real figures, rewrites the generated tables in
#                             docs/benchmarks.md (marked <!-- bench:NAME -->): about 25 minutes
#                             (+15 the first time, to build the 1M-proposal fixture), then the
#                             ANN comparison at 100k vectors (about 30 minutes on 2 cores)
#   scripts/bench.sh --quick  smoke mode for CI-sized runs: tiny sizes, writes
#                             target/bench-quick.md and leaves the docs alone
#   scripts/bench.sh --only load,vectors
#                             only the named parts (indexing, vectors, load, volume, ann), in
#                             either mode
#   scripts/bench.sh --only volume [--quick]
#                             production volume (scripts/bench_volume.sh): 1M WeDetect-shaped
#                             proposals, ~15 minutes (--quick: 100k, ~3 minutes); its last line
#                             is the JSON summary
# Numbers are measurements, never assertions: nothing here fails on a slow machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
ONLY=indexing,vectors,load,volume,ann
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY="${2:?--only needs a list: indexing,vectors,load,volume,ann}"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see scripts/bench.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
for part in ${ONLY//,/ }; do
  [[ $part =~ ^(indexing|vectors|load|volume|ann)$ ]] || { echo "unknown part: $part (indexing, vectors, load, volume, ann)" >&2; exit 2; }
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }
PY=.venv/bin/python
OUT=.cache/bench/run
mkdir -p "$OUT"
cargo build --release --quiet --bin spotter --examples

if [[ $QUICK == 1 ]]; then
  SIZES=(30); VECTORS=2000; FIXTURES=(5000); CLIENTS=8; SECONDS_LOAD=5; DOC=target/bench-quick.md
  printf '# Quick benchmark smoke run (not real figures)\n\n<!-- bench:indexing -->\n<!-- /bench:indexing -->\n\n<!-- bench:vectors -->\n<!-- /bench:vectors -->\n\n<!-- bench:load -->\n<!-- /bench:load -->\n' > "$DOC"
else
  SIZES=(200 1000); VECTORS=20000; FIXTURES=(10000 100000 1000000); CLIENTS=64; SECONDS_LOAD=60; DOC=docs/benchmarks.md
fi

if wanted indexing; then
  echo "==> indexing throughput (${SIZES[*]} images)"
  bash scripts/bench_index.sh "${SIZES[@]}" | tee "$OUT/indexing.md"
  "$PY" scripts/bench/update_doc.py "$DOC" indexing "$OUT/indexing.md"
fi

if wanted vectors; then
  echo "==> vector index ($VECTORS vectors)"
  { echo '```'; target/release/examples/bench_vectors "$VECTORS" 384 16 200; echo '```'; } | tee "$OUT/vectors.md"
  "$PY" scripts/bench/update_doc.py "$DOC" vectors "$OUT/vectors.md"
fi

if wanted load; then
  echo "==> query server load test (${FIXTURES[*]} proposals; $CLIENTS clients and 1 client)"
  # One row per index size: proposals grow 10k -> 1M (fixtures built from the largest indexing
  # run's real proposals, reused between runs), plus the real 100 000-photo index when a
  # `scripts/bench_index.sh 100000` run left it behind. Each size is served alone, loaded by
  # CLIENTS keep-alive clients for SECONDS_LOAD s, then by one client (per-query latency).
  SOURCE=".cache/bench/index-${SIZES[-1]}"
  [[ -d "$SOURCE" ]] || bash scripts/bench_index.sh "${SIZES[-1]}" >/dev/null
  INDEXES=()
  for n in "${FIXTURES[@]}"; do
    FIX=".cache/bench/fixture-$n"
    [[ -d "$FIX" ]] || target/release/examples/make_fixture "$SOURCE" "$FIX" "$n"
    INDEXES+=("$FIX")
  done
  [[ $QUICK == 0 && -d .cache/bench/index-100000 ]] && INDEXES+=(.cache/bench/index-100000)
  : > "$OUT/load.jsonl"
  for IDX in "${INDEXES[@]}"; do
    PORT=$(( 20000 + RANDOM % 20000 ))
    target/release/spotter serve --index "$IDX" --addr "127.0.0.1:$PORT" --device cpu >/dev/null 2>&1 &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 1 600); do curl -sf "127.0.0.1:$PORT/api/health" >/dev/null 2>&1 && break; sleep 0.5; done
    PROPOSALS=$(curl -sf "127.0.0.1:$PORT/api/stats" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["proposals"])')
    for C in "$CLIENTS" 1; do
      S=$SECONDS_LOAD; [[ $C == 1 ]] && S=$(( (SECONDS_LOAD + 2) / 3 ))
      target/release/examples/load_test "http://127.0.0.1:$PORT" "$C" "$S" \
        | "$PY" -c 'import json,sys; r=json.load(sys.stdin); r["proposals"]=int(sys.argv[1]); r["index"]=sys.argv[2]; print(json.dumps(r))' "$PROPOSALS" "$IDX" \
        >> "$OUT/load.jsonl"
    done
    kill $SERVER; wait $SERVER 2>/dev/null || true
  done
  "$PY" - "$OUT/load.jsonl" > "$OUT/load.md" <<'PYEOF'
import json, sys
print("| proposals | index | clients | seconds | requests | errors | requests/s | p50 ms | p90 ms | p99 ms | max ms | ANN ms | records ms | text ms (uncached, n) |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    r = json.loads(line); l = r["latency_ms"]; s = r["server_split_ms"]
    kind = "real photos" if "/index-" in r["index"] else "fixture"
    print(f"| {r['proposals']} | {kind} | {r['clients']} | {r['seconds']:.0f} | {r['requests']} | {r['errors']} | {r['requests_per_second']:.0f} | "
          f"{l['p50']:.1f} | {l['p90']:.1f} | {l['p99']:.1f} | {l['max']:.0f} | {s['ann_mean']:.2f} | {s['meta_mean']:.2f} | "
          f"{s['text_uncached_mean']:.1f} ({s['text_uncached_count']}) |")
PYEOF
  cat "$OUT/load.md"
  "$PY" scripts/bench/update_doc.py "$DOC" load "$OUT/load.md"
fi

if wanted volume; then
  N=1000000; [[ $QUICK == 1 ]] && N=100000
  echo "==> production volume ($N proposals; scripts/bench_volume.sh)"
  bash scripts/bench_volume.sh "$N" | tee "$OUT/volume.json"
fi

if [[ $QUICK == 0 ]] && wanted ann; then
  echo "==> ANN engine comparison (scripts/bench/ann_compare.py; report in .cache/bench/ann/report.md, which docs/ann-comparison.md quotes with commentary)"
  python3 scripts/bench/ann_compare.py
fi
[[ $ONLY == volume ]] || echo "Tables written to $DOC"
