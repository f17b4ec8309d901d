#!/usr/bin/env bash
# The physical limits on this machine: a pipe fed by write() (64 KiB) and by vmsplice()
# (1 MiB), memcpy, zero scanning, filling a new memfd (bench/pipelimit.c, compiled here with gcc), `cat` of the image
# through a pipe, and `lz4 -1` on the image (time and size). Prints tab-separated lines:
#   tool measure run seconds payload_bytes wire_bytes - -
# (wire_bytes: the compressed size for lz4, else "-"). Cleans up its temporary folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage() { echo "usage: $0 [-n RUNS] [--bytes TOTAL] IMAGE" >&2; exit 2; }

elapsed() {  # COMMAND... : runs it, prints its wall-clock seconds
    local start=$EPOCHREALTIME
    "$@"
    local end=$EPOCHREALTIME
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.4f}')" "$start" "$end"
}

cat_through_pipe() { cat "$1" | cat > /dev/null; }
lz4_compress() { lz4 -q -1 -c "$1" > "$2"; }
lz4_decompress() { lz4 -q -d -c "$1" > /dev/null; }

main() {
    local runs=3 total=$((4 << 30))
    while (($#)); do
        case "$1" in
            -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
            --bytes) [ $# -ge 2 ] || usage; total="$2"; shift 2 ;;
            -h|--help) usage ;;
            -*) echo "pipe-limits: unknown option $1" >&2; usage ;;
            *) break ;;
        esac
    done
    [ $# -eq 1 ] || usage
    local image="$1"
    [ -f "$image" ] || { echo "pipe-limits: no image at $image (make one with bench/make-image.py)" >&2; exit 1; }
    command -v gcc >/dev/null || { echo "pipe-limits: gcc is needed (apt-get install gcc)" >&2; exit 1; }
    command -v lz4 >/dev/null || { echo "pipe-limits: lz4 is needed (apt-get install lz4)" >&2; exit 1; }

    scratch="$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/pipe-limits.XXXXXX")"
    gcc -O2 -Wall -Wextra -Werror -o "$scratch/pipelimit" "$here/pipelimit.c"
    local tool="$scratch/pipelimit" mib=$((1 << 20)) size
    size=$(stat -c %s "$image")
    "$tool" write $((64 << 10)) "$total" "$runs"
    "$tool" vmsplice "$mib" "$total" "$runs"
    "$tool" write $((64 << 10)) "$total" "$runs" $((64 << 10))
    "$tool" vmsplice "$mib" "$total" "$runs" "$mib"
    "$tool" memcpy "$mib" "$total" "$runs"
    "$tool" zeroscan 1 "$total" "$runs"
    "$tool" memfd-fill "$mib" $((1 << 30)) "$runs" "$mib"

    cat "$image" > /dev/null  # into the page cache before anything is timed
    local run seconds
    for ((run = 1; run <= runs; run++)); do
        seconds=$(elapsed cat_through_pipe "$image")
        printf 'limit\tcat-image-pipe\t%d\t%s\t%d\t-\t-\t-\n' "$run" "$seconds" "$size"
    done
    for ((run = 1; run <= runs; run++)); do
        seconds=$(elapsed lz4_compress "$image" "$scratch/image.lz4")
        printf 'limit\tlz4-1-compress\t%d\t%s\t%d\t%d\t-\t-\n' "$run" "$seconds" "$size" "$(stat -c %s "$scratch/image.lz4")"
    done
    for ((run = 1; run <= runs; run++)); do
        seconds=$(elapsed lz4_decompress "$scratch/image.lz4")
        printf 'limit\tlz4-decompress\t%d\t%s\t%d\t%d\t-\t-\n' "$run" "$seconds" "$size" "$(stat -c %s "$scratch/image.lz4")"
    done
}

scratch=""
trap '[ -z "$scratch" ] || rm -rf "$scratch"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
main "$@"
