#!/usr/bin/env bash
# The README's test command: installs what it needs, checks the format, builds with warnings as errors,
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift format lint --strict --recursive Sources Tests Package.swift fuzz/Sources
# The same flags for build and test, so the tests reuse the build.
flags=(-Xswiftc -warnings-as-errors)
swift build --build-tests "${flags[@]}"
swift test --skip-build "${flags[@]}"
