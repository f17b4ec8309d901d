#!/usr/bin/env bash
# QEMU's migration of the benchmark image, the peer our tools are measured against: save to
# /dev/null, save to a file, restore from that file, end to end through a FIFO; with QEMU 10 also
# multifd end to end over a unix socket and mapped-ram save/restore (bench/qemu_bench.py).
# Prints one tab-separated line per run:
#   tool measure run seconds payload_bytes wire_bytes src_peak_rss_kib dst_peak_rss_kib cpu_seconds
# --peer qemu72 (default): the system's qemu-system-x86 (Debian 12: 7.2), installed if missing;
#   its destination RAM is anonymous memory (memory-backend-ram).
# --peer qemu10: QEMU 10 from bookworm-backports, unpacked beside it by bench/qemu10.sh; its
#   destination RAM is a fresh file in /dev/shm (share=on), as vmrecv's memfd.
# Cleans up its temporary folder and QEMU processes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
usage() {
    echo "usage: $0 [-n RUNS] [--first-run K] [--verify] [--workdir DIR] [--peer qemu72|qemu10] IMAGE [MEASURE ...]" >&2
    echo "  MEASURE: save-null save-file restore e2e (default: these four); e2e-multifd save-mapped-ram restore-mapped-ram" >&2
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
    local runs=1 first=1 verify=() workdir="" peer=qemu72
    while (($#)); do
        case "$1" in
            -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
            --first-run) [ $# -ge 2 ] || usage; first="$2"; shift 2 ;;
            --verify) verify=(--verify); shift ;;
            --workdir) [ $# -ge 2 ] || usage; workdir="$2"; shift 2 ;;
            --peer) [ $# -ge 2 ] || usage; peer="$2"; shift 2 ;;
            -h|--help) usage ;;
            -*) echo "qemu-migrate: unknown option $1" >&2; usage ;;
            *) break ;;
        esac
    done
    [ $# -ge 1 ] || usage
    local image="$1"; shift
    (($#)) || set -- save-null save-file restore e2e
    [ -f "$image" ] || { echo "qemu-migrate: no image at $image (make one with bench/make-image.py)" >&2; exit 1; }
    local how=()
    case "$peer" in
        qemu72) ensure_qemu ;;
        qemu10)
            local binary root folder
            binary="$("$here/qemu10.sh")"
            root="${binary%/usr/bin/*}"
            how=(--qemu "$binary" --module-dir "$root/usr/lib/x86_64-linux-gnu/qemu" --dst-memory /dev/shm)
            while read -r folder; do how+=(--data-dir "$folder"); done < <("$here/qemu10.sh" --firmware)
            [ ! -d "$root/lib" ] || export LD_LIBRARY_PATH="$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
        *) echo "qemu-migrate: unknown peer $peer (qemu72 or qemu10)" >&2; exit 2 ;;
    esac
    if [ -z "$workdir" ]; then
        workdir="$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/qemu-bench.XXXXXX")"
        own_workdir="$workdir"
    fi
    local ram
    ram="$(qemu_ram_copy "$image" "$workdir")"
    # In the background so that a signal runs the trap at once; its QEMUs die with it.
    python3 "$here/qemu_bench.py" --workdir "$workdir" --runs "$runs" --first-run "$first" \
        --tool "$peer" "${how[@]}" "${verify[@]}" "$ram" "$@" &
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
