#!/usr/bin/env bash
# The README's main job: start the bundled guest with a disk, live-migrate it with `vmsend | vmrecv` under a new
# name, show it continuing on the destination (ticks, memory and disk checks), and clean up. Then, where the Linux
# test guest can be built (scripts/build-linux-guest.sh), the same with a real Linux and its own drivers:
# its console before and after the migration. `--no-linux` skips that part.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release >/dev/null
bin=$(swift build -c release --show-bin-path)
run_dir=$(mktemp -d /tmp/vmsend-demo.XXXXXX)
cleanup() {
    for vm in demo demo-copy linux linux-copy; do "$bin/vmctl" --run-dir "$run_dir" destroy "$vm" >/dev/null 2>&1 || true; done
    rm -rf "$run_dir"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
failures() {  # NAME: failed memory and disk checks of the bundled guest
    "$bin/vmctl" --run-dir "$run_dir" status --json "$1" |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(v["checksFailed"] for v in s["vcpus"]) + (s.get("disk") or {}).get("checksFailed", 0))'
}

step "start the bundled guest: 2 vCPUs, 1 GiB, dirtying a 128 MiB working set at 50 MB/s, writing a 256 MiB disk at 4 MB/s"
truncate -s 256M "$run_dir/demo.img"
"$bin/vmrun" --run-dir "$run_dir" --cpus 2 --memory 1G --guest-working-set 128M --guest-dirty-rate 50M/s \
    --disk "$run_dir/demo.img" --guest-disk-rate 4M/s demo
sleep 2
"$bin/vmctl" --run-dir "$run_dir" status demo

step "live migration, memory and disk: vmsend -v demo | vmrecv -v demo-copy"
"$bin/vmsend" --run-dir "$run_dir" -v demo | "$bin/vmrecv" --run-dir "$run_dir" -v demo-copy

step "the source stays paused"
"$bin/vmctl" --run-dir "$run_dir" status demo

step "the copy continues where the source stopped: ticks go on, every memory and disk check passes"
sleep 2
"$bin/vmctl" --run-dir "$run_dir" status demo-copy
"$bin/vmctl" --run-dir "$run_dir" console demo-copy | tail -n 4
failed=$(failures demo-copy)
if [ "$failed" != 0 ]; then echo "demo: the copy reported $failed failed checks" >&2; exit 1; fi
echo "demo: the guest carried on after the migration with every check passing"

[ "${1:-}" = --no-linux ] && exit 0
if ! guest=$(scripts/build-linux-guest.sh --print-dir 2>"$run_dir/build.err"); then
    echo "demo: no Linux run: the Linux test guest could not be built ($(tail -n 1 "$run_dir/build.err"))"
    exit 0
fi

step "boot Linux (kernel and initramfs from scripts/build-linux-guest.sh) with a disk; this host emulates ring 0, so this takes a while"
truncate -s 64M "$run_dir/linux.img"
"$bin/vmrun" --run-dir "$run_dir" --memory 128M --kernel "$guest/vmlinux" --initrd "$guest/initramfs" \
    --disk "$run_dir/linux.img" linux
until "$bin/vmctl" --run-dir "$run_dir" console linux | grep -q "vmtest: beat=3"; do sleep 2; done
"$bin/vmctl" --run-dir "$run_dir" console linux | grep -E "virtio_blk|vmtest" | tail -n 4

step "live migration of the running Linux: vmsend -v linux | vmrecv -v linux-copy"
"$bin/vmsend" --run-dir "$run_dir" -v linux | "$bin/vmrecv" --run-dir "$run_dir" -v linux-copy
sleep 3
step "the copy's console: the heartbeat goes on where it stopped, no failure counted"
"$bin/vmctl" --run-dir "$run_dir" console linux-copy | grep vmtest | tail -n 3
"$bin/vmctl" --run-dir "$run_dir" status linux-copy
"$bin/vmctl" --run-dir "$run_dir" status --json linux-copy | python3 -c '
import json, sys
beat = json.load(sys.stdin)["heartbeat"]["fields"]
bad = {k: beat[k] for k in ("mem_failures", "disk_failures", "clock_jumps") if beat.get(k) != "0"}
sys.exit("demo: the Linux copy reported %s" % bad if bad else 0)'
echo "demo: Linux carried on after the migration, its own checks passing"
