#!/usr/bin/env bash
# Fuzzes the stream reader with libFuzzer, seeded with the golden stream.
# Usage: scripts/fuzz-stream.sh [seconds] [extra libFuzzer flags...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
# ld.gold warns about every ASan symbol; show the log only when the build fails.
swift build -c debug --build-path ../.build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library > "$corpus/build.log" 2>&1 \
    || { grep -v "Cannot export local symbol" "$corpus/build.log"; exit 1; }
rm "$corpus/build.log"
cp ../Tests/VMStreamTests/Resources/golden-v1.vms "$corpus/"
../.build-fuzz/debug/FuzzStreamReader "$corpus" -max_total_time="$seconds" -max_len=262144 \
    -artifact_prefix=../fuzz-crash- "$@"
