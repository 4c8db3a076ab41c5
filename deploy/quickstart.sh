#!/usr/bin/env bash
# The README's first command: install, build, and run the main job: the
# node's crypto self-check, a data directory bootstrapped with an admin on
# first run (./.unibus, mode 0700), the node on 127.0.0.1:4222, a demo of two
# peers in an end-to-end encrypted room (and what a plain NATS subscriber
# sees), `unibus check`, then the node keeps running (Ctrl-C stops it).
# Set UNIBUS_QUICKSTART_SECONDS=N to stop the node after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh build
swift build -c release --product unibusd
swift build -c release --product unibus
bin=$(swift build -c release --show-bin-path)

echo
echo "== unibusd self-check"
"$bin/unibusd" self-check

echo
echo "== data directory and first admin (created on first run)"
mkdir -p .unibus
chmod 700 .unibus
if [ ! -f .unibus/data/membership.sqlite3 ]; then
    "$bin/unibusd" init --data-dir .unibus/data --admin-identity .unibus/admin.json --handle admin
elif migrated=$("$bin/unibusd" migrate --data-dir .unibus/data --admin-identity .unibus/admin.json 2>/dev/null); then
    # A data directory from a release before the causally signed log: the
    # admin here is its root, so it signs the migration checkpoint.
    echo "$migrated"
fi
"$bin/unibus" identity show --identity .unibus/admin.json
# The root admin's nkey: check and demo pin it and verify membership from it (never learned from the node).
root=$("$bin/unibus" identity nkey --identity .unibus/admin.json)

echo
echo "== node on 127.0.0.1:4222 (control plane http://127.0.0.1:4280, loopback dev mode)"
"$bin/unibusd" run --data-dir .unibus/data --listen 127.0.0.1:4222 --control-listen 127.0.0.1:4280 &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null' EXIT
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/4280) 2>/dev/null && break
    sleep 0.1
done

echo
echo "== two demo peers (created on first run, added by the admin)"
for peer in alice bob; do
    if [ ! -f ".unibus/$peer.json" ]; then
        "$bin/unibus" identity new --out ".unibus/$peer.json"
        # Only the public halves are sent (--from-identity also takes `identity show --json` output).
        "$bin/unibus" user add --identity .unibus/admin.json --from-identity ".unibus/$peer.json" --handle "$peer"
    fi
done

echo
echo "== demo: alice and bob in an end-to-end encrypted room"
"$bin/unibus" demo --alice .unibus/alice.json --bob .unibus/bob.json --root "$root"

echo
echo "== unibus check: 20 messages through the admin's encrypted probe room"
"$bin/unibus" check --identity .unibus/admin.json --root "$root"

echo
echo "== the node keeps running (Ctrl-C stops it)"
if [ -n "${UNIBUS_QUICKSTART_SECONDS:-}" ]; then
    sleep "$UNIBUS_QUICKSTART_SECONDS"
else
    wait $node
fi
