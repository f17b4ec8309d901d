#!/usr/bin/env python3
"""The Linux benchmark's tables (markdown) from bench/linux.sh's tab-separated lines.

usage: linux_report.py RESULTS.tsv
Figures are medians with their min-max over the successful runs. Every ratio is a median of per-run ratios
(run k of one setting against run k of the other, measured close together), with their min-max. Failed
measures (ok=0) are listed and left out of the figures.
"""
import statistics
import sys

GOAL_MS = 20
COLUMNS = ("tool", "measure", "setting", "run", "seq", "ok", "total_s", "downtime_ms", "tool_downtime_ms",
           "guest_gap_ms", "to_beat_s", "detail")
LABELS = {"ours-disk": "ours, disk in the stream", "ours-shared": "ours, --shared-storage",
          "qemu-20": "QEMU 10, downtime-limit 20 ms", "qemu-300": "QEMU 10, downtime-limit 300 ms (default)",
          "restore-ours": "ours", "restore-qemu": "QEMU 10 (mapped-ram, 2 multifd channels)"}
# vmrecv(8) watches the copy for a quarter of a second after resuming it, then exits.
WATCH_S = 0.25
PHASES = ("pause", "dirty_log", "final_pages", "state", "end", "end_read", "restore", "resume")
# (ours, QEMU): compared run by run.
PAIRS = [("ours-shared", "qemu-20"), ("ours-shared", "qemu-300"), ("ours-disk", "qemu-20"), ("ours-disk", "qemu-300")]


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def load(path):
    rows, comments = [], []
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("#"):
            if not line.startswith("#tool"):
                comments.append(line[1:].strip())
            continue
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            continue
        row = dict(zip(COLUMNS, fields))
        row["details"] = dict(p.split("=", 1) for p in row["detail"].split(";") if "=" in p)
        rows.append(row)
    return rows, comments


def cell(values, digits=0):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    f = lambda v: f"{v:.{digits}f}"
    low, middle, high = f(min(values)), f(statistics.median(values)), f(max(values))
    return middle if low == high else f"{middle} ({low}-{high})"


def col(rows, key):
    return [number(r[key]) if key in r else number(r["details"].get(key)) for r in rows]


def groups(rows, measure):
    out = {}
    for row in rows:
        if row["measure"] == measure:
            out.setdefault(row["setting"], []).append(row)
    return out


def good(rows):
    return [r for r in rows if r["ok"] == "1"]


def pairwise(ours, peer, key):
    a = {r["run"]: number(r[key]) for r in good(ours)}
    b = {r["run"]: number(r[key]) for r in good(peer)}
    return [b[k] / a[k] for k in a if k in b and a[k] and b[k] is not None]


def ratio(values):
    if not values:
        return "-"
    middle, _, spread = cell(values, 2).partition(" ")
    return f"{middle}x {spread}; ours faster in {sum(v > 1 for v in values)} of {len(values)}"


def add_running(rows):
    """running_s: from the start to the copy running. QEMU: its RESUME event (total_s). Ours: vmrecv's exit less
    its quarter-second watch, an upper bound (the watch lasts at least that)."""
    for r in rows:
        total = number(r["total_s"])
        r["running_s"] = "-" if total is None else str(total - WATCH_S if r["tool"] == "ours" else total)


