#!/usr/bin/env bash
# The cost of a dropped link in a live migration: a guest dirtying memory at RATE migrates live uncut, and cut
# once at half its stream then continued (vmsend -s ... | cut | vmrecv -s, then vmsend -t TOKEN | vmrecv -s), in
# pairs whose order is drawn at random. Prints per pair the bytes on the wire of each (for the cut one, both legs),
# their ratio, and each copy's downtime; every copy must run with no failed check.
# Needs vmrun, vmsend, vmrecv and vmctl (.build/release, .build/debug or PATH; NAME=PATH overrides). Cleans up on
# any exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

usage() {
    cat >&2 <<EOF
usage: $0 [-n PAIRS] [--memory SIZE] [--working-set SIZE] [--rate RATE] [--seed SEED] [--results FILE.tsv]
  -n PAIRS          uncut/cut pairs (default 5)
  --memory SIZE     guest RAM (default 2G); --working-set SIZE: what the guest writes (default 256M)
  --rate RATE       the guest's dirtying rate, vmrun --guest-dirty-rate (default 50M/s)
  --seed SEED       seed of the run order (default: drawn, and printed)
  --results FILE    also keep the tab-separated result lines there
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

say() { echo "resume-live: $*" >&2; }

json_field() {  # NAME EXPRESSION: evaluates EXPRESSION on the VM's status JSON (as `s`)
    "$VMCTL" --run-dir "$run_dir" status --json "$1" | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}

start_source() {  # NAME: a running guest that dirties at $rate, past its set-up
    "$VMRUN" "$1" --foreground --cpus 2 --memory "$memory" --guest-working-set "$working_set" \
        --guest-dirty-rate "$rate" --run-dir "$run_dir" >>"$work/$1.vmrun.log" 2>&1 &
    vm_pid["$1"]=$!
    local deadline=$((SECONDS + 60))
    until [ "$(json_field "$1" 'min(v["tick"] for v in s["vcpus"])' 2>/dev/null || echo 0)" -gt 0 ]; do
        ((SECONDS < deadline)) || { say "guest $1 never ticked: $(tail -c 300 "$work/$1.vmrun.log")"; return 1; }
        sleep 0.1
    done
    sleep 2
}

passed() { sed -n 's/^cut-stream: \([0-9]*\) bytes$/\1/p' "$1" | tail -1; }
downtime() { sed -n 's/.*downtime \([0-9]*\) ms from the source.*/\1/p' "$1" | tail -1; }

copy_runs() {  # NAME: running, every vCPU checked again since, no failed check
    local before
    before="$(json_field "$1" 'sum(v["checksPassed"] for v in s["vcpus"])' 2>/dev/null)" || return 1
    [ -n "$before" ] || return 1  # no such VM: the migration never made the copy
    sleep 1.5
    [ "$(json_field "$1" 'int(s["state"] == "running" and sum(v["checksFailed"] for v in s["vcpus"]) == 0
        and sum(v["checksPassed"] for v in s["vcpus"]) > '"$before"')')" = 1 ]
}

measure() {  # KIND PAIR: one live migration, uncut or cut at half; prints one result line
    local kind="$1" pair="$2" src="src$2$1" dst="dst$2$1" first=0 second=0 ok=ok token
    start_source "$src" || { destroy "$src"; return 1; }
    local send=("$VMSEND" -v --run-dir "$run_dir") recv=("$VMRECV" -v --run-dir "$run_dir")
    if [ "$kind" = uncut ]; then
        { "${send[@]}" "$src" | python3 "$cutter" ALL | "${recv[@]}" "$dst"; } 2>"$work/leg1.err" || ok=fail
        first="$(passed "$work/leg1.err")"
        if [ "$ok" = ok ] && [ -n "$first" ]; then echo "$first" >"$work/last-uncut"; fi
    else
        [ -s "$work/last-uncut" ] || { say "no uncut migration has completed, so there is no size to cut at half"; destroy "$src"; return 1; }
        local half=$(( $(cat "$work/last-uncut") / 2 ))
        { "${send[@]}" -s "$src" | python3 "$cutter" BYTES "$half" | "${recv[@]}" -s "$dst"; } 2>"$work/leg1.err" || true
        first="$(passed "$work/leg1.err")"
        token="$(json_field "$dst" 's["partial"]["token"]')" || { say "no partial receive after the cut"; ok=fail; }
        if [ "$ok" = ok ]; then
            { "${send[@]}" -t "$token" "$src" | python3 "$cutter" ALL | "${recv[@]}" -s "$dst"; } 2>"$work/leg2.err" || ok=fail
            second="$(passed "$work/leg2.err")"
        fi
    fi
    local leg; leg="$work/leg$([ "$kind" = uncut ] && echo 1 || echo 2).err"
    [ -f "$leg" ] || leg="$work/leg1.err"
    vm_pid["$dst"]="$(json_field "$dst" 's["pid"]' 2>/dev/null || echo)"
    copy_runs "$dst" || { say "FAIL: the copy of $kind pair $pair does not run cleanly"; ok=fail; }
    [ "$ok" = ok ] || sed 's/^/    /' "$work"/leg*.err >&2
    printf '%s\t%d\t%s\t%d\t%d\t%s\n' "$kind" "$pair" "$ok" "$first" "$second" "$(downtime "$leg")"
    destroy "$dst" "$src"
    rm -f "$work"/leg*.err
}

destroy() { destroy_vms "$VMCTL" "$run_dir" vm_pid "$@"; }

main() {
    pairs=5 memory=2G working_set=256M rate=50M/s seed="" results=""
    while [ $# -gt 0 ]; do
        case "$1" in
            -n) [ $# -ge 2 ] || usage; pairs="$2"; shift 2 ;;
            --memory) [ $# -ge 2 ] || usage; memory="$2"; shift 2 ;;
            --working-set) [ $# -ge 2 ] || usage; working_set="$2"; shift 2 ;;
            --rate) [ $# -ge 2 ] || usage; rate="$2"; shift 2 ;;
            --seed) [ $# -ge 2 ] || usage; seed="$2"; shift 2 ;;
            --results) [ $# -ge 2 ] || usage; results="$2"; shift 2 ;;
            *) usage ;;
        esac
    done
    VMRUN="$(find_tool vmrun)" VMSEND="$(find_tool vmsend)" VMRECV="$(find_tool vmrecv)" VMCTL="$(find_tool vmctl)"
    for tool in "$VMRUN" "$VMSEND" "$VMRECV" "$VMCTL"; do [ -n "$tool" ] || { say "build the tools first"; exit 1; }; done
    cutter="$here/../scripts/cut-stream.py"
    work="$(mktemp -d /tmp/resume-live.XXXXXX)"
    run_dir="$work/run"
    mkdir -p "$run_dir"
    declare -gA vm_pid=()
    trap 'destroy "${!vm_pid[@]}"; stop_jobs_and_remove "$work"' EXIT
    seed="${seed:-$RANDOM}"
    say "$pairs pairs, guest $memory writing $working_set at $rate; run order seed $seed"
    local lines="$work/lines" pair order
    : >"$lines"
    RANDOM="$seed"
    # One uncut migration first, not counted: the first cut needs the size of a stream to cut at its half.
    settle 30
    measure uncut 0 >/dev/null
    for ((pair = 1; pair <= pairs; pair++)); do
        order="uncut cut"
        ((RANDOM % 2)) && order="cut uncut"
        for kind in $order; do
            settle 30
            measure "$kind" "$pair" | tee -a "$lines" >&2
        done
    done
    [ -z "$results" ] || cp "$lines" "$results"
    python3 - "$lines" <<'EOF'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
by = {}
for kind, pair, ok, first, second, down in rows:
    by.setdefault(pair, {})[kind] = (ok, int(first) + int(second), int(first), down)
print("| pair | uncut bytes | cut bytes (before + after the cut) | cut/uncut | downtime uncut / cut, ms |")
print("| --- | --- | --- | --- | --- |")
ratios = []
for pair in sorted(by, key=int):
    u, c = by[pair].get("uncut"), by[pair].get("cut")
    if not u or not c or u[0] != "ok" or c[0] != "ok":
        print(f"| {pair} | failed | | | |")
        continue
    ratio = c[1] / u[1]
    ratios.append(ratio)
    print(f"| {pair} | {u[1]} | {c[1]} ({c[2]} + {c[1] - c[2]}) | {ratio:.3f} | {u[3]} / {c[3]} |")
if ratios:
    print(f"\nmedian cut/uncut {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}), {len(ratios)} pairs")
EOF
}

main "$@"
