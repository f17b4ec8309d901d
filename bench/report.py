#!/usr/bin/env python3
"""Turns the benchmark's tab-separated lines into markdown tables.

Input lines: tool measure run seconds payload_bytes wire_bytes src_rss_kib dst_rss_kib
('-' where a value does not apply). Rates are payload per second in GB/s (10^9 bytes): guest RAM
for migrations, bytes carried for the limits. Ours/QEMU ratios are medians of per-run ratios, so
runs made side by side are compared with each other and machine noise between runs cancels out.
"""
import statistics
import sys
from collections import defaultdict

GB = 1e9
MIB = 1 << 20


def number(text):
    return None if text in ("-", "", "None") else float(text)


def spread(values, fmt):
    return f"{fmt(min(values))}-{fmt(max(values))}" if len(values) > 1 else "-"


def load(lines):
    rows = defaultdict(dict)  # (tool, measure) -> run -> fields
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 8 or fields[0].startswith("#"):
            continue
        tool, measure, run = fields[0], fields[1], int(fields[2])
        seconds, payload, wire, src, dst = (number(f) for f in fields[3:])
        rows[(tool, measure)][run] = dict(seconds=seconds, payload=payload, wire=wire, src=src, dst=dst)
    return rows


def measurements_table(rows):
    out = ["| tool | measure | runs | time s median (min-max) | GB/s median (min-max) | bytes on the wire | "
           "wire/payload | peak RSS src / dst MiB |",
           "| --- | --- | ---: | --- | --- | ---: | ---: | --- |"]
    for (tool, measure), runs in rows.items():
        seconds = [r["seconds"] for r in runs.values()]
        rates = [r["payload"] / r["seconds"] / GB for r in runs.values()]
        wires = [r["wire"] for r in runs.values() if r["wire"] is not None]
        payload = next(iter(runs.values()))["payload"]
        wire = statistics.median(wires) if wires else None
        rss = []
        for side in ("src", "dst"):
            values = [r[side] for r in runs.values() if r[side] is not None]
            rss.append(f"{max(values) * 1024 / MIB:.0f}" if values else "-")
        out.append(f"| {tool} | {measure} | {len(runs)} | {statistics.median(seconds):.3f} "
                   f"({spread(seconds, lambda v: f'{v:.3f}')}) | {statistics.median(rates):.2f} "
                   f"({spread(rates, lambda v: f'{v:.2f}')}) | "
                   f"{f'{wire:,.0f}' if wire else '-'} | {f'{wire / payload:.1%}' if wire else '-'} | "
                   f"{rss[0]} / {rss[1]} |")
    return out


def ratios_table(rows):
    """Ours against QEMU per measure: rate ratio QEMU time / our time, pairwise by run number."""
    out = ["| ours | vs QEMU | pairs | rate ours/QEMU median (min-max) | time ours/QEMU median |",
           "| --- | --- | ---: | --- | ---: |"]
    for (tool, measure), ours in rows.items():
        if tool != "ours":
            continue
        peer = rows.get(("qemu", measure.removesuffix("-lz4")))
        if measure.endswith("-1core"):
            continue
        if not peer:
            continue
        pairs = [(peer[run]["seconds"], ours[run]["seconds"]) for run in sorted(ours) if run in peer]
        if not pairs:
            continue
        rate = [q / o for q, o in pairs]
        time = [o / q for q, o in pairs]
        out.append(f"| {measure} | {measure.removesuffix('-lz4')} | {len(pairs)} | {statistics.median(rate):.2f}x "
                   f"({spread(rate, lambda v: f'{v:.2f}x')}) | {statistics.median(time):.2f} |")
    return out if len(out) > 2 else []


def compression_table(rows):
    """LZ4 on all cores against the same vmsend held to one core, pairwise by run, and against lz4 -1."""
    out = ["| measure | pairs | speed-up on all cores median (min-max) | GB/s all cores | GB/s one core | lz4 -1 GB/s |",
           "| --- | ---: | --- | ---: | ---: | ---: |"]
    lz4 = rows.get(("limit", "lz4-1-compress"))
    lz4_rate = f"{statistics.median(r['payload'] / r['seconds'] / GB for r in lz4.values()):.2f}" if lz4 else "-"
    for (tool, measure), single in rows.items():
        if tool != "ours" or not measure.endswith("-lz4-1core"):
            continue
        multi = rows.get(("ours", measure.removesuffix("-1core")), {})
        pairs = [(single[run]["seconds"], multi[run]["seconds"]) for run in sorted(single) if run in multi]
        if not pairs:
            continue
        speedup = [s / m for s, m in pairs]
        rate = lambda runs: statistics.median(r["payload"] / r["seconds"] / GB for r in runs.values())
        out.append(f"| {measure.removesuffix('-1core')} | {len(pairs)} | {statistics.median(speedup):.2f}x "
                   f"({spread(speedup, lambda v: f'{v:.2f}x')}) | {rate(multi):.2f} | {rate(single):.2f} | {lz4_rate} |")
    return out if len(out) > 2 else []


def limits_table(rows):
    """Each migration's median wire rate against the pipe's limits measured in the same run."""
    limits = {m: statistics.median(r["payload"] / r["seconds"] / GB for r in runs.values())
              for (tool, m), runs in rows.items() if tool == "limit"}
    pipe = [name for name in ("write-64k", "vmsplice-1024k") if name in limits]
    if not pipe:
        return []
    out = ["| tool | measure | wire GB/s | " + " | ".join(f"% of pipe {p} ({limits[p]:.2f} GB/s)" for p in pipe)
           + " |", "| --- | --- | ---: |" + " ---: |" * len(pipe)]
    for (tool, measure), runs in rows.items():
        if tool == "limit":
            continue
        wire_rates = [r["wire"] / r["seconds"] / GB for r in runs.values() if r["wire"]]
        if not wire_rates:
            continue
        wire_rate = statistics.median(wire_rates)
        out.append(f"| {tool} | {measure} | {wire_rate:.2f} | " +
                   " | ".join(f"{wire_rate / limits[p]:.0%}" for p in pipe) + " |")
    return out


def main():
    rows = load(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
    if not rows:
        print("report: no result lines", file=sys.stderr)
        return 1
    sections = [("Measurements", measurements_table(rows)),
                ("Ours against QEMU (pairwise, same run)", ratios_table(rows)),
                ("LZ4 on both cores", compression_table(rows)),
                ("Distance to the pipe limit", limits_table(rows))]
    for title, table in sections:
        if table:
            print(f"### {title}\n")
            print("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
