#!/usr/bin/env bash
# The README's main job: start the bundled guest, migrate it with `vmsend | vmrecv` under a new name,
# show it continuing on the destination (ticks and checks), and clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release >/dev/null
bin=$(swift build -c release --show-bin-path)
run_dir=$(mktemp -d /tmp/vmsend-demo.XXXXXX)
cleanup() {
    for vm in demo demo-copy; do "$bin/vmctl" --run-dir "$run_dir" destroy "$vm" >/dev/null 2>&1 || true; done
    rm -rf "$run_dir"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "start the bundled guest: 2 vCPUs, 1 GiB, a 64 MiB working set"
"$bin/vmrun" --run-dir "$run_dir" --cpus 2 --memory 1G --guest-working-set 64M demo
sleep 2
"$bin/vmctl" --run-dir "$run_dir" status demo

step "migrate: vmsend demo | vmrecv demo-copy"
"$bin/vmsend" --run-dir "$run_dir" -v ${VMSEND_DEMO_FLAGS:---warm} demo | "$bin/vmrecv" --run-dir "$run_dir" -v demo-copy

step "the source stays paused"
"$bin/vmctl" --run-dir "$run_dir" status demo

step "the copy continues where the source stopped"
sleep 2
"$bin/vmctl" --run-dir "$run_dir" status demo-copy
"$bin/vmctl" --run-dir "$run_dir" console demo-copy | tail -n 4
