#!/usr/bin/env bash
# The README's test command: installs what it needs, builds with warnings as errors, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build
swift test
