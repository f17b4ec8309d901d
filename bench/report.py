#!/usr/bin/env python3
"""Turns the benchmark's tab-separated lines into markdown tables.

Input lines: tool measure run seconds payload_bytes wire_bytes src_rss_kib dst_rss_kib [cpu_seconds]
('-' where a value does not apply; cpu_seconds, user and system time of the measured processes, is absent from
files before it was recorded). Tools: ours, qemu72 (older files: qemu), qemu10, limit.
Rates are payload per second in GB/s (10^9 bytes): guest RAM for migrations, bytes carried for
the limits, pages populated for the fresh-memory rows (limit fresh-*). Every ratio is a median of
per-run ratios (with their min-max), so runs made side by side are compared with each other and
machine noise between runs cancels out.
"""
import re
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
    """The result lines as (tool, measure) -> run -> fields, and the cores of the host that made them ("# cores N",
    which throughput.sh writes; None if the file does not say)."""
    rows = defaultdict(dict)  # (tool, measure) -> run -> fields
    cores = None
    for line in lines:
        named = re.match(r"# cores (\d+)$", line.strip())
        if named:
            cores = int(named.group(1))
        fields = line.rstrip("\n").split("\t")
        if len(fields) not in (8, 9) or fields[0].startswith("#"):
            continue
        tool, measure, run = fields[0], fields[1], int(fields[2])
        tool = "qemu72" if tool == "qemu" else tool  # files from before QEMU 10 was a peer
        seconds, payload, wire, src, dst, cpu = (number(f) for f in (fields[3:] + ["-"])[:6])
        rows[(tool, measure)][run] = dict(seconds=seconds, payload=payload, wire=wire, src=src, dst=dst, cpu=cpu)
    return rows, cores


TOOL_ORDER = ("ours", "qemu72", "qemu10", "limit")
FRESH_ORDER = ("hybrid-2threads", "hybrid-2threads-kept", "pwrite", "pwrite-2threads", "memcpy", "memcpy-2threads", "store-2threads", "populate-ahead", "populate-ahead-pwrite", "fallocate-ahead",
               "alloc-only", "hugetlb", "hugetlb-pool", "hugetlb-with-pool", "hugetlb-kept", "hugetlb-kept-ahead",
               "thp-tmpfs", "thp-memfd")
HUGE = "-hugepages"  # a measure whose destination's RAM is on a used pool of 2 MiB pages (throughput.sh --hugepages)
AGAIN = "-again"  # the same measure a second time in the same run (throughput.sh's repeats)
MEASURE_ORDER = ("e2e", "e2e-multifd", "restore", "restore-mapped-ram", "save-file", "save-mapped-ram",
                 "save-null", "fresh-")


def sort_key(key):
    """Our measures next to the peers' of the same kind; the limits last, in the order they ran."""
    tool, measure = key
    again = measure.endswith(AGAIN)
    measure = measure.removesuffix(AGAIN)
    if tool == "limit":
        fresh = measure.removeprefix("fresh-")
        return (2, 0 if measure.startswith("fresh-") else 1,
                FRESH_ORDER.index(fresh) if fresh in FRESH_ORDER else len(FRESH_ORDER), 0, again)
    base = measure.removesuffix("-1core").removesuffix("-lz4").removesuffix(HUGE)
    rank = MEASURE_ORDER.index(base) if base in MEASURE_ORDER else len(MEASURE_ORDER)
    group = rank // 2 if base != "save-null" else 3  # e2e | restore | save-file | save-null
    return (1 if tool not in TOOL_ORDER else 0, group, TOOL_ORDER.index(tool) if tool in TOOL_ORDER else 9,
            len(measure) if tool == "ours" else rank, again)


