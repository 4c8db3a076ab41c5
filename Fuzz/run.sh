#!/usr/bin/env bash
# Builds the libFuzzer targets with ASan and runs each one.
#   Fuzz/run.sh              # 5 minutes per target (local hunting)
#   Fuzz/run.sh --smoke      # 15 seconds per target (CI)
#   Fuzz/run.sh --seconds N [TARGET...]
# New crashes land in Fuzz/artifacts/; the corpora in Fuzz/Corpus/ grow in a
# scratch copy, so the committed seeds stay small.
set -euo pipefail
cd "$(dirname "$0")"

seconds=300
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) seconds=15 ;;
        --seconds) seconds="$2"; shift ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(FuzzMegolmMessage FuzzMegolmSessionKey FuzzIdentityFile FuzzClientProtocol FuzzServerProtocol FuzzRouteProtocol FuzzFrameEnvelope FuzzReplicationFrame FuzzFrameReplication FuzzRoomKeyring FuzzControlRequest FuzzMembershipLog FuzzFleetMessages FuzzConfiguration FuzzJWT FuzzWorkloadLogin)

flags=(--sanitize fuzzer --sanitize address -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld --scratch-path .build-fuzz)
for target in "${targets[@]}"; do
    swift build -c debug --product "$target" "${flags[@]}" 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
    test -x ".build-fuzz/debug/$target" || { echo "fuzz: building $target failed" >&2; exit 1; }
done

mkdir -p artifacts
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    echo "fuzz: $target for ${seconds}s"
    # -rss_limit_mb and -malloc_limit_mb turn unbounded allocation into a failure;
    # -timeout turns a hang into one.
    if ! SWIFT_BACKTRACE=enable=no ".build-fuzz/debug/$target" "$work/$target" "Corpus/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
        -max_len=8192 -artifact_prefix="artifacts/$target-" -print_final_stats=1 \
        > "$work/$target.log" 2>&1; then
        echo "fuzz: $target FAILED; last lines of its log:" >&2
        tail -40 "$work/$target.log" >&2
        status=1
    else
        grep -E 'stat::number_of_executed_units|cov:' "$work/$target.log" | tail -2 | sed "s/^/fuzz: $target: /"
    fi
done
exit $status
