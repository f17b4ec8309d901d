#!/usr/bin/env bash
# The Linux benchmark: live migration and cold restore of the Linux test guest (guest/linux), ours and
# QEMU 10 -M microvm side by side in one run, in a random interleaved order (bench/linux_bench.py does the
# measuring; bench/linux_report.py the tables). Same vmlinux and initramfs, 128 MiB, 1 vCPU, a 64 MiB sparse
# disk image on both sides. Each tool boots the guest once and moves it from instance to instance.
#
# usage: bench/linux.sh [-n RUNS] [--seed S] [--settings LIST] [--results FILE.tsv]
#   -n RUNS          every setting this many times (default 5)
#   --seed S         the random order (printed; the same seed repeats it)
#   --settings LIST  comma-separated, default all:
#                    ours-disk,ours-shared,qemu-20,qemu-300,restore-ours,restore-qemu
#   --results FILE   keep the tab-separated lines there (and the tools' output and failures in FILE .log)
# Needs the release build (.build/release; $VMRUN, $VMSEND, $VMRECV, $VMCTL override), python3, root and
# /dev/kvm; fetches QEMU 10 with bench/qemu10.sh and the guest with scripts/build-linux-guest.sh (both
# cached). Everything lives in one folder under $BENCH_TMPDIR (default /dev/shm), removed on any exit with
# every VM and QEMU it started. Prints the report (markdown) on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage() { sed -n '6,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
say() { echo "linux.sh: $*" >&2; }

find_tool() {  # NAME -> path ($NAME in upper case overrides), or nothing
    local name="$1" upper dir
    upper="$(tr '[:lower:]' '[:upper:]' <<<"$name")"
    if [ -n "${!upper:-}" ]; then echo "${!upper}"; return; fi
    for dir in "$here/../.build/release" "$here/../.build/debug"; do
        [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
    done
    command -v "$name" || true
}

runs=5 seed="" settings="" results=""
while (($#)); do
    case "$1" in
        -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
        --seed) [ $# -ge 2 ] || usage; seed="$2"; shift 2 ;;
        --settings) [ $# -ge 2 ] || usage; settings="$2"; shift 2 ;;
        --results) [ $# -ge 2 ] || usage; results="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) say "unknown argument $1"; usage ;;
    esac
done
[ -n "$seed" ] || seed=$(( $(od -An -N4 -tu4 /dev/urandom) % 1000000 ))
[ -e /dev/kvm ] || { say "/dev/kvm is missing"; exit 1; }

VMRUN="$(find_tool vmrun)" VMSEND="$(find_tool vmsend)" VMRECV="$(find_tool vmrecv)" VMCTL="$(find_tool vmctl)"
if [ -z "$VMRUN" ] || [ -z "$VMSEND" ] || [ -z "$VMRECV" ] || [ -z "$VMCTL" ]; then
    say "vmrun, vmsend, vmrecv or vmctl missing: build with 'swift build -c release' first"; exit 1
fi
guest="$("$here/../scripts/build-linux-guest.sh" --print-dir)"
qemu="$("$here/qemu10.sh")"
qemu_root="${qemu%/usr/bin/*}"
qemu_how=(--qemu "$qemu" --qemu-module-dir "$qemu_root/usr/lib/x86_64-linux-gnu/qemu")
while read -r folder; do qemu_how+=(--qemu-data-dir "$folder"); done < <("$here/qemu10.sh" --firmware)
[ ! -d "$qemu_root/lib" ] || export LD_LIBRARY_PATH="$qemu_root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

work="$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/linux-bench.XXXXXX")"
child=""
cleanup() {
    [ -z "$child" ] || { kill "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; }
    # Whatever the driver left running: machines in our private run folder, then every vmrun and QEMU it
    # started, by the pids it noted (only while that pid's command line still names our folder).
    local sock pid
    for sock in "$work"/run/*.sock; do
        [ -e "$sock" ] || continue
        "$VMCTL" --run-dir "$work/run" destroy "$(basename "$sock" .sock)" >/dev/null 2>&1 || true
    done
    if [ -f "$work/pids" ]; then
        while read -r pid; do
            { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$work" || continue
            kill "$pid" 2>/dev/null || true
            sleep 1
            kill -9 "$pid" 2>/dev/null || true
        done < "$work/pids"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tsv="${results:-$work/results.tsv}"
logfile="${tsv%.tsv}.log"
: > "$logfile"
load_before="$(uptime)"
say "seed $seed, $runs runs; load before: $load_before"
{
    echo "# bench/linux.sh -n $runs --seed $seed${settings:+ --settings $settings}"
    echo "# date $(date -u +%Y-%m-%dT%H:%M:%SZ) host $(uname -r) $(nproc) cores; qemu $("$qemu" --version | head -1)"
    echo "# guest $guest"
    echo "# load before: $load_before"
} > "$tsv"
python3 "$here/linux_bench.py" --runs "$runs" --seed "$seed" \
    ${settings:+--settings "$settings"} --workdir "$work" --log "$logfile" \
    --kernel "$guest/vmlinux" --initrd "$guest/initramfs" \
    --vmrun "$VMRUN" --vmsend "$VMSEND" --vmrecv "$VMRECV" --vmctl "$VMCTL" "${qemu_how[@]}" >> "$tsv" &
child=$!
wait "$child"
child=""
echo "# load after: $(uptime)" >> "$tsv"
say "load after: $(uptime)"
python3 "$here/linux_report.py" "$tsv"
