#!/usr/bin/env bash
# Builds the sample app against a tagged clone of this repository (as an app
# would depend on Unibus) and runs it against a real node on loopback.
# Slow (a full build of Unibus and its dependencies); not part of CI.
#   Tests/SampleApp/build-and-run.sh [BIN_DIR]   # BIN_DIR has unibusd and unibus (default .build/debug)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$(cd "${1:-$repo/.build/debug}" && pwd)
work=$(mktemp -d)
node_pid=
cleanup() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

SAMPLE_WORK="$work" bash "$here/check.sh"
(cd "$work/app" && UNIBUS_PACKAGE_URL="file://$work/unibus" swift build 2>&1 | tail -3)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats=$(port); control=$(port)
mkdir -m 700 "$work/node"
"$bin/unibusd" init --data-dir "$work/node/data" --admin-identity "$work/node/admin.json" >/dev/null
"$bin/unibus" identity new --out "$work/node/app.json" >/dev/null
"$bin/unibusd" run --data-dir "$work/node/data" --listen "127.0.0.1:$nats" --control-listen "127.0.0.1:$control" \
    > "$work/node/log" 2>&1 &
node_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$control/readyz" >/dev/null && break; sleep 0.1; done
root=$("$bin/unibus" identity nkey --identity "$work/node/admin.json")
"$bin/unibus" user add --node "http://127.0.0.1:$control" --identity "$work/node/admin.json" \
    --from-identity "$work/node/app.json" --handle app >/dev/null
output=$(cd "$work/app" && UNIBUS_PACKAGE_URL="file://$work/unibus" swift run -q SampleApp "$work/node/app.json" "$root" \
    "nats://127.0.0.1:$nats" "http://127.0.0.1:$control")
echo "$output"
echo "$output" | grep -q "received (encrypted): hello from an app" || { echo "sample app: no encrypted round trip" >&2; exit 1; }
echo "sample app: built against a tagged clone and ran: OK"
