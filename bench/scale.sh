#!/usr/bin/env bash
# The scale check: the same 1 GiB image migrated end to end (vmsend --warm | vmrecv --paused)
# in a 1 GiB guest and in a 16 GiB guest, pairwise per run. The untouched 15 GiB must cost nothing:
# holes are skipped with SEEK_DATA, and mapping 16 GiB of a file or a memfd only reserves address space.
# Prints the usual tab-separated lines (bench/README.md), then the ratio 16G/1G per run on stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage() { echo "usage: $0 [-n RUNS] [--big SIZE] [--image IMAGE_1G]" >&2; exit 2; }

tool() {  # NAME -> path of our built tool
    local dir
    for dir in "$here/../.build/release" "$here/../.build/debug"; do
        [ -x "$dir/$1" ] && { echo "$dir/$1"; return; }
    done
    echo "scale: $1 is not built (swift build -c release)" >&2
    exit 1
}

migrate() {  # MEMORY RUN: one end-to-end migration of the image in a guest of MEMORY; prints its line
    local memory="$1" run="$2" timing seconds send_rss recv_rss
    # The source's RAM is a sparse copy of the image grown to MEMORY (the rest a hole), made once: as in
    # throughput.sh, starting the source writes no memory of its own.
    local ram="$work/ram-$memory.img"
    if [ ! -f "$ram" ]; then
        cp --sparse=always "$image" "$ram"
        truncate -s "$memory" "$ram"
    fi
    "$vmrun" --memory "$memory" --memory-file "$ram" --paused --run-dir "$work/run" src >>"$work/vmrun.log" 2>&1 &
    until "$vmctl" --run-dir "$work/run" status src >/dev/null 2>&1; do sleep 0.05; done
    timing="$(python3 "$here/timed.py" -- "$vmsend" --warm --run-dir "$work/run" src \
        --pipe "$vmrecv" --paused --run-dir "$work/run" dst)"
    "$vmctl" --run-dir "$work/run" destroy src >/dev/null
    "$vmctl" --run-dir "$work/run" destroy dst >/dev/null
    wait  # for the source's vmrun; the destination's went to the background under vmrecv
    while "$vmctl" --run-dir "$work/run" status dst >/dev/null 2>&1; do sleep 0.05; done
    read -r seconds send_rss recv_rss <<<"$timing"
    printf 'ours\te2e-%s-guest\t%d\t%s\t%d\t-\t%s\t%s\n' "$memory" "$run" "$seconds" "$(stat -c %s "$image")" "$send_rss" "$recv_rss"
}

main() {
    local runs=3 big=16G
    image=""
    while (($#)); do
        case "$1" in
            -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
            --big) [ $# -ge 2 ] || usage; big="$2"; shift 2 ;;
            --image) [ $# -ge 2 ] || usage; image="$2"; shift 2 ;;
            *) usage ;;
        esac
    done
    vmrun="$(tool vmrun)" vmsend="$(tool vmsend)" vmrecv="$(tool vmrecv)" vmctl="$(tool vmctl)"
    work="$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/scale.XXXXXX")"
    mkdir -p "$work/run"
    if [ -z "$image" ]; then
        image="$work/image-1G.img"
        python3 "$here/make-image.py" --size 1G "$image" >&2
    elif (($(stat -c %s "$image") > 1 << 30)); then
        echo "scale: $image is larger than the 1 GiB guest" >&2
        exit 2
    fi
    local run small big_line small_line
    for ((run = 1; run <= runs; run++)); do
        small_line="$(migrate 1G "$run")"
        big_line="$(migrate "$big" "$run")"
        printf '%s\n%s\n' "$small_line" "$big_line"
        small="$(cut -f4 <<<"$small_line")"
        echo "scale: run $run: ${big} guest / 1G guest = $(python3 -c "print(f'{$(cut -f4 <<<"$big_line") / $small:.2f}')")" >&2
    done
}

work=""
cleanup() {
    if [ -n "$work" ]; then
        "${vmctl:-true}" --run-dir "$work/run" destroy src >/dev/null 2>&1 || true
        "${vmctl:-true}" --run-dir "$work/run" destroy dst >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
main "$@"