def fill_our_wire(rows):
    """Ours e2e and save-null write no file: their bytes on the wire are the save-file stream's of the
    same compression and run (the same image gives the same stream; in a random order the save may
    come after them, so this is done here rather than while measuring)."""
    for (tool, measure), runs in rows.items():
        if tool != "ours" or not (measure.startswith("e2e") or measure.startswith("save-null")):
            continue
        compression = "-lz4" if "-lz4" in measure else ""
        saved = rows.get(("ours", "save-file" + compression), {})
        sizes = [r["wire"] for r in saved.values() if r["wire"]]
        for run, fields in runs.items():
            if fields["wire"] is None and sizes:
                fields["wire"] = saved[run]["wire"] if run in saved and saved[run]["wire"] else statistics.median(sizes)


def measurements_table(rows):
    out = ["| tool | measure | runs | time s median (min-max) | GB/s median (min-max) | bytes on the wire | "
           "wire/payload | peak RSS src / dst MiB |",
           "| --- | --- | ---: | --- | --- | ---: | ---: | --- |"]
    for (tool, measure), runs in sorted(rows.items(), key=lambda item: sort_key(item[0])):
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


# Which peer measure each of ours is compared with: (our measure, peer tool, peer measure).
PAIRS = [(m, "qemu72", m) for m in ("e2e", "restore", "save-null", "save-file")] + [
    ("e2e", "qemu10", "e2e"), ("e2e", "qemu10", "e2e-multifd"),
    ("restore", "qemu10", "restore-mapped-ram"), ("save-file", "qemu10", "save-mapped-ram"),
    ("e2e" + HUGE, "qemu10", "e2e-multifd" + HUGE), ("restore" + HUGE, "qemu10", "restore-mapped-ram" + HUGE),
    ("e2e" + HUGE, "qemu10", "e2e-multifd")]
PEER_NAMES = {"qemu72": "QEMU 7.2", "qemu10": "QEMU 10"}
# The fresh-memory limit: vmrecv's way to fill (one thread pwrite, one through the mapping), no pipe, no hashing.
# Runs before 2026-12-01 evening measured vmrecv's way of then, pwrite on one thread.
LIMITS = (("limit", "fresh-hybrid-2threads"), ("limit", "fresh-pwrite"))


def limit_key(rows):
    return next((key for key in LIMITS if key in rows), LIMITS[0])


def pairwise(numerators, denominators):
    """Per-run ratio numerator time / denominator time, for the runs both have."""
    return [numerators[run]["seconds"] / denominators[run]["seconds"]
            for run in sorted(numerators) if run in denominators]


def summary(values, suffix="x"):
    return f"{statistics.median(values):.2f}{suffix} ({spread(values, lambda v: f'{v:.2f}{suffix}')})"


def ratios_table(rows):
    """Ours against each peer, pairwise by run: speed-up = peer time / our time."""
    out = ["| ours | vs | pairs | speed-up (peer time / ours) median (min-max) | ours faster in |",
           "| --- | --- | ---: | --- | ---: |"]
    for ours_measure, peer, peer_measure in PAIRS:
        for suffix in ("", "-lz4"):
            ours = rows.get(("ours", ours_measure + suffix))
            other = rows.get((peer, peer_measure))
            if not ours or not other:
                continue
            speedup = pairwise(other, ours)
            if not speedup:
                continue
            out.append(f"| {ours_measure + suffix} | {PEER_NAMES[peer]} {peer_measure} | {len(speedup)} | "
                       f"{summary(speedup)} | {sum(v > 1 for v in speedup)} of {len(speedup)} |")
    return out if len(out) > 2 else []


def fresh_table(rows):
    """The fresh-memory variants against pwrite on one thread (vmrecv's way until 2026-12-01), pairwise by run."""
    base = rows.get(("limit", "fresh-pwrite"))
    variants = [(m, runs) for (tool, m), runs in sorted(rows.items(), key=lambda item: statistics.median(
                    r["seconds"] for r in item[1].values()))
                if tool == "limit" and m.startswith("fresh-") and m != "fresh-hugetlb-pool" and not m.endswith(AGAIN)]
    if not base or not variants:
        return []
    out = ["| variant | runs | time s median (min-max) | GB/s of pages median | time / pwrite median (min-max) | "
           "speed-up over pwrite median |",
           "| --- | ---: | --- | ---: | --- | ---: |"]
    for measure, runs in variants:
        seconds = [r["seconds"] for r in runs.values()]
        rates = [r["payload"] / r["seconds"] / GB for r in runs.values()]
        ratio = pairwise(runs, base)
        out.append(f"| {measure.removeprefix('fresh-')} | {len(runs)} | {statistics.median(seconds):.3f} "
                   f"({spread(seconds, lambda v: f'{v:.3f}')}) | {statistics.median(rates):.2f} | "
                   f"{summary(ratio)} | {1 / statistics.median(ratio):.2f}x |")
    return out


