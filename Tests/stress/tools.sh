#!/usr/bin/env bash
# Runs `unibus check` and `unibus demo` 200 times each against a real node
# (TLS on both planes) and requires exit 0 every time: the stress form of
# the 20-run loop CI does in check_e2e.py. Needs a debug build.
#   Tests/stress/tools.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build --product unibusd >/dev/null
swift build --product unibus >/dev/null
UNIBUS_CHECK_REPEAT="${1:-200}" python3 Tests/InteropTests/peers/check_e2e.py .build/debug
