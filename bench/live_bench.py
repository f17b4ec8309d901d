#!/usr/bin/env python3
"""Helpers of live-migration.sh: read vmctl status, parse vmsend/vmrecv output, render the table.

usage: live_bench.py status < STATUS.json          -> state min_tick checks_per_vcpu failed_total
       live_bench.py parse SEND.err RECV.err       -> the migration fields of one result line (from -P)
       live_bench.py report RESULTS.tsv            -> markdown table, one row per dirty rate
Result lines (tab-separated, '-' where unknown): see FIELDS. Standard library only.
"""
import json
import statistics
import sys

FIELDS = ["rate", "run", "ok", "rounds", "seconds", "send_seconds", "stream_bytes", "downtime_ms", "paused_ms",
          "throttle_pct", "dirty_rate_bps", "bandwidth_bps", "new_checks", "checks_failed", "src_rss_kib",
          "dst_rss_kib", "warmup_s"]
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
    milliseconds = lambda micro: "-" if micro == "-" else str(round(int(micro) / 1000))
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
    for line in open(recv_path, errors="replace"):
        fields = line.rstrip("\n").split("\t")
        if fields[0] == "summary" and len(fields) >= 11:
            stream, rounds, seconds = fields[1], fields[5], f"{int(fields[6]) / 1e6:.2f}"
            downtime = milliseconds(fields[9])
    dirty = str(max(dirty_rates)) if dirty_rates else "-"
    return "\t".join([rounds, seconds, send_seconds, stream, downtime, paused, str(throttle), dirty, bandwidth])


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
    return 0


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
