#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and registry access: is Spotter really running on
# CUDA, how fast, and does it give the CPU's answers?
#
#   scripts/gpu_check.sh [--model NAME] [--images N] [--batches "1 8 16 32"]
#
#   1. scripts/setup.sh (installs the GPU build of ONNX Runtime and its CUDA libraries when
#      nvidia-smi sees a GPU) and checks that the GPU runtime is what got installed;
#   2. a sample archive of N photos (scripts/make_test_corpus.py, default 200);
#   3. for each batch size: the image graph alone (examples/bench_model, device auto: it says
#      which it got) and the whole
#      pipeline (`spotter index --device cuda --json`), images/s, and the device each reports;
#   4. CUDA against CPU on the sample photos (`spotter detect --json --embeddings`): proposal
#      counts, largest box, objectness and embedding differences;
#   5. exit status 1 if anything ran on the CPU although CUDA was asked for, or if CUDA and CPU
#      disagree beyond 0.5 px / 1e-3 objectness / 1e-2 embedding; 2 when no GPU is visible.
#
# Default model: starter. With a WeDetect export in exported_onnx/, use --model wedetect-uni-base.
# Never run on a GPU by the project so far (no GPU machine was available): report what it prints.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODEL=starter
IMAGES=200
BATCHES="1 8 16 32"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --images) IMAGES="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check.sh: no NVIDIA GPU visible (nvidia-smi -L fails); nothing to check" >&2
  exit 2
fi
nvidia-smi -L

bash scripts/setup.sh
if [[ "$(cat .deps/onnxruntime/lib/.installed 2>/dev/null)" != *-gpu ]]; then
  echo "gpu_check.sh: setup installed the CPU runtime ($(cat .deps/onnxruntime/lib/.installed 2>/dev/null)); delete .deps/onnxruntime and rerun" >&2
  exit 1
fi
cargo build --release --quiet --bin spotter --example bench_model

WORK=.cache/gpu-check
ARCHIVE="$WORK/archive-$IMAGES"
mkdir -p "$WORK"
if [[ ! -f "$ARCHIVE/manifest.json" ]]; then
  .venv/bin/python scripts/make_test_corpus.py archive "$ARCHIVE" --count "$IMAGES" --force >/dev/null
fi

FAILED=0
echo
echo "| batch | model alone on CUDA (img/s) | device | spotter index --device cuda (img/s) | device | index / model |"
echo "|---:|---:|---|---:|---|---:|"
for B in $BATCHES; do
  model=$(target/release/examples/bench_model "exported_onnx/$MODEL" data/samples "$B" "$IMAGES")
  rm -rf "$WORK/index"
  target/release/spotter index "$ARCHIVE" --index "$WORK/index" --model "$MODEL" --batch "$B" \
      --device cuda --quiet --json > "$WORK/report.json"
  line=$(.venv/bin/python - "$model" "$WORK/report.json" "$B" <<'PYEOF'
import json, sys
model = json.loads(sys.argv[1])
report = json.load(open(sys.argv[2]))
rate = report["images_per_second"]
ok = model["device"] == "cuda" and report["device"] == "cuda"
print(f"| {sys.argv[3]} | {model['images_per_second']:.1f} | {model['device']} | {rate:.1f} | {report['device']} | "
      f"{rate / model['images_per_second']:.2f} |" + ("" if ok else " FELL BACK TO CPU"))
PYEOF
)
  echo "$line"
  [[ "$line" == *"FELL BACK"* ]] && FAILED=1
done

echo
echo "CUDA against CPU (spotter detect --json --embeddings, every proposal):"
for photo in data/samples/*; do
  target/release/spotter detect --json --embeddings --threshold 0 --text object --model "$MODEL" \
      --device cpu "$photo" > "$WORK/cpu.jsonl"
  target/release/spotter detect --json --embeddings --threshold 0 --text object --model "$MODEL" \
      --device cuda "$photo" > "$WORK/cuda.jsonl"
  if ! .venv/bin/python - "$WORK/cpu.jsonl" "$WORK/cuda.jsonl" "$photo" <<'PYEOF'
import json, sys
import numpy as np
rows = [[json.loads(l) for l in open(p) if l.strip()] for p in sys.argv[1:3]]
cpu, gpu = ([sorted(r, key=lambda x: -x["objectness"]) for r in rows])
if len(cpu) != len(gpu):
    print(f"  {sys.argv[3]}: {len(cpu)} proposals on CPU, {len(gpu)} on CUDA")
    sys.exit(1 if abs(len(cpu) - len(gpu)) > 1 else 0)
box = max((np.abs(np.subtract(a["box"], b["box"])).max() for a, b in zip(cpu, gpu)), default=0.0)
obj = max((abs(a["objectness"] - b["objectness"]) for a, b in zip(cpu, gpu)), default=0.0)
emb = max((np.abs(np.subtract(a["embedding"], b["embedding"])).max() for a, b in zip(cpu, gpu)), default=0.0)
print(f"  {sys.argv[3]}: {len(cpu)} proposals; max box {box:.3g} px, objectness {obj:.2g}, embedding {emb:.2g}")
sys.exit(0 if box <= 0.5 and obj <= 1e-3 and emb <= 1e-2 else 1)
PYEOF
  then FAILED=1; fi
done

if [[ $FAILED -ne 0 ]]; then
  echo "gpu_check.sh: FAILED (see above: a CPU fallback or a CUDA/CPU disagreement)" >&2
  exit 1
fi
echo "gpu_check.sh: everything ran on CUDA and agrees with the CPU"