def receiving_fills(rows, huge_pages=False):
    """The fresh-memory variants that are a complete receiver's way to fill: the data stored, the hugetlb pool's
    growing included (not alloc-only, which stores nothing, nor the pool or the fill alone). With `huge_pages`,
    instead the fills of a used pool (hugetlb-kept*), which is what a receive on huge pages lands in."""
    if huge_pages:
        return {m: runs for (tool, m), runs in rows.items() if tool == "limit" and m.startswith("fresh-hugetlb-kept")}
    return {m: runs for (tool, m), runs in rows.items() if tool == "limit" and m.startswith("fresh-")
            and m not in ("fresh-alloc-only", "fresh-hugetlb", "fresh-hugetlb-pool")
            and not m.startswith("fresh-hugetlb-kept") and not m.endswith(AGAIN)}


def fastest_fresh(rows):
    """The receiving fill with the lowest median time."""
    candidates = [(statistics.median(r["seconds"] for r in runs.values()), m)
                  for m, runs in receiving_fills(rows).items()]
    return min(candidates)[1] if candidates else None


def distance_table(rows):
    """Ours (and the peers' fastest) against the fresh-memory limit measured in the same runs."""
    limit = limit_key(rows)
    if limit not in rows:
        return []
    best = fastest_fresh(rows)
    columns = [limit[1]] + ([best] if best and best != limit[1] else [])
    out = ["| measure | " + " | ".join(f"time / {c.removeprefix('fresh-')} median (min-max)" for c in columns) + " |",
           "| --- |" + " --- |" * len(columns)]
    for tool, measure in [("ours", "e2e"), ("ours", "restore"), ("ours", "e2e-lz4"), ("ours", "restore-lz4"),
                          ("qemu10", "e2e-multifd"), ("qemu10", "restore-mapped-ram"), ("qemu72", "e2e")]:
        runs = rows.get((tool, measure))
        if not runs:
            continue
        cells = []
        for column in columns:
            ratio = pairwise(runs, rows[("limit", column)])
            cells.append(summary(ratio) if ratio else "-")
        out.append(f"| {tool} {measure} | " + " | ".join(cells) + " |")
    return out if len(out) > 2 else []


# The project's targets: (what, ours, the other measure, factor, how). "peer": the other's time / ours at least
# the factor at the median; "every": that, and ours faster in every pair; "limit": ours / the other (a fill) at
# most the factor at the median. The huge-page rows hold both destinations on the same used pool.
TARGETS = [
    ("warm e2e ≥ 2x QEMU 10 multifd at the median, faster in every pair", "e2e", ("qemu10", "e2e-multifd"), 2, "every"),
    ("warm e2e ≥ 6x QEMU 10 exec:", "e2e", ("qemu10", "e2e"), 6, "peer"),
    ("warm e2e within 1.3x of the fresh-memory limit at the median (e2e time / limit)", "e2e", "LIMIT", 1.3, "limit"),
    ("restore from a file ≥ 1.5x QEMU 10 mapped-ram restore", "restore", ("qemu10", "restore-mapped-ram"), 1.5, "peer"),
    ("on huge pages (both on the same used pool): warm e2e ≥ 2x QEMU 10 multifd, faster in every pair",
     "e2e" + HUGE, ("qemu10", "e2e-multifd" + HUGE), 2, "every"),
    ("on huge pages: warm e2e within 1.3x of filling the used pool (e2e time / hugetlb-kept-ahead)",
     "e2e" + HUGE, ("limit", "fresh-hugetlb-kept-ahead"), 1.3, "limit"),
    ("on huge pages (both on the same used pool): restore ≥ 1.5x QEMU 10 mapped-ram restore",
     "restore" + HUGE, ("qemu10", "restore-mapped-ram" + HUGE), 1.5, "peer"),
]


