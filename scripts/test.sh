#!/usr/bin/env bash
# The README's test command: installs what it needs, checks the format, builds with warnings as errors,
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The Linux test guest, cached outside the clone under a hash of its inputs (minutes the first time): the Linux
# end-to-end test boots it, migrates it and skips, saying why, only when this variable is empty.
VMSEND_LINUX_GUEST=$(scripts/build-linux-guest.sh --print-dir)
export VMSEND_LINUX_GUEST
swift format lint --strict --recursive Sources Tests Package.swift fuzz/Sources
mandoc -T lint -W warning man/*
# The same flags for build and test, so the tests reuse the build.
flags=(-Xswiftc -warnings-as-errors)
swift build --build-tests "${flags[@]}"
swift test --skip-build "${flags[@]}"
