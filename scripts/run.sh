#!/usr/bin/env bash
# Set up everything (idempotent) and run Spotter's main job on the starter model:
# index the sample photos into data/index, then search them.
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
