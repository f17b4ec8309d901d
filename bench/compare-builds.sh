#!/usr/bin/env bash
# Two builds of our tools side by side in one run: is a change slower? For each run and measure, in a random
# order, each build sends the standard image warm through a pipe into a paused receiver (e2e), restores it from
# a saved stream (restore), saves it to /dev/null (save-null) and sends it with LZ4 (e2e-lz4). Before each
# measure the host settles, as in throughput.sh. Prints the raw lines and the median of the per-run ratios NEW/OLD.
# Usage: bench/compare-builds.sh [-n RUNS] [--size SIZE] [--measures LIST] [--no-settle] OLD_BIN_DIR NEW_BIN_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
runs=5 size=2G measures=e2e,restore,save-null,e2e-lz4 with_settle=true
usage() { echo "usage: $0 [-n RUNS] [--size SIZE] [--measures LIST] [--no-settle] OLD_BIN_DIR NEW_BIN_DIR" >&2; exit 2; }
while [ $# -gt 2 ]; do
    case "$1" in
        -n) runs=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --measures) measures=$2; shift 2 ;;
        --no-settle) with_settle=false; shift ;;
        *) usage ;;
    esac
done
[ $# -eq 2 ] || usage
for what in ${measures//,/ }; do
    [[ "$what" =~ ^(e2e|restore|save-null|e2e-lz4)$ ]] || { echo "compare-builds: unknown measure $what" >&2; exit 2; }
done
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
knows_memory_file() { local help; help="$("$1/vmrun" --help 2>&1 || true)"; [[ "$help" == *--memory-file* ]]; }
if knows_memory_file "$old" && knows_memory_file "$new"; then
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
    [ "$what" = restore ] || start_source "$bin"
    if $with_settle; then settle 30; fi
    case "$what" in
        e2e) timing=$(python3 "$here/timed.py" -- "$bin/vmsend" --warm --run-dir "$work/run" src \
                 --pipe "$bin/vmrecv" --paused --run-dir "$work/run" dst) ;;
        e2e-lz4) timing=$(python3 "$here/timed.py" -- "$bin/vmsend" --warm -c lz4 --run-dir "$work/run" src \
                 --pipe "$bin/vmrecv" --paused --run-dir "$work/run" dst) ;;
        save-null) timing=$(python3 "$here/timed.py" --stdout /dev/null -- "$bin/vmsend" --warm --run-dir "$work/run" src) ;;
        restore) timing=$(python3 "$here/timed.py" --stdin "$work/saved.stream" -- "$bin/vmrecv" --paused \
                 --run-dir "$work/run" dst) ;;
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
if [[ ",$measures," == *,restore,* ]]; then  # one stream, saved by the new build, for both to restore
    current_bin=$new
    start_source "$new"
    "$new/vmsend" --warm --run-dir "$work/run" src > "$work/saved.stream"
    destroy_vms "$new/vmctl" "$work/run" vmrun_pid src
    current_bin=""
fi
for run in $(seq 1 "$runs"); do
    for what in ${measures//,/ }; do
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
for what in ["e2e", "restore", "save-null", "e2e-lz4"]:
    ratios = [t["new"] / t["old"] for (w, _), t in times.items() if w == what and "new" in t and "old" in t]
    if ratios:
        print(f"{what}\t{statistics.median(ratios):.3f}\t{min(ratios):.3f}\t{max(ratios):.3f}")
PY
