#!/usr/bin/env bash
# The live-migration benchmark: for each guest dirty rate, several live migrations of a
# 2 GiB guest through a pipe (vmsend | vmrecv); records rounds, time, stream size, downtime, the
# source's paused time, the throttle at switch-over and the guest's checks on the copy; prints a
# markdown table (median, min-max). Needs vmrun, vmsend, vmrecv, vmctl (as throughput.sh finds
# them) and python3. Everything lives under one temporary folder, removed with every VM on any exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

usage() {
    cat >&2 <<EOF
usage: $0 [-n RUNS] [--memory SIZE] [--working-set SIZE] [--cpus N] [--rates "RATE..."]
          [--warmup SECONDS] [--vmsend-args "ARGS"] [--pipe-limit RATE] [--results FILE.tsv]
  -n RUNS           migrations per rate (default 5)
  --memory SIZE     guest RAM (default 2G); --working-set SIZE: what the guest writes (default 256M)
  --rates "..."     guest dirty rates (default "0 idle 10M/s 100M/s max"):
                    0     a fresh guest started --paused: it never ran, nothing is written or dirtied
                    idle  the guest works flat out, then is paused: its working set is written, nothing is dirtied
                    max   flat out (vmrun --guest-dirty-rate 0), as fast as this host lets the guest dirty
                    RATE  passed to vmrun --guest-dirty-rate, e.g. 10M/s
  --warmup SECONDS  how long the guest runs after its first tick before the send (default 2)
  --vmsend-args ".." extra vmsend options, e.g. "-c lz4" or "--no-throttle --max-rounds 10"
  --pipe-limit RATE carry the stream through a link of RATE bytes/s (bench/ratelimit.py), e.g. 40M
  --results FILE    also keep the tab-separated result lines there, and every run's vmsend/vmrecv
                    lines in FILE's name with .log for .tsv
EOF
    exit 2
}

find_tool() {  # NAME -> path ($NAME in upper case overrides), or nothing
    local name="$1" upper dir
    upper="$(tr '[:lower:]' '[:upper:]' <<<"$name")"
    if [ -n "${!upper:-}" ]; then echo "${!upper}"; return; fi
    for dir in "$here/../.build/release" "$here/../.build/debug"; do
        [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
    done
    command -v "$name" || true
}

say() { echo "live-migration: $*" >&2; }

vm_status() {  # NAME -> 'state min_tick checks_per_vcpu failed_total', or fails
    local json
    json="$("$VMCTL" --run-dir "$run_dir" status --json "$1" 2>/dev/null)" || return 1
    python3 "$here/live_bench.py" status <<<"$json"
}

start_source() {  # NAME RATE: a 2-vCPU guest, ready (and warmed up, unless it starts paused)
    local name="$1" rate="$2" flags=() deadline started=$SECONDS
    case "$rate" in
        0) flags=(--paused) ;;
        idle|max) flags=(--guest-dirty-rate 0) ;;
        *) flags=(--guest-dirty-rate "$rate") ;;
    esac
    "$VMRUN" "$name" --foreground --cpus "$cpus" --memory "$memory" --guest-working-set "$working_set" \
        "${flags[@]}" --run-dir "$run_dir" >>"$work/$name.vmrun.log" 2>&1 &
    vm_pid["$name"]=$!
    deadline=$((SECONDS + 60))
    until vm_status "$name" >/dev/null; do
        ((SECONDS < deadline)) || { say "vmrun $name did not come up: $(tail -c 300 "$work/$name.vmrun.log")"; return 1; }
        sleep 0.1
    done
    warmup_seconds=0
    [ "$rate" = 0 ] && { sleep "$warmup"; return 0; }  # paused: nothing to wait for
    # The guest's ring-0 set-up is emulated here and takes ~2 s: warm up from its first tick on.
    local state tick checks failed
    while read -r state tick checks failed < <(vm_status "$name") && ((tick == 0)); do
        ((SECONDS < deadline)) || { say "guest in $name never ticked"; return 1; }
        sleep 0.1
    done
    warmup_seconds=$((SECONDS - started))
    sleep "$warmup"
    if [ "$rate" = idle ]; then "$VMCTL" --run-dir "$run_dir" pause "$name" >/dev/null; fi
}

destroy() { destroy_vms "$VMCTL" "$run_dir" vm_pid "$@"; }  # NAME...

