#!/usr/bin/env bash
# Spotter set-up: everything a fresh machine needs, idempotent (a second run reuses what is there).
#
#   1. .venv/                      Python tools for scripts/ (pinned in scripts/requirements.txt)
#   2. .deps/onnxruntime/lib/      the ONNX Runtime library the Rust engine loads (from the pinned wheel;
#                                  the GPU wheel when an NVIDIA GPU is present)
#   3. exported_onnx/starter/      the starter model package (scripts/build_starter_model.sh)
#   4. exported_onnx/wedetect-synthetic/  a tiny model with WeDetect-Uni's exact signature (tests)
#   5. data/samples/               sample photos (from the scikit-image wheel)
#   6. target/release/spotter      the release build
#
# Options: --no-build (skip step 6), --cpu-only (never install the GPU runtime).
# Environment: PYTHON (interpreter for the venv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ORT_VERSION="1.31.1"
SKIMAGE_VERSION="0.25.2"
SAMPLE_FILES=(astronaut.png chelsea.png coffee.png motorcycle_left.png motorcycle_right.png rocket.jpg camera.png)

BUILD=1
CPU_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --cpu-only) CPU_ONLY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
STARTED=$(date +%s)

# 1. Python tools ------------------------------------------------------------------------------
VENV="$ROOT/.venv"
REQ_STAMP="$VENV/.requirements.sha256"
REQ_HASH="$(sha256sum scripts/requirements.txt | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$REQ_STAMP" 2>/dev/null)" != "$REQ_HASH" ]]; then
  step "Python tools (.venv)"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
  echo "$REQ_HASH" > "$REQ_STAMP"
else
  step "Python tools (.venv): up to date"
fi
PY="$VENV/bin/python"

# 2. ONNX Runtime library ----------------------------------------------------------------------
LIB_DIR="$ROOT/.deps/onnxruntime/lib"
have_gpu() { [[ "$CPU_ONLY" == 0 ]] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
ORT_FLAVOUR="cpu"
if have_gpu; then ORT_FLAVOUR="gpu"; fi
ORT_STAMP="$LIB_DIR/.installed"
if [[ "$(cat "$ORT_STAMP" 2>/dev/null)" != "$ORT_VERSION-$ORT_FLAVOUR" ]]; then
  step "ONNX Runtime $ORT_VERSION ($ORT_FLAVOUR) into .deps/onnxruntime/lib"
  rm -rf "$LIB_DIR" && mkdir -p "$LIB_DIR"
  if [[ "$ORT_FLAVOUR" == "gpu" ]]; then
    # The GPU wheel carries the CUDA execution provider; its [cuda,cudnn] extras bring the CUDA
    # libraries (about 1.3 GB) into .deps/cuda, which the engine's loader path points at.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --target "$ROOT/.deps/ort-gpu" \
      "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION"
    cp -L "$ROOT"/.deps/ort-gpu/onnxruntime/capi/libonnxruntime*.so* "$LIB_DIR/"
    find "$ROOT/.deps/ort-gpu/nvidia" -name 'lib*.so*' -exec cp -L {} "$LIB_DIR/" \; 2>/dev/null || true
  else
    cp -L "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime*.so* "$LIB_DIR/"
  fi
  echo "$ORT_VERSION-$ORT_FLAVOUR" > "$ORT_STAMP"
else
  step "ONNX Runtime $ORT_VERSION ($ORT_FLAVOUR): present"
fi

# 3. Starter model -----------------------------------------------------------------------------
step "Starter model (exported_onnx/starter)"
bash scripts/build_starter_model.sh

# 4. Synthetic WeDetect-shaped model -----------------------------------------------------------
if [[ ! -f exported_onnx/wedetect-synthetic/model.json || ! -f exported_onnx/wedetect-synthetic/image.onnx ]]; then
  step "Synthetic WeDetect-Uni-shaped model (exported_onnx/wedetect-synthetic)"
  "$PY" scripts/wedetect/make_synthetic.py --out exported_onnx/wedetect-synthetic
else
  step "Synthetic WeDetect-Uni-shaped model: present"
fi

# 5. Sample photos -----------------------------------------------------------------------------
SAMPLES="$ROOT/data/samples"
if [[ ! -f "$SAMPLES/.complete" ]]; then
  step "Sample photos (data/samples, from scikit-image $SKIMAGE_VERSION)"
  mkdir -p .cache/downloads "$SAMPLES"
  WHEEL="$(ls .cache/downloads/scikit_image-"$SKIMAGE_VERSION"-*.whl 2>/dev/null | head -1 || true)"
  if [[ -z "$WHEEL" ]]; then
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: -d .cache/downloads "scikit-image==$SKIMAGE_VERSION"
    WHEEL="$(ls .cache/downloads/scikit_image-"$SKIMAGE_VERSION"-*.whl | head -1)"
  fi
  "$PY" - "$WHEEL" "$SAMPLES" "${SAMPLE_FILES[@]}" <<'PYEOF'
import sys, zipfile, pathlib
wheel, out, names = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        (out / name).write_bytes(z.read(f"skimage/data/{name}"))
        print("  ", out / name)
PYEOF
  touch "$SAMPLES/.complete"
else
  step "Sample photos: present"
fi

# 6. Release build -----------------------------------------------------------------------------
if [[ "$BUILD" == 1 ]]; then
  step "Release build (cargo build --release; about 7 minutes the first time on 2 cores)"
  cargo build --release --locked --workspace --all-targets
fi

printf '\nSet-up done in %ss.\n' "$(( $(date +%s) - STARTED ))"
