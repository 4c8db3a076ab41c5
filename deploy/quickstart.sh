#!/usr/bin/env bash
# The README's first command: install, build, and run the main job.
# Today that is the node's crypto self-check, a node identity created on
# first run under ./.unibus, and a short Megolm demo through the CLI. The
# broker, membership service and encrypted-room demo replace it as they land.
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
echo "== identity (created on first run, mode 0600)"
mkdir -p .unibus
chmod 700 .unibus
if [ ! -f .unibus/identity.json ]; then
    "$bin/unibus" identity new --out .unibus/identity.json >/dev/null
fi
"$bin/unibus" identity show --identity .unibus/identity.json

echo
echo "== Megolm demo: encrypt two lines, then decrypt them with the shared session key"
encrypted=$(printf 'hello from unibus\nsecond message\n' | "$bin/unibus" debug megolm encrypt)
key=$(echo "$encrypted" | head -1)
echo "session key: ${key:0:40}..."
echo "$encrypted" | tail -n +2 | sed 's/^/ciphertext:  /' | cut -c1-90
echo "$encrypted" | tail -n +2 | "$bin/unibus" debug megolm decrypt --session-key "$key" | while IFS=$'\t' read -r index plaintext; do
    printf 'decrypted:   #%s %s\n' "$index" "$(printf '%s' "$plaintext" | base64 -d 2>/dev/null || true)"
done
