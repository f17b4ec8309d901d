#!/usr/bin/env python3
"""Helpers of live-migration.sh: read vmctl status, parse vmsend/vmrecv output, render the table.

usage: live_bench.py status < STATUS.json          -> state min_tick checks_per_vcpu failed_total
       live_bench.py parse SEND.err RECV.err       -> the migration fields of one result line (from -P)
       live_bench.py report RESULTS.tsv            -> markdown table, one row per dirty rate
Result lines (tab-separated, '-' where unknown): see FIELDS. Standard library only.
"""
import json
import math
import statistics
import sys

# The downtime's phases, as the -P summary lines end (vmsend's five, then vmrecv's three); see vmsend(8).
PHASES = ["pause", "dirty log", "final pages", "state", "END", "END read", "restore", "resume"]
FIELDS = ["rate", "run", "ok", "rounds", "seconds", "send_seconds", "stream_bytes", "downtime_ms", "paused_ms",
          "throttle_pct", "dirty_rate_bps", "bandwidth_bps"] + [f"{p}_ms" for p in PHASES] + [
          "new_checks", "checks_failed", "src_rss_kib", "dst_rss_kib", "warmup_s"]
QEMU_DEFAULT_DOWNTIME_MS = 300  # QEMU's downtime-limit default
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
MB = 1e6


def status(text):
    """'state min_tick c0,c1,... failed_total' from `vmctl status --json`."""
    doc = json.loads(text)
    vcpus = doc.get("vcpus", [])
    checks = [v["checksPassed"] + v["checksFailed"] for v in vcpus]
    ticks = [v["tick"] for v in vcpus] or [0]
    failed = sum(v["checksFailed"] for v in vcpus)
    return f"{doc['state']} {min(ticks)} {','.join(map(str, checks)) or '-'} {failed}"


def parse(send_path, recv_path):
    """rounds seconds send_seconds stream_bytes downtime_ms paused_ms throttle dirty_rate bandwidth, from both
    tools' -P lines (vmsend(8) documents them; '-' where a figure is unknown)."""
    rounds = seconds = send_seconds = stream = downtime = paused = "-"
    throttle, dirty_rates, bandwidth = 0, [], "-"
    phases = ["-"] * len(PHASES)
    milliseconds = lambda micro: "-" if micro == "-" else str(round(int(micro) / 1000))
    fine_ms = lambda micro: "-" if micro == "-" else f"{int(micro) / 1000:.2f}"
    for line in open(send_path, errors="replace"):
        fields = line.rstrip("\n").split("\t")
        if fields[0] == "round" and len(fields) == 14:
            if fields[1] == "0":
                bandwidth = fields[6]
            if fields[8] != "-":
                dirty_rates.append(int(fields[8]))
            throttle = int(fields[10])  # the throttle in force during that round; the last one before switch-over
        elif fields[0] == "summary" and len(fields) >= 11:
            send_seconds, paused = f"{int(fields[6]) / 1e6:.2f}", milliseconds(fields[8])
            if len(fields) == 11 + len(PHASES):
                phases[:5] = map(fine_ms, fields[11:16])
    for line in open(recv_path, errors="replace"):
        fields = line.rstrip("\n").split("\t")
        if fields[0] == "summary" and len(fields) >= 11:
            stream, rounds, seconds = fields[1], fields[5], f"{int(fields[6]) / 1e6:.2f}"
            downtime = fine_ms(fields[9])
            if len(fields) == 11 + len(PHASES):
                phases[5:] = map(fine_ms, fields[16:19])
    dirty = str(max(dirty_rates)) if dirty_rates else "-"
    return "\t".join([rounds, seconds, send_seconds, stream, downtime, paused, str(throttle), dirty, bandwidth] + phases)


def number(text):
    return None if text in ("-", "") else float(text)


