#!/usr/bin/env bash
# Plan speed, side by side in one run: `terraform plan` of N `fleetform_build` resources
# against N built-in `terraform_data` resources (the same Terraform, the same machine), and
# against N `floor_build` resources of bench/floor-provider: a provider that does nothing,
# served by go-plugin and grpc-go as the Go SDKs serve providers, with fleetform_build's
# schema. What the floor costs over terraform_data is what Terraform's plugin machinery
# costs any provider. Each figure is the median of RUNS interleaved plans.
#
# The provider is the release build, pointed at through `dev_overrides`; a plan of new
# resources calls no fleetformd, so none runs (the endpoint is a closed loopback port,
# never contacted).
#
#   scripts/plan-bench.sh [N]   # N = 200; RUNS = 5; TERRAFORM = terraform; FLOOR = 1
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
n=${1:-200}
runs=${RUNS:-5}
terraform=${TERRAFORM:-terraform}
floor=${FLOOR:-1}

if [ "$floor" = 1 ]; then
    FLEETFORM_WITH_GO_FLOOR=1 . scripts/prereqs.sh
    floor_dir=$(bash bench/floor-provider/build.sh)
fi
cargo build --locked --release -p terraform-provider-fleetform >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/terraform.rc" <<RC
provider_installation {
  dev_overrides {
    "fleetform/fleetform" = "$root/target/release"
    "fleetform/floor"     = "${floor_dir:-/nonexistent}"
  }
  direct {}
}
RC
export TF_CLI_CONFIG_FILE="$work/terraform.rc" TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1

# A configuration of $3 resources of provider $2 ("fleetform" or "floor") in $1.
write_provider_config() {
    local dir=$1 provider=$2 n=$3
    mkdir -p "$dir"
    cat >"$dir/main.tf" <<TF
terraform {
  required_providers {
    $provider = { source = "fleetform/$provider" }
  }
}

provider "$provider" {
  endpoint = "http://127.0.0.1:1"
  token    = "plan-bench"
}

resource "${provider}_build" "b" {
  count            = $n
  name             = "build-\${count.index}"
  operating_system = "linux"
  source           = "file:///opt/builds/\${count.index}"
}
TF
}

# The same values in built-in terraform_data resources.
write_builtin_config() {
    local dir=$1 n=$2
    mkdir -p "$dir"
    cat >"$dir/main.tf" <<TF
resource "terraform_data" "d" {
  count = $n
  input = {
    name             = "build-\${count.index}"
    operating_system = "linux"
    source           = "file:///opt/builds/\${count.index}"
  }
}
TF
}

# One resource each as well: the fixed cost of a plan (Terraform starts a provider three
# times: for its schema, the validate walk and the plan walk).
kinds=(fleetform builtin)
[ "$floor" = 1 ] && kinds+=(floor)
for count in "$n" 1; do
    write_provider_config "$work/fleetform-$count" fleetform "$count"
    write_builtin_config "$work/builtin-$count" "$count"
    [ "$floor" = 1 ] && write_provider_config "$work/floor-$count" floor "$count"
done

# The wall time of one plan in $1, in ms.
plan_ms() {
    local start end
    start=$(date +%s%N)
    (cd "$1" && "$terraform" plan -input=false -no-color -lock=false >/dev/null)
    end=$(date +%s%N)
    echo $(((end - start) / 1000000))
}

# The middle value of the numbers on stdin.
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# One plan each first (Terraform's own start-up, the providers' first load).
for kind in "${kinds[@]}"; do
    for count in "$n" 1; do plan_ms "$work/$kind-$count" >/dev/null; done
done
# Interleaved, so that a machine that slows down or speeds up mid-run (a shared VM does)
# weighs on every side alike; ratios are also taken run by run. One line per run, one
# column per kind and count: fleetform-N builtin-N [floor-N] fleetform-1 builtin-1 [floor-1].
: >"$work/times"
for _ in $(seq "$runs"); do
    line=()
    for count in "$n" 1; do
        for kind in "${kinds[@]}"; do line+=("$(plan_ms "$work/$kind-$count")"); done
    done
    echo "${line[*]}" >>"$work/times"
done
k=${#kinds[@]}
column_median() { awk -v c="$1" '{ print $c }' "$work/times" | median; }
ratio_median() { awk -v a="$1" -v b="$2" '{ printf "%.2f\n", $a / $b }' "$work/times" | median; }

# Where fleetform's difference goes, from one plan of N with Terraform's debug log (its own
# timestamps, in ms): per provider start, the time go-plugin spends making its client
# certificate (a P-521 key and a self-signed certificate, before the provider is even
# started: any plugin pays it) and the time from the provider's start to its exit.
(cd "$work/fleetform-$n" && TF_LOG=debug TF_LOG_PATH="$work/debug.log" \
    "$terraform" plan -input=false -no-color -lock=false >/dev/null)
spans=$(awk '
    function ms(stamp) { split(substr(stamp, 12, 12), t, ":"); return (t[1] * 3600 + t[2] * 60 + t[3]) * 1000 }
    /provider: configuring client automatic mTLS/ { cert = ms($1) }
    /provider: starting plugin:/ { start = ms($1); certs = certs sprintf(" %.0f", start - cert) }
    /provider: plugin exited/ { lives = lives sprintf(" %.0f", ms($1) - start) }
    END { printf "%s|%s", certs, lives }' "$work/debug.log")

label() {
    case $1 in
    fleetform) echo "fleetform_build:" ;;
    builtin) echo "terraform_data: " ;;
    floor) echo "floor_build:    " ;;
    esac
}
echo "terraform plan, median of $runs interleaved runs ($("$terraform" version | head -1)):"
for count in "$n" 1; do
    [ "$count" = 1 ] && offset=$k || offset=0
    echo "  $count resource(s):"
    for i in "${!kinds[@]}"; do
        c=$((offset + i + 1))
        ratio=""
        [ "${kinds[$i]}" != builtin ] && ratio=" ($(ratio_median "$c" $((offset + 2)))× terraform_data)"
        echo "    $(label "${kinds[$i]}") $(column_median "$c") ms$ratio"
    done
done
echo "  per resource beyond the first:"
for i in "${!kinds[@]}"; do
    awk -v a="$(column_median $((i + 1)))" -v a1="$(column_median $((k + i + 1)))" -v n="$n" \
        -v label="$(label "${kinds[$i]}")" 'BEGIN { printf "    %s %.2f ms\n", label, (a - a1) / (n - 1) }'
done
echo "fleetform's provider starts in one plan of $n (Terraform's debug log, ms each):"
echo "  go-plugin making its client certificate, before each start:${spans%%|*}"
echo "  the provider process, start to exit:${spans#*|}"
