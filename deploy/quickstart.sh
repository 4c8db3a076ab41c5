#!/usr/bin/env bash
# The README's first command: install, build, and run the main job: the
# node's crypto self-check, a data directory bootstrapped with an admin on
# first run (./.unibus, mode 0700), a short Megolm demo through the CLI, then
# the node itself on 127.0.0.1:4222 in the foreground (Ctrl-C stops it).
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
fi
"$bin/unibus" identity show --identity .unibus/admin.json

echo
echo "== Megolm demo: encrypt two lines, then decrypt them with the shared session key"
encrypted=$(printf 'hello from unibus\nsecond message\n' | "$bin/unibus" debug megolm encrypt)
key=$(echo "$encrypted" | head -1)
echo "session key: ${key:0:40}..."
echo "$encrypted" | tail -n +2 | sed 's/^/ciphertext:  /' | cut -c1-90
echo "$encrypted" | tail -n +2 | "$bin/unibus" debug megolm decrypt --session-key "$key" | while IFS=$'\t' read -r index plaintext; do
    printf 'decrypted:   #%s %s\n' "$index" "$(printf '%s' "$plaintext" | base64 -d 2>/dev/null || true)"
done

echo
echo "== node on 127.0.0.1:4222 (membership auth: connect with the admin's nkey; Ctrl-C stops)"
if [ -n "${UNIBUS_QUICKSTART_SECONDS:-}" ]; then
    timeout --signal=TERM "$UNIBUS_QUICKSTART_SECONDS" "$bin/unibusd" run --data-dir .unibus/data --listen 127.0.0.1:4222 || [ $? -eq 124 ]
else
    exec "$bin/unibusd" run --data-dir .unibus/data --listen 127.0.0.1:4222
fi
