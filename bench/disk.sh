#!/usr/bin/env bash
# Disks in the stream, measured (not asserted): in one run, in random order per run,
#   mem-e2e     the standard image as guest RAM:            vmsend --warm | vmrecv --paused
#   disk1-e2e   the same bytes as a 1 GiB disk (sparse):    vmsend --warm | vmrecv --paused --disk-dir
#   disk20-e2e  the same bytes at the start of a 20 GiB sparse disk
# then one live migration of a guest writing its disk at 50 MB/s. Prints the raw lines
# (tool measure run seconds payload_bytes wire_bytes src_peak_rss_kib dst_peak_rss_kib) and the ratios:
# disk rate over memory rate (target >= 0.7), 20 GiB over 1 GiB time (target <= 1.2), peak RSS (target < 64 MiB).
# Usage: bench/disk.sh [-n RUNS] [--size SIZE] [--results FILE.tsv]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
runs=3 size=1G results=""
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --results) results=$2; shift 2 ;;
        *) echo "usage: $0 [-n RUNS] [--size SIZE] [--results FILE.tsv]" >&2; exit 2 ;;
    esac
done
bin=""
for dir in "$here/../.build/release" "$here/../.build/debug"; do
    [ -x "$dir/vmrun" ] && { bin=$(cd "$dir" && pwd); break; }
done
[ -n "$bin" ] || { echo "disk: build the tools first (swift build -c release)" >&2; exit 1; }
work=$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/disk-bench.XXXXXX")
declare -A vmrun_pid=()
cleanup() {
    destroy_vms "$bin/vmctl" "$work/run" vmrun_pid src dst
    stop_jobs_and_remove "$work"
}
trap cleanup EXIT
mkdir -p "$work/run" "$work/dst"
python3 "$here/make-image.py" "$work/image" --size "$size" >/dev/null
bytes=$(stat -c %s "$work/image")
cp --sparse=always "$work/image" "$work/disk1.img"
cp --sparse=always "$work/image" "$work/ram.img"  # the memory source's RAM, as in throughput.sh
cp --sparse=always "$work/image" "$work/disk20.img"
truncate -s 20G "$work/disk20.img"

start_source() {  # NAME ARGS...: a paused VM, in the foreground of a job of ours
    local name=$1
    shift
    "$bin/vmrun" --foreground --paused --run-dir "$work/run" "$@" "$name" >>"$work/vmrun.log" 2>&1 &
    vmrun_pid[$name]=$!
    until "$bin/vmctl" --run-dir "$work/run" status "$name" >/dev/null 2>&1; do sleep 0.1; done
}

measure() {  # MEASURE RUN
    local what=$1 run=$2 timing wire
    case "$what" in
        mem-e2e) start_source src --memory "$((bytes >> 20))M" --memory-file "$work/ram.img" ;;
        disk1-e2e) start_source src --memory 64M --disk "$work/disk1.img" ;;
        disk20-e2e) start_source src --memory 64M --disk "$work/disk20.img" ;;
    esac
    timing=$(python3 "$here/timed.py" -- "$bin/vmsend" --warm --run-dir "$work/run" src \
        --pipe "$bin/vmrecv" --paused -F --disk-dir "$work/dst" --run-dir "$work/run" dst 2>>"$work/tools.log")
    destroy_vms "$bin/vmctl" "$work/run" vmrun_pid src dst
    rm -f "$work/dst/"*
    read -r seconds src_rss dst_rss <<<"$timing"
    printf 'ours\t%s\t%s\t%s\t%s\t-\t%s\t%s\n' "$what" "$run" "$seconds" "$bytes" "$src_rss" "$dst_rss"
}

seed=${SEED:-$RANDOM}
echo "# disk benchmark, $size standard image, order seed $seed"
RANDOM=$seed
out="$work/results.tsv"
for run in $(seq 1 "$runs"); do
    order=(mem-e2e disk1-e2e disk20-e2e)
    for i in 2 1; do j=$((RANDOM % (i + 1))); t=${order[$i]}; order[$i]=${order[$j]}; order[$j]=$t; done
    for what in "${order[@]}"; do measure "$what" "$run"; done
done | tee "$out"
[ -z "$results" ] || cp "$out" "$results"

# Live: a guest writing the first 16 MiB of its disk at 50 MB/s while its memory is dirtied flat out.
truncate -s 1G "$work/live.img"
"$bin/vmrun" --foreground --run-dir "$work/run" --memory 256M --guest-working-set 32M --disk "$work/live.img" \
    --guest-disk-rate 50M/s src >>"$work/vmrun.log" 2>&1 &
vmrun_pid[src]=$!
until "$bin/vmctl" --run-dir "$work/run" status src >/dev/null 2>&1; do sleep 0.1; done
sleep 2
"$bin/vmsend" -v --run-dir "$work/run" src 2>"$work/live.err" | "$bin/vmrecv" -v -F --disk-dir "$work/dst" --run-dir "$work/run" dst 2>"$work/recv.err"
echo "# live, disk written at 50 MB/s:"
grep -E "^(round|final|sent)" "$work/live.err" | sed 's/^/#   /'
sed 's/^/#   /' "$work/recv.err"
sleep 1
"$bin/vmctl" --run-dir "$work/run" status dst | grep -E "disk|vcpu" | sed 's/^/#   copy: /'

python3 - "$out" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if not l.startswith("#")]
time = {}
rss = []
for tool, what, run, seconds, payload, wire, src, dst in rows:
    time.setdefault(run, {})[what] = float(seconds)
    if what.startswith("disk"):
        rss += [int(src), int(dst)]
def ratios(a, b):
    return [t[a] / t[b] for t in time.values() if a in t and b in t]
mem_over_disk = ratios("mem-e2e", "disk1-e2e")
big_over_small = ratios("disk20-e2e", "disk1-e2e")
print("\nmeasure\tmedian\tmin\tmax\ttarget")
print("disk rate / memory rate\t%.2f\t%.2f\t%.2f\t>= 0.70" % (statistics.median(mem_over_disk), min(mem_over_disk), max(mem_over_disk)))
print("20 GiB / 1 GiB disk time\t%.2f\t%.2f\t%.2f\t<= 1.20" % (statistics.median(big_over_small), min(big_over_small), max(big_over_small)))
print("peak RSS of vmsend/vmrecv with disks\t%d MiB max\t\t\t< 64 MiB" % (max(rss) // 1024))
PY