wait_for_checks() {  # NAME CHECKS_AT_RESUME: until each vCPU checked again (>= 1 s, bounded); sets copy_*
    local name="$1" before="$2" state tick checks failed deadline started=$SECONDS
    deadline=$((SECONDS + 30))
    sleep 1
    while true; do
        read -r state tick checks failed < <(vm_status "$name") || { say "copy $name vanished"; return 1; }
        python3 - "$before" "$checks" <<'EOF' && break
import sys
before, after = ([int(c) for c in s.split(",")] for s in sys.argv[1:])
sys.exit(0 if len(before) == len(after) and all(a > b for a, b in zip(after, before)) else 1)
EOF
        ((SECONDS < deadline)) || { say "copy $name made no new check in $((SECONDS - started)) s (state $state, tick $tick)"; break; }
        sleep 0.2
    done
    copy_new_checks=$(( ($(tr ',' '+' <<<"$checks")) - ($(tr ',' '+' <<<"$before")) ))
    copy_failed="$failed"
}

show_raw() {  # the run's own lines, for a failure or an anomaly
    sed 's/^/    vmsend: /' "$work/send.err" >&2
    sed 's/^/    vmrecv: /' "$work/recv.err" >&2
}

measure() {  # RATE RUN: one live migration; prints one result line
    local rate="$1" run="$2" src dst ok=ok timing seconds_rss fields state tick checks failed
    local src_rss=- dst_rss=- copy_new_checks=- copy_failed=-
    src="src$run" dst="dst$run"
    start_source "$src" "$rate" || { destroy "$src"; printf '%s\t%d\tfail%s\n' "$rate" "$run" "$(printf '\t-%.0s' {1..22})"; return; }
    local with_stderr='f="$1"; shift; exec "$@" 2>"$f"' send_side
    send_side=(sh -c "$with_stderr" sh)
    if [ -n "$pipe_limit" ]; then  # vmsend's stream leaves through a slow link
        send_side=(bash -o pipefail -c 'f="$1" limit="$2" rate="$3"; shift 3; "$@" 2>"$f" | python3 "$limit" "$rate"' \
                   bash "$work/send.err" "$here/ratelimit.py" "$pipe_limit")
    else
        send_side+=("$work/send.err")
    fi
    if timing="$(python3 "$here/timed.py" -- \
            "${send_side[@]}" "$VMSEND" -v -P $vmsend_args --run-dir "$run_dir" "$src" --pipe \
            sh -c "$with_stderr" sh "$work/recv.err" "$VMRECV" -P --run-dir "$run_dir" "$dst")"; then
        read -r _ src_rss dst_rss <<<"$timing"
        # vmrecv started the copy's vmrun: note its pid so that destroy can wait for it.
        vm_pid["$dst"]="$("$VMCTL" --run-dir "$run_dir" status --json "$dst" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')"
        read -r state tick checks failed < <(vm_status "$dst") || true
        wait_for_checks "$dst" "$checks" || ok=fail
        read -r state tick checks failed < <(vm_status "$src") || true
        if [ "$state" != migrated ]; then say "FAIL: source $src is '$state' after the migration, not migrated"; ok=fail; fi
    else
        say "FAIL: migration $rate run $run failed"
        ok=fail
    fi
    fields="$(python3 "$here/live_bench.py" parse "$work/send.err" "$work/recv.err")"
    if [ "$copy_failed" != - ] && ((copy_failed > 0)); then
        say "FAIL FAIL FAIL: the copy's guest reports $copy_failed failed checks ($rate, run $run)"
        ok=fail
    fi
    if [ "$copy_new_checks" = 0 ]; then ok=fail; fi
    local rounds downtime throttle
    IFS=$'\t' read -r rounds _ _ _ downtime _ throttle _ <<<"$fields"
    if [ "$ok" != ok ]; then
        show_raw
    elif [[ "$downtime" =~ ^[0-9]+$ ]] && ((downtime > 2 * downtime_target)); then
        say "note: downtime $downtime ms, over twice the $downtime_target ms target ($rate, run $run):"
        show_raw
    fi
    { echo "# $rate run $run: $ok"; show_raw 2>&1; } >> "$work/raw.log"
    destroy "$dst" "$src"
    printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rate" "$run" "$ok" "$fields" "$copy_new_checks" "$copy_failed" \
        "$src_rss" "$dst_rss" "$warmup_seconds"
}