def targets_table(rows):
    """Where ours stands against the project's targets, from the same per-run ratios."""
    checks = []
    for what, ours_measure, other_key, factor, how in TARGETS:
        if other_key == "LIMIT":
            other_key = limit_key(rows)
            what = what.replace("limit at", f"limit ({other_key[1].removeprefix('fresh-')}) at")
        ours, other = rows.get(("ours", ours_measure)), rows.get(other_key)
        if not ours or not other:
            continue
        r = pairwise(ours, other) if how == "limit" else pairwise(other, ours)
        if not r:
            continue
        if how == "limit":
            checks.append((what, summary(r), statistics.median(r) <= factor))
        elif how == "every":
            checks.append((what, summary(r) + f", faster in {sum(v > 1 for v in r)} of {len(r)}",
                           statistics.median(r) >= factor and min(r) > 1))
        else:
            checks.append((what, summary(r), statistics.median(r) >= factor))
    if not checks:
        return []
    out = ["| target | measured: median (min-max) | met |", "| --- | --- | --- |"]
    out += [f"| {what} | {value} | {'yes' if met else '**no**'} |" for what, value, met in checks]
    return out


PEER_TARGETS = [("e2e", "qemu10", "e2e-multifd", 2), ("e2e", "qemu10", "e2e", 6),
                ("restore", "qemu10", "restore-mapped-ram", 1.5),
                ("e2e" + HUGE, "qemu10", "e2e-multifd" + HUGE, 2), ("restore" + HUGE, "qemu10", "restore-mapped-ram" + HUGE, 1.5)]


def reach_table(rows, bound_title, bound_of):
    """Per target against a peer and per run, the time the target asks of ours (the peer's time / the factor)
    against `bound_of(ours_measure, run)` (None: no bound in that run), and the runs asking for less."""
    out = [f"| target | runs | asked of ours s median (min-max) | {bound_title} s median (min-max) | "
           "asked / that median (min-max) | runs asking less |",
           "| --- | ---: | --- | --- | --- | ---: |"]
    for ours, peer, measure, factor in PEER_TARGETS:
        runs = rows.get((peer, measure))
        if not runs or not rows.get(("ours", ours)):
            continue
        pairs = [(runs[run]["seconds"] / factor, bound) for run in sorted(runs)
                 if (bound := bound_of(ours, run)) is not None]
        if not pairs:
            continue
        asked, bounds = zip(*pairs)
        ratio = [a / b for a, b in pairs]
        out.append(f"| ours {ours} ≥ {factor:g}x {PEER_NAMES[peer]} {measure} | {len(pairs)} | "
                   f"{summary(asked, '')} | {summary(bounds, '')} | {summary(ratio)} | "
                   f"{sum(r < 1 for r in ratio)} of {len(ratio)} |")
    return out if len(out) > 2 else []


def floor_table(rows):
    """Whether a target against a peer is within this host's reach: per run, against the fastest fill of the same
    fresh pages measured in that run, by any of the ways a receiver could fill them. No receiver lands the pages
    faster than that fill, which reads no stream, so a target asking for less is out of reach in that run."""
    fills = {huge: list(receiving_fills(rows, huge_pages=huge).values()) for huge in (False, True)}

    def fastest_fill(ours, run):
        times = [fill[run]["seconds"] for fill in fills[ours.endswith(HUGE)] if run in fill]
        return min(times) if times else None
    return reach_table(rows, "fastest fill", fastest_fill)


