#!/usr/bin/env bash
# Plan speed, side by side in one run: `terraform plan` of N `fleetform_build` resources
# against N built-in `terraform_data` resources (the same Terraform, the same machine),
# each the median of RUNS plans, and their ratio. The provider is the release build,
# pointed at through `dev_overrides`; a plan of new resources calls no fleetformd, so none
# runs (the endpoint is a closed loopback port, never contacted).
#
#   scripts/plan-bench.sh [N]        # N = 200; RUNS = 5; TERRAFORM = terraform
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
n=${1:-200}
runs=${RUNS:-5}
terraform=${TERRAFORM:-terraform}

cargo build --locked --release -p terraform-provider-fleetform >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/terraform.rc" <<RC
provider_installation {
  dev_overrides {
    "fleetform/fleetform" = "$root/target/release"
  }
  direct {}
}
RC
export TF_CLI_CONFIG_FILE="$work/terraform.rc" TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1

write_configs() {
    local suffix=$1 n=$2
    mkdir -p "$work/fleetform$suffix" "$work/builtin$suffix"
    cat >"$work/fleetform$suffix/main.tf" <<TF
terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}

provider "fleetform" {
  endpoint = "http://127.0.0.1:1"
  token    = "plan-bench"
}

resource "fleetform_build" "b" {
  count            = $n
  name             = "build-\${count.index}"
  operating_system = "linux"
  source           = "file:///opt/builds/\${count.index}"
}
TF
    cat >"$work/builtin$suffix/main.tf" <<TF
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
write_configs "" "$n"
# One resource each: the fixed cost of a plan (Terraform starts the provider three times:
# for its schema, the validate walk and the plan walk).
write_configs "-1" 1

# The median wall time of `runs` plans in $1, in ms.
median_plan_ms() {
    local dir=$1 times=()
    for _ in $(seq "$runs"); do
        local start end
        start=$(date +%s%N)
        (cd "$dir" && "$terraform" plan -input=false -no-color -lock=false >/dev/null)
        end=$(date +%s%N)
        times+=($(((end - start) / 1000000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p"
}

# One plan each first (Terraform's own start-up, the provider's first load).
(cd "$work/fleetform" && "$terraform" plan -input=false -no-color -lock=false >/dev/null)
(cd "$work/builtin" && "$terraform" plan -input=false -no-color -lock=false >/dev/null)
(cd "$work/fleetform-1" && "$terraform" plan -input=false -no-color -lock=false >/dev/null)
ours=$(median_plan_ms "$work/fleetform")
builtin=$(median_plan_ms "$work/builtin")
ours_1=$(median_plan_ms "$work/fleetform-1")
builtin_1=$(median_plan_ms "$work/builtin-1")
echo "terraform plan, $n resources, median of $runs ($("$terraform" version | head -1)):"
echo "  fleetform_build: $ours ms"
echo "  terraform_data:  $builtin ms"
awk -v a="$ours" -v b="$builtin" 'BEGIN { printf "  ratio: %.2f×\n", a / b }'
echo "the same with 1 resource (the fixed cost of a plan):"
echo "  fleetform_build: $ours_1 ms"
echo "  terraform_data:  $builtin_1 ms"
awk -v a="$ours" -v b="$builtin" -v a1="$ours_1" -v b1="$builtin_1" -v n="$n" 'BEGIN {
    printf "per resource beyond the first: fleetform_build %.2f ms, terraform_data %.2f ms\n",
        (a - a1) / (n - 1), (b - b1) / (n - 1) }'
