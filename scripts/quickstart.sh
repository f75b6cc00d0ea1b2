#!/usr/bin/env bash
# Builds fleetform, starts fleetformd on its embedded default (SQLite, local machines,
# 127.0.0.1:7400, a development token), applies examples/quickstart with the real terraform
# (pointed at the freshly built provider, no registry), places a session and shows where it
# runs. Leaves fleetformd and the game running; the end of its output says how to stop.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source scripts/prereqs.sh

work="$root/.fleetform/quickstart"
mkdir -p "$work/tf" "$work/build"

echo "==> building"
# Only what the quickstart runs, and fleetformd without the EC2 driver (the quickstart runs
# local machines): aws-sdk-ec2 is most of a full build.
cargo build --locked --bins --no-default-features \
    -p fleetformd -p fleetform-agent -p terraform-provider-fleetform -p example-game-server
bin="$root/target/debug"

# A fleetformd left running by an earlier quickstart is stopped first (its machines keep
# running and are adopted by the new one).
if [ -f "$work/fleetformd.pid" ] && kill -0 "$(cat "$work/fleetformd.pid")" 2>/dev/null; then
    kill "$(cat "$work/fleetformd.pid")"
    sleep 1
fi

echo "==> starting fleetformd (embedded default)"
# No options: the embedded default. stdout carries the address and the development token.
nohup "$bin/fleetformd" >"$work/fleetformd.out" 2>"$work/fleetformd.log" &
echo $! >"$work/fleetformd.pid"
for _ in $(seq 1 100); do
    grep -q "development admin token" "$work/fleetformd.out" 2>/dev/null && break
    if ! kill -0 "$(cat "$work/fleetformd.pid")" 2>/dev/null; then
        echo "fleetformd exited; its log:" >&2
        cat "$work/fleetformd.log" >&2
        exit 1
    fi
    sleep 0.1
done
endpoint=$(sed -n 's/^fleetformd listening on //p' "$work/fleetformd.out")
token=$(sed -n 's/^development admin token: //p' "$work/fleetformd.out")
echo "    $endpoint (log: $work/fleetformd.log)"

# The build a studio would upload: a directory with the game server's executable.
# (Copied beside and renamed over, so a game server still running from an earlier run
# keeps its old file.)
cp "$bin/example-game-server" "$work/build/.example-game-server.new"
mv -f "$work/build/.example-game-server.new" "$work/build/example-game-server"
cp examples/quickstart/main.tf "$work/tf/main.tf"
cat >"$work/terraform.rc" <<RC
provider_installation {
  dev_overrides {
    "fleetform/fleetform" = "$bin"
  }
  direct {}
}
RC
export TF_CLI_CONFIG_FILE="$work/terraform.rc" FLEETFORM_ENDPOINT="$endpoint" FLEETFORM_TOKEN="$token"
export TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1

echo "==> terraform apply examples/quickstart"
cd "$work/tf"
apply_start=$(date +%s%N)
terraform apply -auto-approve -input=false -no-color -var "build_dir=$work/build"
apply_end=$(date +%s%N)
echo "==> zone AVAILABLE: terraform apply took $(( (apply_end - apply_start) / 1000000 )) ms"
fleet_id=$(terraform output -raw fleet_id)
zone_name=$(terraform output -raw zone_name)

echo "==> placing a session"
session=$(curl -sS --fail-with-body -X POST "$endpoint/v1/fleets/$fleet_id/sessions" \
    -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"zone\": \"$zone_name\", \"max_players\": 10, \"wait_seconds\": 30}")
echo "$session"
address=$(echo "$session" | python3 -c 'import json, sys; s = json.load(sys.stdin); print("%s:%s" % (s["address"], s["port"]))')
echo "==> the session runs at $address; its game server says:"
for _ in $(seq 1 50); do
    answer=$(curl -sS "http://$address/session" || true)
    echo "$answer" | grep -q '"session_id":"sess-' && break
    sleep 0.1
done
echo "    $answer"
cat <<DONE

fleetformd keeps running ($endpoint, token in $work/fleetformd.out).
To tear everything down:
  cd $work/tf && TF_CLI_CONFIG_FILE=$work/terraform.rc FLEETFORM_ENDPOINT=$endpoint FLEETFORM_TOKEN=$token terraform destroy -auto-approve -var build_dir=$work/build
  kill \$(cat $work/fleetformd.pid)
DONE
