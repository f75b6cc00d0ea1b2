#!/usr/bin/env bash
# Installs what building and testing fleetform needs on a fresh Debian machine, and checks
# what cannot be installed from here. Sourced by quickstart.sh and test.sh; idempotent.
set -euo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_packages=()
# tf-provider compiles the Terraform plugin protocol's .proto files at build time.
command -v protoc >/dev/null 2>&1 || apt_packages+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || apt_packages+=(curl)
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "==> installing ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if ! command -v terraform >/dev/null 2>&1; then
    echo "terraform is not on PATH: install Terraform >= 1.5 (or point PATH at it) and rerun" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not on PATH: install a Rust toolchain (rustup) and rerun" >&2
    exit 1
fi
