#!/usr/bin/env bash
# The throughput benchmark: our migration and its peers (QEMU 7.2, QEMU 10) side by side in one run
# on the standard image, with the fresh-memory limit of this host measured in between, then the
# pipe/memory/lz4 limits; prints a markdown report.
# Per run every measure of every tool (QEMU 7.2: save-file, save-null, restore, e2e; QEMU 10: e2e
# through exec:, e2e multifd, mapped-ram save and restore; ours: save-file, save-null, restore,
# e2e, each uncompressed and with LZ4; the fresh-memory variants of bench/freshmem.c) runs once, and
# REPEATED_ITEMS a second time, in a random order drawn from a printed seed (a restore after its save). Before each measure the
# script waits for the host's free page reporting to go idle (settle in lib.sh).
# With --hugepages (root), the run also lands on 2 MiB huge pages: ours e2e and restore into
# `vmrecv --hugepages`, QEMU 10's multifd e2e and mapped-ram restore into a hugetlb memfd, and the
# fills of a used pool (freshmem hugetlb-kept, -ahead); the pool of 2 MiB pages is grown for one
# destination and touched before each measure on it, as a host that keeps one has it, and put back after.
# Our side needs vmrun, vmsend, vmrecv and vmctl (found in $VMRUN.., .build/release, .build/debug
# or PATH); while any is missing it is skipped with a message. Cleans up on any exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
MEASURES=(save-file save-null restore e2e)
QEMU10_MEASURES=(e2e e2e-multifd save-mapped-ram restore-mapped-ram)
# The fills measured by default: vmrecv's way (hybrid-2threads, the limit) and the ways it is made of; --fresh all
# adds the rest freshmem knows (ways tried and dropped, huge pages), measured in earlier runs.
FRESH_VARIANTS=(hybrid-2threads pwrite pwrite-2threads memcpy-2threads alloc-only)
ALL_FRESH_VARIANTS=(hybrid-2threads hybrid-2threads-kept pwrite pwrite-2threads memcpy memcpy-2threads store-2threads
                    populate-ahead populate-ahead-pwrite fallocate-ahead alloc-only hugetlb thp-tmpfs thp-memfd)
HUGE_PAGE_ITEMS=(ours:e2e-hugepages:none ours:restore-hugepages:none fresh:hugetlb-kept fresh:hugetlb-kept-ahead
                 qemu10:e2e-multifd-hugepages qemu10:restore-mapped-ram-hugepages)
# Measured twice in every run (the second as MEASURE-again): identical work, to show how far apart this host
# puts it within one run, which is what a pairwise target is up against.
REPEATED_ITEMS=(ours:e2e:none ours:restore:none qemu10:e2e-multifd qemu10:restore-mapped-ram fresh:hybrid-2threads)

usage() {
    cat >&2 <<EOF
usage: $0 [-n RUNS] [--peers LIST] [--seed SEED] [--size SIZE] [--image IMAGE] [--results FILE.tsv]
          [--no-ours] [--fresh LIST|all] [--no-fresh] [--no-limits] [--no-settle] [--no-repeats] [--hugepages]
  -n RUNS        runs of each measurement (default 3)
  --peers LIST   the peers to measure, comma-separated: qemu72, qemu10 (default qemu72,qemu10;
                 "" for none; --no-qemu is the same)
  --seed SEED    seed of the run order (default: drawn, and printed)
  --size SIZE    size of the generated standard image (default 2G)
  --image IMAGE  use this image instead of generating one
  --results FILE also keep the raw tab-separated results there
  --fresh LIST   the fills of fresh memory to measure, comma-separated variants of bench/freshmem.c
                 (default ${FRESH_VARIANTS[*]}; all: every one)
  --no-fresh     without the fresh-memory limit (bench/freshmem.c); --no-limits: without it and
                 without the pipe/memory/lz4 limits
  --no-settle    do not wait for the host's free page reporting between measures
  --no-repeats   without the second run of ours e2e and restore, QEMU 10 multifd and mapped-ram
                 restore and the limit's fill in each run (MEASURE-again: identical work, its spread)
  --hugepages    also measure destinations on a used pool of 2 MiB huge pages (root: grows
                 the 2 MiB pool in /sys/kernel/mm/hugepages for the run and puts it back)
EOF
    exit 2
}

# ---- our tools: the hooks the lead fills in by building vmrun/vmsend/vmrecv/vmctl --------------