main() {
    runs=5 memory=2G working_set=256M cpus=2 rates="0 idle 10M/s 100M/s max" warmup=2 vmsend_args="" pipe_limit="" results=""
    while (($#)); do
        case "$1" in
            -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
            --memory) [ $# -ge 2 ] || usage; memory="$2"; shift 2 ;;
            --working-set) [ $# -ge 2 ] || usage; working_set="$2"; shift 2 ;;
            --cpus) [ $# -ge 2 ] || usage; cpus="$2"; shift 2 ;;
            --rates) [ $# -ge 2 ] || usage; rates="$2"; shift 2 ;;
            --warmup) [ $# -ge 2 ] || usage; warmup="$2"; shift 2 ;;
            --vmsend-args) [ $# -ge 2 ] || usage; vmsend_args="$2"; shift 2 ;;
            --pipe-limit) [ $# -ge 2 ] || usage; pipe_limit="$2"; shift 2 ;;
            --results) [ $# -ge 2 ] || usage; results="$2"; shift 2 ;;
            *) usage ;;
        esac
    done
    [[ "$runs" =~ ^[1-9][0-9]*$ ]] && [[ "$cpus" =~ ^[1-9][0-9]*$ ]] && [[ "$warmup" =~ ^[0-9.]+$ ]] || usage
    [ -n "$rates" ] || usage
    downtime_target=20  # vmsend's default; --downtime in --vmsend-args overrides it
    if [[ " $vmsend_args " =~ \ --downtime[\ =]([0-9]+) ]]; then downtime_target="${BASH_REMATCH[1]}"; fi
    local name upper missing=()
    for name in vmrun vmsend vmrecv vmctl; do
        upper="${name^^}"
        printf -v "$upper" '%s' "$(find_tool "$name")"
        [ -n "${!upper}" ] || missing+=("$name")
    done
    if ((${#missing[@]})); then
        say "${missing[*]} not built (swift build -c release, or set ${missing[0]^^}=PATH)"
        exit 1
    fi
    work="$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/live-migration.XXXXXX")"
    run_dir="$work/run"
    mkdir -p "$run_dir"
    local tsv="$work/results.tsv" load_before rate run
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    # Every rate's runs, in a random order (the machine's load drifts; no rate gets all the quiet minutes).
    local order
    seed="${BENCH_SEED:-$RANDOM}"
    # shellcheck disable=SC2086  # the rates are words
    order="$(python3 "$here/run_order.py" --seed "$seed" --runs "$runs" $rates)"
    while read -r run rate; do
        say "rate $rate, run $run/$runs"
        measure "$rate" "$run" > "$work/line"  # not in $(...): a subshell would hide its VMs from cleanup
        cat "$work/line" >&2
        cat "$work/line" >> "$tsv"
    done <<<"$order"
    if [ -n "$results" ]; then cp "$tsv" "$results"; cp "$work/raw.log" "${results%.tsv}.log"; fi
    echo "## Live-migration benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
         "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)," \
         "kvm modules: $(ls /sys/module | grep '^kvm' | tr '\n' ' ')"
    echo "- load average before / after: $load_before / $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- guest: $memory, $cpus vCPUs, working set $working_set, warm-up ${warmup} s after the first tick;" \
         "vmsend -v -P ${vmsend_args:-(defaults)} |${pipe_limit:+ ratelimit.py $pipe_limit |} vmrecv -P; $runs runs per rate," \
         "in a random order (BENCH_SEED=$seed)"
    echo
    python3 "$here/live_bench.py" report "$tsv"
}

work="" run_dir="" VMCTL="" seed=""
declare -A vm_pid=()  # VM name -> its vmrun's pid
cleanup() {
    if [ -n "$run_dir" ] && [ -n "$VMCTL" ]; then
        # Every VM in the run directory, including a copy whose pid was never noted.
        local names
        names="$("$VMCTL" --run-dir "$run_dir" list 2>/dev/null | awk 'NR > 1 { print $1 }')" || true
        for name in $names; do
            [ -n "${vm_pid[$name]:-}" ] || vm_pid["$name"]="$("$VMCTL" --run-dir "$run_dir" status --json "$name" 2>/dev/null \
                | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' 2>/dev/null)" || true
        done
        ((${#vm_pid[@]} == 0)) || destroy "${!vm_pid[@]}"
        for name in $names; do destroy "$name"; done
    fi
    stop_jobs_and_remove "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
main "$@"
