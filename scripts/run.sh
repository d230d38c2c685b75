#!/usr/bin/env bash
# Set up everything (idempotent) and run Spotter's main job on the starter model:
# index the sample photos into data/index, show a few searches, then serve the search page.
# Options: --no-serve (stop after the searches).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
SPOTTER="$ROOT/target/release/spotter"

echo; echo "==> spotter index data/samples --index data/index"
"$SPOTTER" index data/samples --index data/index

for query in "cat" "motorbike" "a mug of coffee" "person"; do
  echo; echo "==> spotter search \"$query\" --index data/index"
  "$SPOTTER" search "$query" --index data/index -k 5
done

echo
echo "Index your own photos:  $SPOTTER index ~/Pictures --index ~/.spotter"
echo "Then search them:       $SPOTTER search \"red car\" --index ~/.spotter"
echo "                        $SPOTTER serve --index ~/.spotter"
if [[ "${1:-}" == "--no-serve" ]]; then exit 0; fi
echo
echo "==> spotter serve --index data/index   (open http://127.0.0.1:7878/ and type \"cat\"; Ctrl-C stops)"
exec "$SPOTTER" serve --index data/index