find_tool() {  # NAME -> path, or nothing
    local name="$1" upper
    upper="$(tr '[:lower:]' '[:upper:]' <<<"$name")"
    local override="${!upper:-}"
    if [ -n "$override" ]; then echo "$override"; return; fi
    local dir
    for dir in "$here/../.build/release" "$here/../.build/debug"; do
        [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
    done
    command -v "$name" || true
}

ours_available() {  # sets VMRUN_BIN...; explains and returns 1 when a tool is missing
    local name missing=()
    for name in vmrun vmsend vmrecv vmctl; do
        local path
        path="$(find_tool "$name")"
        [ -n "$path" ] || missing+=("$name")
        printf -v "${name^^}_BIN" '%s' "$path"
    done
    if ((${#missing[@]})); then
        echo "throughput: ours skipped: ${missing[*]} not built (swift build -c release, or set ${missing[0]^^}=PATH)" >&2
        return 1
    fi
}

memory_argument() {  # BYTES -> the --memory value, e.g. 2G
    if (($1 % (1 << 30) == 0)); then echo "$(($1 >> 30))G"; else echo "$(($1 >> 20))M"; fi
}

ours_start_source() {  # NAME: a paused VM whose RAM is the image's copy, ready for vmsend
    local name="$1"
    # As QEMU's source maps its copy of the image, ours runs on its own (sparse) copy: neither allocates guest
    # memory when it starts. Paused and never resumed, the guest leaves the file as it found it (checked at the end).
    "$VMRUN_BIN" --memory "$(memory_argument "$image_size")" --memory-file "$work/ours-ram.img" --paused \
        --run-dir "$run_dir" "$name" >>"$work/$name.vmrun.log" 2>&1 &
    vmrun_pid["$name"]=$!
    local deadline=$((SECONDS + 120))
    until "$VMCTL_BIN" --run-dir "$run_dir" status "$name" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "throughput: vmrun $name did not come up: $(tail -c 300 "$work/$name.vmrun.log")" >&2
            return 1
        fi
        sleep 0.1
    done
}

ours_destroy() { destroy_vms "$VMCTL_BIN" "$run_dir" vmrun_pid "$@"; }  # NAME...

ours_measure() {  # MEASURE RUN COMPRESSION(none|lz4|lz4-1core): prints one result line
    local measure="$1" run="$2" compression="$3" label="$1" flags=() stream timing wire="-" pin=()
    local seconds cpu send_rss recv_rss
    case "$compression" in
        lz4) label="$measure-lz4"; flags=(-c lz4) ;;
        # The same code held to one core: the single-thread rate LZ4 on both cores is compared with.
        lz4-1core) label="$measure-lz4-1core"; flags=(-c lz4); pin=(taskset -c 0) ;;
    esac
    stream="$work/ours-${compression%-1core}.stream"
    local send=("${pin[@]}" "$VMSEND_BIN" --warm "${flags[@]}" --run-dir "$run_dir" src)
    # --paused: the destination's guest never runs, so it cannot write over the image's bytes.
    local recv=("$VMRECV_BIN" --paused --run-dir "$run_dir" dst)
    [[ "$measure" != *-hugepages ]] || recv=("$VMRECV_BIN" --paused --hugepages --run-dir "$run_dir" dst)
    case "$measure" in
        save-file|save-null)
            ours_start_source src
            local target=/dev/null
            [ "$measure" = save-file ] && target="$stream"
            timing="$(python3 "$here/timed.py" --cpu --stdout "$target" -- "${send[@]}")" || { ours_destroy src; return 1; }
            ours_destroy src
            [ -f "$stream" ] && wire="$(stat -c %s "$stream")"
            read -r seconds cpu send_rss <<<"$timing"
            recv_rss="-" ;;
        restore|restore-hugepages)
            [ -f "$stream" ] || { echo "throughput: ours restore needs $stream (save-file first)" >&2; return 1; }
            timing="$(python3 "$here/timed.py" --cpu --stdin "$stream" -- "${recv[@]}")" || { ours_destroy dst; return 1; }
            ours_destroy dst
            wire="$(stat -c %s "$stream")"
            read -r seconds cpu recv_rss <<<"$timing"
            send_rss="-" ;;
        e2e|e2e-hugepages)
            ours_start_source src
            timing="$(python3 "$here/timed.py" --cpu -- "${send[@]}" --pipe "${recv[@]}")" || { ours_destroy src dst; return 1; }
            ours_destroy src dst
            [ -f "$stream" ] && wire="$(stat -c %s "$stream")"  # same image, same stream size
            read -r seconds cpu send_rss recv_rss <<<"$timing" ;;
    esac
    printf 'ours\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n' "$label" "$run" "$seconds" "$image_size" "$wire" "$send_rss" "$recv_rss" "$cpu"
}

