#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit, property, API and end-to-end tests (real
# terraform, fleetformd, agents and example game servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
FLEETFORM_WITH_MOTO=1 FLEETFORM_WITH_POSTGRES=1 FLEETFORM_WITH_OLD_TERRAFORM=1 source scripts/prereqs.sh

start=$(date +%s)
# One build for everything: the end-to-end tests run these binaries from target/debug.
cargo build --workspace --bins --tests --locked
# One throwaway Postgres for the whole run (each test makes a database of its own on it):
# on a free loopback port, as the user postgres, stopped when this script's end closes
# its stdin.
pg_url_file=$(mktemp)
exec 3> >(exec target/debug/fleetform-pg serve >"$pg_url_file")
for _ in $(seq 300); do [ -s "$pg_url_file" ] && break; sleep 0.1; done
FLEETFORM_TEST_POSTGRES=$(cat "$pg_url_file")
rm -f "$pg_url_file"
if [ -z "$FLEETFORM_TEST_POSTGRES" ]; then
    echo "the test Postgres did not start" >&2
    exit 1
fi
export FLEETFORM_TEST_POSTGRES
# The provider serves plugin protocol 6 to Terraform 1.11 (the highest both speak): the
# whole suite runs on it. Then every test that drives the real terraform runs again with
# protocol 5 forced (FLEETFORM_PLUGIN_PROTOCOL, read by the provider Terraform starts).
# The test files that start terraform (through the harness's `Terraform` or the examples'
# `Workspace`), found rather than listed, so a new one is never left out.
mapfile -t terraform_tests < <(grep -l -E 'Terraform::new|Workspace::new' tests/tests/*.rs \
    | xargs -n1 basename | sed 's/\.rs$//')
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --test-threads 4 "$@"
    if [ "$#" -eq 0 ]; then
        filter=$(printf ' | binary(%s)' "${terraform_tests[@]}")
        echo "==> the terraform-driven tests again, on plugin protocol 5"
        # --workspace, as above: the same features, so nothing is built again.
        FLEETFORM_PLUGIN_PROTOCOL=5 cargo nextest run --workspace --locked --no-fail-fast \
            --test-threads 4 -E "package(fleetform-e2e) & (${filter# | })"
    fi
else
    cargo test --workspace --locked --no-fail-fast "$@"
    if [ "$#" -eq 0 ]; then
        echo "==> the terraform-driven tests again, on plugin protocol 5"
        FLEETFORM_PLUGIN_PROTOCOL=5 cargo test -p fleetform-e2e --locked --no-fail-fast \
            $(printf -- '--test %s ' "${terraform_tests[@]}")
    fi
fi
echo "test suite wall time: $(( $(date +%s) - start ))s"
