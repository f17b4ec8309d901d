#!/usr/bin/env bash
# QEMU's migration of the benchmark image, the peer of issue 6: save to /dev/null, save to a file,
# restore from that file, and end to end through a FIFO. Prints one tab-separated line per run:
#   tool measure run seconds payload_bytes wire_bytes src_peak_rss_kib dst_peak_rss_kib
# Installs qemu-system-x86 if it is missing. Cleans up its temporary folder and QEMU processes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
usage() {
    echo "usage: $0 [-n RUNS] [--first-run K] [--verify] [--workdir DIR] IMAGE [save-null|save-file|restore|e2e ...]" >&2
    exit 2
}

# QEMU's RAM: a full (non-sparse) copy of the image. QEMU maps it MAP_PRIVATE (share=off) and
# reads every page; on tmpfs a read fault fills a hole for good, which would change the image
# our own tools see. A separate, already filled copy keeps both sides' inputs fixed from run 1.
qemu_ram_copy() {  # IMAGE WORKDIR -> prints the copy's path
    local copy="$2/qemu-ram.img"
    if [ ! -f "$copy" ] || [ "$1" -nt "$copy" ]; then
        cp --sparse=never "$1" "$copy.part" && mv "$copy.part" "$copy"
    fi
    echo "$copy"
}

main() {
    local runs=1 first=1 verify=() workdir=""
    while (($#)); do
        case "$1" in
            -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
            --first-run) [ $# -ge 2 ] || usage; first="$2"; shift 2 ;;
            --verify) verify=(--verify); shift ;;
            --workdir) [ $# -ge 2 ] || usage; workdir="$2"; shift 2 ;;
            -h|--help) usage ;;
            -*) echo "qemu-migrate: unknown option $1" >&2; usage ;;
            *) break ;;
        esac
    done
    [ $# -ge 1 ] || usage
    local image="$1"; shift
    (($#)) || set -- save-null save-file restore e2e
    [ -f "$image" ] || { echo "qemu-migrate: no image at $image (make one with bench/make-image.py)" >&2; exit 1; }
    ensure_qemu
    if [ -z "$workdir" ]; then
        workdir="$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/qemu-bench.XXXXXX")"
        own_workdir="$workdir"
    fi
    local ram
    ram="$(qemu_ram_copy "$image" "$workdir")"
    # In the background so that a signal runs the trap at once; its QEMUs die with it.
    python3 "$here/qemu_bench.py" --workdir "$workdir" --runs "$runs" --first-run "$first" \
        "${verify[@]}" "$ram" "$@" &
    child=$!
    wait "$child"
    child=""
}

child="" own_workdir=""
cleanup() {
    [ -z "$child" ] || { kill "$child" 2>/dev/null; wait "$child" 2>/dev/null || true; }
    [ -z "$own_workdir" ] || rm -rf "$own_workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

main "$@"