# ---- the run ------------------------------------------------------------------------------------

HUGEPAGE_POOL=/sys/kernel/mm/hugepages/hugepages-2048kB  # whatever the default huge page size

# grow_hugepage_pool PAGES: grows the pool of 2 MiB pages by PAGES (put back by restore_host_settings).
grow_hugepage_pool() {
    local setting=$HUGEPAGE_POOL/nr_hugepages before
    before="$(cat "$setting" 2>/dev/null || echo 0)"
    { echo $((before + $1)) > "$setting"; } 2>/dev/null || true
    touch_hugepage_pool "$1" ||
        { echo "throughput: --hugepages: the huge page pool did not grow by $1 pages (root? free memory?)" >&2; exit 1; }
    hugepage_note="grown by $1 pages of 2 MiB for the run (from $before); every free page touched before each measure on it"
}

# touch_hugepage_pool PAGES: touches every available page of the pool (at least PAGES), so that a measure lands in
# pages the host backs, as in a pool kept for guests. Untimed; needed again after freshmem's hugetlb variant, which
# grows the pool with new pages and may leave some of them in it when it shrinks it back.
touch_hugepage_pool() {
    python3 - "$1" "$HUGEPAGE_POOL" <<'PYTHON'
import mmap, os, sys
huge, pages, pool = 2 << 20, int(sys.argv[1]), sys.argv[2]
read = lambda name: int(open(f"{pool}/{name}").read())
free = read("free_hugepages") - read("resv_hugepages")
if free < pages:
    sys.exit(1)
fd = os.memfd_create("pool-touch", os.MFD_HUGETLB | os.MFD_HUGE_2MB)
os.ftruncate(fd, free * huge)
with mmap.mmap(fd, free * huge) as memory:
    for offset in range(0, free * huge, huge):
        memory[offset] = 1
os.close(fd)
PYTHON
}

qemu_measure() {  # PEER MEASURE RUN
    local verify=()
    [ "$3" = 1 ] && verify=(--verify)
    "$here/qemu-migrate.sh" --peer "$1" --workdir "$work" -n 1 --first-run "$3" "${verify[@]}" "$image" "$2"
}

fresh_measure() {  # VARIANT RUN
    "$work/freshmem" "$1" "$work/image.ranges" "$2" "$work/thp-mount"
}

run_item() {  # RUN ITEM: one measure, ITEM being [again:]TOOL:MEASURE[:COMPRESSION]
    local run="$1" item="$2" again=false tool measure compression
    if [[ "$item" == again:* ]]; then again=true item="${item#again:}"; fi
    IFS=: read -r tool measure compression <<<"$item"
    if [[ "$measure" == *-hugepages || "$measure" == hugetlb-kept* ]] && ! touch_hugepage_pool "$hugepage_pages"; then
        echo "throughput: $2: fewer than $hugepage_pages huge pages are available (a destination left behind?)" >&2
        exit 1
    fi
    case "$tool" in
        qemu72|qemu10) qemu_measure "$tool" "$measure" "$run" ;;
        ours) ours_measure "$measure" "$run" "$compression" ;;
        fresh) fresh_measure "$measure" "$run" ;;
    esac > "$work/item-lines"
    # The second time a measure runs in a run, its lines say so: MEASURE-again.
    if $again; then awk 'BEGIN { FS = OFS = "\t" } { $2 = $2 "-again"; print }' "$work/item-lines"
    else cat "$work/item-lines"; fi
}

record() {  # TSV COMMAND...: appends the command's result lines to TSV and shows them on stderr
    local tsv="$1"; shift
    "$@" > "$work/lines"  # not in a pipeline: a subshell would hide the VMs it starts from cleanup
    cat "$work/lines" >&2
    cat "$work/lines" >> "$tsv"
}

machine_description() {
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
         "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "- kvm modules: $(ls /sys/module | grep '^kvm' | tr '\n' ' ')"
    if [[ ",$peers," == *,qemu72,* ]]; then echo "- qemu72: $(qemu-system-x86_64 --version | head -1)"; fi
    if [[ ",$peers," == *,qemu10,* ]]; then echo "- qemu10: $("$("$here/qemu10.sh")" --version | head -1) (bench/qemu10.sh)"; fi
    echo "- lz4: $(lz4 --version 2>&1 | grep -o 'v[0-9.]*' | head -1)"
    echo "- run order: random, seed $seed (bench/run_order.py); settle before each measure: $settle_what"
    echo "- load average at the start: $load_at_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running shares the cores)"
    echo "- work dir: $work ($(df --output=fstype "$work" | tail -1)); runs: $runs"
    if $with_hugepages; then echo "- huge page pool: $hugepage_note"; fi
}