def cpu_table(rows, cores):
    """How much of the host's cores each measure kept busy: its CPU seconds (user and system) over its time."""
    of = f" of {cores}" if cores else ""
    out = [f"| tool | measure | CPU s median (min-max) | cores busy{of}: CPU / time median (min-max) |",
           "| --- | --- | --- | --- |"]
    for (tool, measure), runs in sorted(rows.items(), key=lambda item: sort_key(item[0])):
        cpu = [r["cpu"] for r in runs.values() if r["cpu"] is not None]
        busy = [r["cpu"] / r["seconds"] for r in runs.values() if r["cpu"] is not None and r["seconds"]]
        if cpu:
            out.append(f"| {tool} | {measure} | {summary(cpu, '')} | {summary(busy, '')} |")
    return out if len(out) > 2 else []


def cores_table(rows, cores):
    """Whether a target against a peer fits this host's cores: per run, against the CPU that our stream cannot do
    without, shared by all the cores. End to end that is the sender's own work (vmsend to /dev/null: zero pages
    found, checksums, no pipe) and the cheapest fill of the fresh pages measured in that run; a restore, the fill
    alone. Receiving, reading the pipe and checking the checksums add to it. It is a bound at the price per page the
    fill paid, which moves between the measures of a run: a run asking for less would need fresh pages cheaper than
    the fill found them. Needs the file to name its host's cores."""
    if not cores:
        return []
    sender = rows.get(("ours", "save-null"), {})
    fills = list(receiving_fills(rows).values())

    def unskippable_cpu(ours, run):
        if ours.endswith(HUGE):  # a used pool: no fresh pages, and no fill of them to bound it
            return None
        fill = [f[run]["cpu"] for f in fills if run in f and f[run]["cpu"] is not None]
        send = sender.get(run, {}).get("cpu") if ours == "e2e" else 0
        return (send + min(fill)) / cores if fill and send is not None else None
    return reach_table(rows, f"CPU that cannot be skipped / {cores} cores,", unskippable_cpu)


def repeats_table(rows):
    """Identical work twice in one run (MEASURE and MEASURE-again): how far apart this host puts it. A target
    against a peer, pairwise, asks ours to be apart from the peer by more than the peer is from itself."""
    out = ["| tool | measure | pairs | again / first median (min-max) | slower / faster median (max) | "
           "one took ≥ 2x the other in |",
           "| --- | --- | ---: | --- | --- | ---: |"]
    for (tool, measure), again in sorted(rows.items(), key=lambda item: sort_key(item[0])):
        first = rows.get((tool, measure.removesuffix(AGAIN)))
        if not measure.endswith(AGAIN) or not first:
            continue
        ratio = pairwise(again, first)
        if not ratio:
            continue
        apart = [max(r, 1 / r) for r in ratio]
        out.append(f"| {tool} | {measure.removesuffix(AGAIN)} | {len(ratio)} | {summary(ratio)} | "
                   f"{statistics.median(apart):.2f}x ({max(apart):.2f}x) | {sum(a >= 2 for a in apart)} of {len(apart)} |")
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
    for (tool, measure), runs in sorted(rows.items(), key=lambda item: sort_key(item[0])):
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
    rows, cores = load(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
    if not rows:
        print("report: no result lines", file=sys.stderr)
        return 1
    fill_our_wire(rows)
    sections = [("Measurements", measurements_table(rows)),
                ("Targets", targets_table(rows)),
                ("Within reach? What a target asks against the fastest fill of fresh memory (same run)",
                 floor_table(rows)),
                ("Within reach? What a target asks against the CPU it cannot skip, on all the cores (same run)",
                 cores_table(rows, cores)),
                ("Cores kept busy", cpu_table(rows, cores)),
                ("Identical work twice in one run: the host's own spread", repeats_table(rows)),
                ("Ours against the peers (pairwise, same run)", ratios_table(rows)),
                ("Fresh-memory variants against pwrite (pairwise, same run)", fresh_table(rows)),
                ("Distance to the fresh-memory limit (pairwise, same run)", distance_table(rows)),
                ("LZ4 on both cores", compression_table(rows)),
                ("Distance to the pipe limit", limits_table(rows))]
    for title, table in sections:
        if table:
            print(f"### {title}\n")
            print("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
