#!/usr/bin/env bash
# The README's main job: start the bundled guest, live-migrate it with `vmsend | vmrecv` under a new name,
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

step "start the bundled guest: 2 vCPUs, 1 GiB, dirtying a 128 MiB working set at 50 MB/s"
"$bin/vmrun" --run-dir "$run_dir" --cpus 2 --memory 1G --guest-working-set 128M --guest-dirty-rate 50M/s demo
sleep 2
"$bin/vmctl" --run-dir "$run_dir" status demo

step "live migration: vmsend -v demo | vmrecv -v demo-copy"
"$bin/vmsend" --run-dir "$run_dir" -v demo | "$bin/vmrecv" --run-dir "$run_dir" -v demo-copy

step "the source stays paused"
"$bin/vmctl" --run-dir "$run_dir" status demo

step "the copy continues where the source stopped: ticks go on, every check passes"
sleep 2
"$bin/vmctl" --run-dir "$run_dir" status demo-copy
"$bin/vmctl" --run-dir "$run_dir" console demo-copy | tail -n 4
failed=$("$bin/vmctl" --run-dir "$run_dir" status --json demo-copy | python3 -c 'import json,sys; print(sum(v["checksFailed"] for v in json.load(sys.stdin)["vcpus"]))')
if [ "$failed" != 0 ]; then echo "demo: the copy reported $failed failed checks" >&2; exit 1; fi
echo "demo: the guest carried on after the migration with every check passing"