main() {
    runs=3 size=2G image="" results="" peers=qemu72,qemu10 with_ours=true with_limits=true with_fresh=true
    seed="" with_settle=true with_hugepages=false with_repeats=true
    while (($#)); do
        case "$1" in
            -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
            --peers) [ $# -ge 2 ] || usage; peers="$2"; shift 2 ;;
            --seed) [ $# -ge 2 ] || usage; seed="$2"; shift 2 ;;
            --size) [ $# -ge 2 ] || usage; size="$2"; shift 2 ;;
            --image) [ $# -ge 2 ] || usage; image="$2"; shift 2 ;;
            --results) [ $# -ge 2 ] || usage; results="$2"; shift 2 ;;
            --no-qemu) peers=""; shift ;;
            --no-ours) with_ours=false; shift ;;
            --fresh) [ $# -ge 2 ] || usage
                if [ "$2" = all ]; then FRESH_VARIANTS=("${ALL_FRESH_VARIANTS[@]}"); else IFS=, read -ra FRESH_VARIANTS <<<"$2"; fi
                for variant in "${FRESH_VARIANTS[@]}"; do
                    [[ " ${ALL_FRESH_VARIANTS[*]} " == *" $variant "* ]] ||
                        { echo "throughput: --fresh: unknown variant $variant (one of ${ALL_FRESH_VARIANTS[*]})" >&2; exit 2; }
                done
                shift 2 ;;
            --no-fresh) with_fresh=false; shift ;;
            --no-limits) with_limits=false; with_fresh=false; shift ;;
            --no-settle) with_settle=false; shift ;;
            --no-repeats) with_repeats=false; shift ;;
            --hugepages) with_hugepages=true; shift ;;
            *) usage ;;
        esac
    done
    [[ "$runs" =~ ^[1-9][0-9]*$ ]] || usage
    [ -n "$seed" ] || seed=$(( (RANDOM << 15) | RANDOM ))
    [[ "$seed" =~ ^[0-9]+$ ]] || usage
    local peer
    for peer in ${peers//,/ }; do
        [[ "$peer" =~ ^(qemu72|qemu10)$ ]] || { echo "throughput: unknown peer $peer (qemu72, qemu10)" >&2; exit 2; }
    done
    load_at_start="$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "throughput: run order seed $seed" >&2
    # QEMU first: installing it adds files under /usr/lib, where the image's binary regions come from.
    # (QEMU 10 is only unpacked in a cache folder, but fetching it first fails early without network.)
    if [[ ",$peers," == *,qemu72,* ]]; then ensure_qemu; fi
    if [[ ",$peers," == *,qemu10,* ]]; then "$here/qemu10.sh" >/dev/null; fi
    if $with_ours && ! ours_available; then with_ours=false; fi

    work="$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/throughput.XXXXXX")"
    run_dir="$work/run"
    mkdir -p "$run_dir"
    if [ -z "$image" ]; then
        image="$work/standard.img"
        python3 "$here/make-image.py" --size "$size" "$image" >&2
    elif [ ! -f "$image" ]; then
        echo "throughput: no image at $image" >&2
        exit 1
    fi
    image_size="$(stat -c %s "$image")"
    cat "$image" > /dev/null  # page cache warm before anything is timed

    local items=() after=() measure compression item
    for peer in ${peers//,/ }; do
        if [ "$peer" = qemu72 ]; then
            for measure in "${MEASURES[@]}"; do items+=("qemu72:$measure"); done
            after+=(--after qemu72:restore=qemu72:save-file)
        else
            for measure in "${QEMU10_MEASURES[@]}"; do items+=("qemu10:$measure"); done
            after+=(--after qemu10:restore-mapped-ram=qemu10:save-mapped-ram)
        fi
    done
    if $with_ours; then
        for compression in none lz4; do
            for measure in "${MEASURES[@]}"; do items+=("ours:$measure:$compression"); done
            after+=(--after "ours:restore:$compression=ours:save-file:$compression")
        done
        items+=("ours:save-null:lz4-1core")
    fi
    if $with_fresh; then
        command -v gcc >/dev/null || { echo "throughput: gcc is needed for the fresh-memory limit (apt-get install gcc)" >&2; exit 1; }
        gcc -O2 -Wall -Wextra -Werror -pthread -o "$work/freshmem" "$here/freshmem.c"
        "$work/freshmem" ranges "$image" "$work/image.ranges"
        mkdir -p "$work/thp-mount"  # freshmem mounts its tmpfs over it in a namespace of its own
        save_host_settings
        local variant
        for variant in "${FRESH_VARIANTS[@]}"; do items+=("fresh:$variant"); done
    fi
    if $with_hugepages; then
        hugepage_pages=$(( (image_size + (2 << 20) - 1) / (2 << 20) + 8 ))
        for item in "${HUGE_PAGE_ITEMS[@]}"; do
            case "$item" in
                ours:*) $with_ours || continue ;;
                fresh:*) $with_fresh || continue ;;
                qemu10:*) [[ ",$peers," == *,qemu10,* ]] || continue ;;
            esac
            items+=("$item")
        done
        $with_ours && after+=(--after "ours:restore-hugepages:none=ours:save-file:none")
        [[ ",$peers," != *,qemu10,* ]] || after+=(--after qemu10:restore-mapped-ram-hugepages=qemu10:save-mapped-ram)
    fi
    if $with_repeats; then
        for item in "${REPEATED_ITEMS[@]}"; do
            [[ " ${items[*]} " == *" $item "* ]] && items+=("again:$item")
        done
        after+=(--after again:ours:restore:none=ours:save-file:none
                --after again:qemu10:restore-mapped-ram=qemu10:save-mapped-ram)
    fi
    ((${#items[@]})) || { echo "throughput: nothing to measure" >&2; exit 1; }
    # QEMU's RAM copy (qemu-migrate.sh makes it when missing): made here, so that writing 2 GiB
    # of tmpfs does not happen just before whichever QEMU measure comes first.
    [ -z "$peers" ] || cp --sparse=never "$image" "$work/qemu-ram.img"
    ! $with_ours || cp --sparse=always "$image" "$work/ours-ram.img"
    if $with_hugepages; then  # after that copy, which needs the memory the pool takes
        ((${#saved_host_setting[@]})) || save_host_settings
        grow_hugepage_pool "$hugepage_pages"
    fi
    settle_what="no"
    if $with_settle; then
        if [ -r /sys/module/page_reporting/parameters/reported_kib ]; then
            settle_what="until free page reporting has been idle for 3 s (at most 30 s)"
        else
            settle_what="3 s"
        fi
    fi

    local tsv="$work/results.tsv" run
    echo "# cores $(nproc)" > "$tsv"  # what report.py shares the CPU seconds among
    python3 "$here/run_order.py" --seed "$seed" --runs "$runs" "${after[@]}" "${items[@]}" > "$work/order"
    while read -r run item; do
        echo "throughput: run $run/$runs $item" >&2
        if $with_settle; then settle 30; fi
        record "$tsv" run_item "$run" "$item"
    done < "$work/order"
    if $with_limits; then
        echo "throughput: pipe, memory and lz4 limits" >&2
        record "$tsv" "$here/pipe-limits.sh" -n "$runs" "$image"
    fi
    [ -z "$results" ] || cp "$tsv" "$results"
    if $with_ours && ! cmp -s "$image" "$work/ours-ram.img"; then
        echo "throughput: our source's memory file no longer equals the image: its runs moved other bytes" >&2
        exit 1
    fi
    echo "## Throughput benchmark: ours, $(tr ',' ' ' <<<"${peers:-no peers}"), fresh-memory limit"
    echo
    machine_description
    echo "- image: $image_size bytes, $(sha256sum "$image" | cut -c1-16)… (sha256)"
    echo
    python3 "$here/report.py" "$tsv"
}

work="" run_dir="" hugepage_pages=0 hugepage_note=""
declare -A vmrun_pid=()  # VM name -> its vmrun (the source "src" and the destination "dst")
cleanup() {
    if [ -n "$run_dir" ] && ((${#vmrun_pid[@]})); then ours_destroy "${!vmrun_pid[@]}"; fi
    # vmrecv starts the destination's vmrun itself: destroy it by name too.
    if [ -n "$run_dir" ] && [ -n "${VMCTL_BIN:-}" ]; then ours_destroy dst; fi
    restore_host_settings
    stop_jobs_and_remove "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
main "$@"
