#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up (idempotent; builds the models and the release
# binary), formatting, lints, then every unit, fidelity and end-to-end test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

# The browser test drives Debian's Chromium with playwright-core (no browser download).
if [[ ! -x /usr/bin/chromium && -z "${CHROMIUM:-}" ]]; then
  echo; echo "==> Chromium for the browser test (Debian package)"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
if [[ ! -d web/tests/node_modules/playwright-core ]]; then
  echo; echo "==> playwright-core for the browser test (npm)"
  (cd web/tests && npm install --no-package-lock --no-audit --no-fund --silent)
fi

echo; echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo; echo "==> cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

echo; echo "==> benchmark smoke run (scripts/bench.sh --quick; numbers are not checked)"
bash scripts/bench.sh --quick

echo; echo "==> cargo test (release profile, shares the set-up build)"
cargo test --release --workspace --locked
