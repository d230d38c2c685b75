#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up (idempotent; builds the models and the release
# binary), formatting, lints, then every unit, fidelity and end-to-end test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

# The reference implementations the tests compare with (pycocotools, scikit-learn, sentencepiece).
TEST_REQ_STAMP=.venv/.test-requirements.sha256
TEST_REQ_HASH="$(sha256sum scripts/test-requirements.txt | cut -d' ' -f1)"
if [[ "$(cat "$TEST_REQ_STAMP" 2>/dev/null)" != "$TEST_REQ_HASH" ]]; then
  echo; echo "==> reference implementations for the tests (scripts/test-requirements.txt)"
  .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/test-requirements.txt
  echo "$TEST_REQ_HASH" > "$TEST_REQ_STAMP"
fi

# The browser test drives Debian's Chromium with playwright-core (no browser download).
if [[ ! -x /usr/bin/chromium && -z "${CHROMIUM:-}" ]]; then
  echo; echo "==> Chromium for the browser test (Debian package)"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
# The container test (tests/deploy.rs) builds the image with Debian's Docker FROM a base made with
# debootstrap (no image registry needed); scripts/container.sh starts dockerd when none runs (a
# docker client alone is not enough). The network-mount watch test mounts a folder with bindfs
# (FUSE).
CONTAINER_PACKAGES=()
command -v dockerd >/dev/null 2>&1 || [[ -x /usr/sbin/dockerd ]] || CONTAINER_PACKAGES+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] || CONTAINER_PACKAGES+=(debootstrap)
command -v bindfs >/dev/null 2>&1 || CONTAINER_PACKAGES+=(bindfs)
if ((${#CONTAINER_PACKAGES[@]})); then
  echo; echo "==> ${CONTAINER_PACKAGES[*]} for the container and mount tests (Debian packages)"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${CONTAINER_PACKAGES[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${CONTAINER_PACKAGES[@]}" >/dev/null
  fi
fi
if [[ ! -d web/tests/node_modules/playwright-core ]]; then
  echo; echo "==> playwright-core for the browser test (npm)"
  (cd web/tests && npm install --no-package-lock --no-audit --no-fund --silent)
fi

# A real Milvus server for the Milvus engine's tests (tests/milvus.rs). One already running is
# used as it is; one started here is stopped at the end.
echo; echo "==> Milvus standalone for the Milvus engine tests (scripts/milvus.sh)"
if bash scripts/milvus.sh status; then
  export SPOTTER_TEST_MILVUS=127.0.0.1:${SPOTTER_MILVUS_PORT:-19530}
  echo "[milvus] using the server already running at $SPOTTER_TEST_MILVUS"
elif bash scripts/milvus.sh start; then
  export SPOTTER_TEST_MILVUS=127.0.0.1:${SPOTTER_MILVUS_PORT:-19530}
  trap 'bash scripts/milvus.sh stop' EXIT
else
  echo "!!! Milvus could not start here: the tests against a live Milvus server will print SKIPPED" >&2
fi

echo; echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo; echo "==> cargo clippy -D warnings (default build, then with the Milvus engine)"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo clippy --release --workspace --all-targets --locked --features spotter/milvus -- -D warnings

echo; echo "==> benchmark smoke run (scripts/bench.sh --quick; numbers are not checked)"
bash scripts/bench.sh --quick

echo; echo "==> cargo test (release profile, with the Milvus engine)"
cargo test --release --workspace --locked --features spotter/milvus