def migration_table(rows):
    g = groups(rows, "migrate")
    out = ["| setting | ok / runs | total s (ours: to vmrecv's exit) | to the copy running s | downtime ms "
           "| QEMU's own downtime figure ms | rounds (ours) / dirty syncs (QEMU) "
           "| guest gap_ms, first beat after | first beat after, s from the start |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for setting in [s for s in LABELS if s in g]:
        ok = good(g[setting])
        out.append("| " + " | ".join([LABELS[setting], f"{len(ok)} / {len(g[setting])}", cell(col(ok, "total_s"), 2),
                                      cell(col(ok, "running_s"), 2),
                                      cell(col(ok, "downtime_ms"), 1), cell(col(ok, "tool_downtime_ms")),
                                      cell(col(ok, "rounds")), cell(col(ok, "guest_gap_ms")),
                                      cell(col(ok, "to_beat_s"), 1)]) + " |")
    return out


def pairs_table(rows):
    g = groups(rows, "migrate")
    out = ["| ours | against | to the copy running: QEMU / ours | downtime: QEMU / ours |", "| --- | --- | --- | --- |"]
    for ours, peer in PAIRS:
        if ours in g and peer in g:
            out.append(f"| {LABELS[ours]} | {LABELS[peer]} | {ratio(pairwise(g[ours], g[peer], 'running_s'))} | "
                       f"{ratio(pairwise(g[ours], g[peer], 'downtime_ms'))} |")
    return out if len(out) > 2 else []


def goal_table(rows):
    g = groups(rows, "migrate")
    out = [f"| setting | downtime median ms | median ≤ {GOAL_MS} ms | runs within {GOAL_MS} ms |",
           "| --- | ---: | --- | ---: |"]
    for setting in ("ours-disk", "ours-shared"):
        values = [v for v in col(good(g.get(setting, [])), "downtime_ms") if v is not None]
        if values:
            m = statistics.median(values)
            out.append(f"| {LABELS[setting]} | {m:.1f} | {'yes' if m <= GOAL_MS else '**no**'} | "
                       f"{sum(v <= GOAL_MS for v in values)} of {len(values)} |")
    return out if len(out) > 2 else []


def phases_table(rows):
    g = groups(rows, "migrate")
    out = ["| setting | downtime | " + " | ".join(PHASES) + " | source paused (vmsend) |",
           "| --- | --- | " + " | ".join("---" for _ in PHASES) + " | --- |"]
    for setting in ("ours-disk", "ours-shared"):
        ok = good(g.get(setting, []))
        if ok:
            out.append("| " + " | ".join([LABELS[setting], cell(col(ok, "downtime_ms"), 1)] +
                                         [cell(col(ok, f"ph_{p}"), 1) for p in PHASES] +
                                         [cell(col(ok, "paused_ms"), 1)]) + " |")
    return out if len(out) > 2 else []


def restore_table(rows):
    g = groups(rows, "restore")
    out = ["| tool | ok / runs | save s | snapshot MB | restore s (ours: to vmrecv's exit) | to the copy running s "
           "| first beat after, s from the restore's start | guest gap_ms, first beat after |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for setting in ("restore-ours", "restore-qemu"):
        if setting in g:
            ok = good(g[setting])
            out.append("| " + " | ".join([LABELS[setting], f"{len(ok)} / {len(g[setting])}", cell(col(ok, "save_s"), 2),
                                          cell([v / 1e6 for v in col(ok, "snapshot_bytes") if v is not None], 1),
                                          cell(col(ok, "total_s"), 2), cell(col(ok, "running_s"), 2),
                                          cell(col(ok, "to_beat_s"), 2),
                                          cell(col(ok, "guest_gap_ms"))]) + " |")
    if "restore-ours" in g and "restore-qemu" in g:
        out += ["", "| restore, per run | QEMU / ours |", "| --- | --- |",
                f"| to the copy running | {ratio(pairwise(g['restore-ours'], g['restore-qemu'], 'running_s'))} |",
                f"| to the first beat | {ratio(pairwise(g['restore-ours'], g['restore-qemu'], 'to_beat_s'))} |"]
    return out if len(out) > 2 else []


def boot_table(rows):
    boots = [r for r in rows if r["measure"] == "boot"]
    out = ["| tool | process start to the first heartbeat s |", "| --- | --- |"]
    for tool in ("ours", "qemu10"):
        mine = [r for r in boots if r["tool"] == tool]
        if mine:
            failed = len(mine) - len(good(mine))
            out.append(f"| {'ours' if tool == 'ours' else 'QEMU 10'} | {cell(col(good(mine), 'to_beat_s'), 1)}"
                       f"{f' ({failed} failed)' if failed else ''} |")
    return out if len(out) > 2 else []


def failures(rows):
    bad = [r for r in rows if r["ok"] != "1"]
    if not bad:
        return ["None: after every move two new heartbeats in sequence with mem_failures=0 disk_failures=0 "
                "clock_jumps=0 disk=ok, no FAIL line and no kernel complaint."]
    return [f"- run {r['run']} #{r['seq']} {r['tool']} {r['measure']} {r['setting']}: "
            f"{r['details'].get('FAIL', r['detail'])}" for r in bad]


def main():
    rows, comments = load(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin")
    if not rows:
        print("linux_report: no result lines", file=sys.stderr)
        return 1
    add_running(rows)
    print("\n".join(f"    {c}" for c in comments) + "\n")
    for title, table in (("Live migration", migration_table(rows)),
                         ("Ours against QEMU 10, per run", pairs_table(rows)),
                         ("The downtime goal", goal_table(rows)),
                         ("Where our downtime goes, ms", phases_table(rows)),
                         ("Cold snapshot: save and restore", restore_table(rows)),
                         ("Boot, for contrast", boot_table(rows)),
                         ("Failures", failures(rows))):
        if table:
            print(f"### {title}\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