def cell(values, fmt):
    """median (min-max) of the known values."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    low, middle, high = fmt(min(values)), fmt(statistics.median(values)), fmt(max(values))
    return middle if low == high else f"{middle} ({low}-{high})"


def rss(runs, key):
    """The largest peak RSS of the runs, in MiB."""
    values = [number(r[key]) for r in runs if number(r[key]) is not None]
    return f"{max(values) / 1024:.0f}" if values else "-"


def report(path):
    rows = {}
    for line in open(path):
        fields = line.rstrip("\n").split("\t")
        if len(fields) != len(FIELDS) or fields[0].startswith("#"):
            continue
        rows.setdefault(fields[0], []).append(dict(zip(FIELDS, fields)))
    if not rows:
        print("live_bench: no result lines", file=sys.stderr)
        return 1
    out = ["| guest dirty rate | runs ok | dirty rate seen MB/s | rounds | total s | stream MB | downtime ms "
           "| source paused ms | throttle at switch-over % | round 0 MB/s | copy's new checks / failed | peak RSS vmsend / vmrecv MiB |",
           "| --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rate, runs in rows.items():
        good = [r for r in runs if r["ok"] == "ok"]
        col = lambda key, scale=1.0: [None if number(r[key]) is None else number(r[key]) / scale for r in runs]
        failed = sum(int(r["checks_failed"]) for r in runs if r["checks_failed"] != "-")
        out.append(" | ".join([
            f"| {rate}", f"{len(good)}/{len(runs)}",
            cell(col("dirty_rate_bps", MB), lambda v: f"{v:.0f}"),
            cell(col("rounds"), lambda v: f"{v:.0f}"),
            cell(col("seconds"), lambda v: f"{v:.2f}"),
            cell(col("stream_bytes", MB), lambda v: f"{v:.1f}"),
            cell(col("downtime_ms"), lambda v: f"{v:.0f}"),
            cell(col("paused_ms"), lambda v: f"{v:.0f}"),
            cell(col("throttle_pct"), lambda v: f"{v:.0f}"),
            cell(col("bandwidth_bps", MB), lambda v: f"{v:.0f}"),
            f"{cell(col('new_checks'), lambda v: f'{v:.0f}')} / {failed}{' **FAIL**' if failed else ''}",
            f"{rss(runs, 'src_rss_kib')} / {rss(runs, 'dst_rss_kib')} |",
        ]))
    print("\n".join(out))
    print()
    print(downtime_table(rows))
    return 0


def percentile(values, fraction):
    """Nearest rank: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def downtime_table(rows):
    """Where the downtime goes: per rate, the downtime's median, 95th percentile and maximum, the median of each
    phase, and how far below QEMU's default limit the median is. Successful runs only."""
    out = ["| guest dirty rate | runs | downtime median ms | p95 ms | max ms | "
           + " | ".join(f"{p} ms" for p in PHASES) + f" | QEMU default {QEMU_DEFAULT_DOWNTIME_MS} ms / median |",
           "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in PHASES) + " | ---: |"]
    for rate, runs in rows.items():
        good = [r for r in runs if r["ok"] == "ok" and number(r["downtime_ms"]) is not None]
        if not good:
            continue
        downtimes = [number(r["downtime_ms"]) for r in good]
        median = statistics.median(downtimes)
        phases = []
        for phase in PHASES:
            values = [number(r[f"{phase}_ms"]) for r in good if number(r[f"{phase}_ms"]) is not None]
            phases.append(f"{statistics.median(values):.1f}" if values else "-")
        out.append(f"| {rate} | {len(good)} | {median:.1f} | {percentile(downtimes, 0.95):.1f} | {max(downtimes):.1f} | "
                   + " | ".join(phases) + f" | {QEMU_DEFAULT_DOWNTIME_MS / median:.0f}x |")
    return "\n".join(out)


def main(argv):
    if argv[:1] == ["status"] and len(argv) == 1:
        print(status(sys.stdin.read()))
    elif argv[:1] == ["parse"] and len(argv) == 3:
        print(parse(argv[1], argv[2]))
    elif argv[:1] == ["report"] and len(argv) == 2:
        return report(argv[1])
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (OSError, ValueError, KeyError) as error:
        print(f"live_bench: {error}", file=sys.stderr)
        sys.exit(1)
