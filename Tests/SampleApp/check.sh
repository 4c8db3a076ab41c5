#!/usr/bin/env bash
# Can an app depend on Unibus by a version tag? Clones this repository,
# tags the clone, and has SwiftPM resolve the sample app against the tag:
# SwiftPM refuses, in seconds, a versioned dependency whose products contain
# unsafe build flags (`swift package show-dependencies` reports it). Run by CI.
#   Tests/SampleApp/check.sh            # resolve only
#   Tests/SampleApp/check.sh --build    # build-and-run.sh uses this to keep the work dir
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${SAMPLE_WORK:-$(mktemp -d)}
if [ -z "${SAMPLE_WORK:-}" ]; then trap 'rm -rf "$work"' EXIT; fi

rm -rf "$work/unibus" "$work/app"
git clone -q "$repo" "$work/unibus"
# Uncommitted changes are part of what is checked (a developer runs this before committing).
(cd "$repo" && git diff HEAD) | (cd "$work/unibus" && git apply --allow-empty 2>/dev/null || true)
(cd "$work/unibus" && git add -A && git -c user.name=sample -c user.email=sample@localhost commit -qm sample --allow-empty \
    && git tag -f 0.99.0 >/dev/null)
mkdir -p "$work/app"
cp -R "$here/Package.swift" "$here/Sources" "$work/app/"
cd "$work/app"
export UNIBUS_PACKAGE_URL="file://$work/unibus"
if ! output=$(swift package show-dependencies 2>&1); then
    echo "$output" >&2
    echo "sample app: SwiftPM refuses Unibus as a versioned dependency (see above)" >&2
    exit 1
fi
echo "$output" | grep -q "unibus" || { echo "$output" >&2; echo "sample app: unibus is not among the dependencies" >&2; exit 1; }
echo "sample app: resolves against a tagged clone (0.99.0): OK"
