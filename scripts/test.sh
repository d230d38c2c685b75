#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up (idempotent; builds the models and the release
# binary), formatting, lints, then every unit, fidelity and end-to-end test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

echo; echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo; echo "==> cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

echo; echo "==> cargo test (release profile, shares the set-up build)"
cargo test --release --workspace --locked
