#!/usr/bin/env bash
# Set up everything (idempotent) and run Spotter's main job on the starter model.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
SPOTTER="$ROOT/target/release/spotter"

echo; echo "==> spotter models"
"$SPOTTER" models

mkdir -p data/annotated
for photo in data/samples/*.png data/samples/*.jpg; do
  name="$(basename "${photo%.*}")"
  echo; echo "==> spotter detect $photo"
  "$SPOTTER" detect "$photo" --text "cat,car,motorcycle,person,cup,rocket" --out "data/annotated/$name.png"
done
