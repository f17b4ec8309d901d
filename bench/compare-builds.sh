#!/usr/bin/env bash
# Two builds of our tools side by side in one run: is a change slower? For each run, in a random order, each
# build sends the standard image warm through a pipe into a paused receiver (e2e), saves it to /dev/null
# (save-null) and with LZ4 (e2e-lz4). Prints the raw lines and the median of the per-run ratios NEW/OLD.
# Usage: bench/compare-builds.sh [-n RUNS] [--size SIZE] OLD_BIN_DIR NEW_BIN_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
runs=5 size=2G
while [ $# -gt 2 ]; do
    case "$1" in
        -n) runs=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        *) echo "usage: $0 [-n RUNS] [--size SIZE] OLD_BIN_DIR NEW_BIN_DIR" >&2; exit 2 ;;
    esac
done
[ $# -eq 2 ] || { echo "usage: $0 [-n RUNS] [--size SIZE] OLD_BIN_DIR NEW_BIN_DIR" >&2; exit 2; }
old=$(cd "$1" && pwd) new=$(cd "$2" && pwd)
work=$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/compare-builds.XXXXXX")
declare -A vmrun_pid=()
current_bin=""
cleanup() {
    [ -z "$current_bin" ] || destroy_vms "$current_bin/vmctl" "$work/run" vmrun_pid src dst
    stop_jobs_and_remove "$work"
}
trap cleanup EXIT
mkdir -p "$work/run"
python3 "$here/make-image.py" "$work/image" --size "$size" >/dev/null
memory=$(( $(stat -c %s "$work/image") / 1048576 ))M
# The source's RAM: a sparse copy of the image made once, as throughput.sh does (memory a source has just
# written makes the receiver's fresh memory dearer on some hosts). Builds from before --memory-file both load
# the image instead, so the two are always measured alike.
source_ram=(--memory-image "$work/image")
if "$old/vmrun" --help 2>&1 | grep -q -- --memory-file && "$new/vmrun" --help 2>&1 | grep -q -- --memory-file; then
    cp --sparse=always "$work/image" "$work/ram.img"
    source_ram=(--memory-file "$work/ram.img")
fi

start_source() {  # BIN: a paused VM whose RAM is the image, in the foreground of a job of ours
    "$1/vmrun" --foreground --memory "$memory" "${source_ram[@]}" --paused --run-dir "$work/run" src \
        >>"$work/vmrun.log" 2>&1 &
    vmrun_pid[src]=$!
    until "$1/vmctl" --run-dir "$work/run" status src >/dev/null 2>&1; do sleep 0.1; done
}

measure() {  # BIN LABEL MEASURE
    local bin=$1 label=$2 what=$3 timing
    current_bin=$bin
    start_source "$bin"
    case "$what" in
        e2e) timing=$(python3 "$here/timed.py" -- "$bin/vmsend" --warm --run-dir "$work/run" src \
                 --pipe "$bin/vmrecv" --paused --run-dir "$work/run" dst) ;;
        e2e-lz4) timing=$(python3 "$here/timed.py" -- "$bin/vmsend" --warm -c lz4 --run-dir "$work/run" src \
                 --pipe "$bin/vmrecv" --paused --run-dir "$work/run" dst) ;;
        save-null) timing=$(python3 "$here/timed.py" --stdout /dev/null -- "$bin/vmsend" --warm --run-dir "$work/run" src) ;;
    esac
    destroy_vms "$bin/vmctl" "$work/run" vmrun_pid src dst
    current_bin=""
    printf '%s\t%s\t%s\t%s\n' "$label" "$what" "$run" "${timing%% *}"
}

echo "# old: $old"
echo "# new: $new"
echo "# source RAM: ${source_ram[0]}"
seed=${SEED:-$RANDOM}
echo "# order seed: $seed"
RANDOM=$seed
results="$work/results.tsv"
for run in $(seq 1 "$runs"); do
    for what in e2e save-null e2e-lz4; do
        if ((RANDOM % 2)); then order=(old new); else order=(new old); fi
        for label in "${order[@]}"; do
            if [ "$label" = old ]; then measure "$old" old "$what"; else measure "$new" new "$what"; fi
        done
    done
done | tee "$results"
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]) if not line.startswith("#")]
times = {}
for label, what, run, seconds in rows:
    times.setdefault((what, run), {})[label] = float(seconds)
print("\nmeasure\tmedian new/old\tmin\tmax\t(below 1: the new build is faster)")
for what in ["e2e", "save-null", "e2e-lz4"]:
    ratios = [t["new"] / t["old"] for (w, _), t in times.items() if w == what and "new" in t and "old" in t]
    if ratios:
        print(f"{what}\t{statistics.median(ratios):.3f}\t{min(ratios):.3f}\t{max(ratios):.3f}")
PY
