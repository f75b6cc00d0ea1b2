#!/usr/bin/env bash
# Builds terraform-provider-floor (main.go here) into target/floor-provider/, from Debian's
# Go 1.23 and its packaged go-plugin, grpc-go and protobuf sources (GOPATH mode: there is
# no Go module proxy here). `FLEETFORM_WITH_GO_FLOOR=1 scripts/prereqs.sh` installs them.
# Prints the binary's directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
go=/usr/lib/go-1.23/bin/go
out=$root/target/floor-provider
work=$root/target/floor-provider/gopath
mkdir -p "$work/src/floor/tfplugin6" "$work/bin"
export GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOCACHE="$root/target/floor-provider/cache" GOFLAGS=
# The current protoc-gen-go (proto3 `optional`, which the protocol uses), from its source.
[ -x "$work/bin/protoc-gen-go" ] ||
    "$go" build -o "$work/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
PATH="$work/bin:$PATH" protoc -I "$root/provider/proto" \
    --go_out=paths=source_relative:"$work/src/floor/tfplugin6" \
    --go_opt=Mtfplugin6.proto=floor/tfplugin6 \
    --go-grpc_out=paths=source_relative:"$work/src/floor/tfplugin6" \
    --go-grpc_opt=Mtfplugin6.proto=floor/tfplugin6 \
    tfplugin6.proto
cp bench/floor-provider/main.go "$work/src/floor/main.go"
"$go" build -o "$out/terraform-provider-floor" floor
echo "$out"
