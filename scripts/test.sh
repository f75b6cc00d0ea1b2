#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit, property, API and end-to-end tests (real
# terraform, fleetformd, agents and example game servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
FLEETFORM_WITH_MOTO=1 source scripts/prereqs.sh

start=$(date +%s)
# One build for everything: the end-to-end tests run these binaries from target/debug.
cargo build --workspace --bins --tests --locked
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --test-threads 4 "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
echo "test suite wall time: $(( $(date +%s) - start ))s"
