#!/usr/bin/env python3
"""The mutation campaign: mutated streams fed to `vmstream dump`, `vmrecv -n` and `vmrecv`, three verdicts compared.

Usage: fuzz/mutate-streams.py [COUNT] [--seed N] [--build DIR] [--jobs N] [--report FILE]

A small guest is saved twice (raw and LZ4) as seed streams; each mutated stream (classes in stream_mutations.py)
goes to the three tools in turn. Per mutation class it counts:
  disagreements  dump refused and -n or the receive did not refuse with dump's very line; dump accepted and -n or
                 the receive refused for the format; -n and the receive gave different verdicts or lines, except
                 for what vmrecv(8) lists under CAVEATS as found only by a real restore (counted apart)
  crashes        a tool ended by a signal, or printed anything but its one line (and warnings)
  hangs          a tool still running after the timeout
  left running   a VM left running by a receive that failed, or a machine -n created; any file or process of
                 the target left behind after a failed receive
Exits 1 when any of these is not 0. Needs root (or KVM access) and the debug build (scripts/test.sh).
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stream_mutations  # noqa: E402

HOST_REFUSAL = "this host cannot run VM "
RESTORE_ONLY = ("this host's KVM refused the state of VM ", "crashed right after it was resumed")


def run(argv, stdin_path=None, timeout=60, output=False):
    """(status, stderr) of a tool, or its stdout with `output`; status None when it had to be killed."""
    with open(stdin_path or os.devnull, "rb") as stdin:
        process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE if output else subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            out, err = process.communicate(timeout=timeout)
            return process.returncode, (out if output else err).decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return None, ""


def verdict(tool, status, stderr):
    """('accept' | 'refuse', line) or ('crash', why) for one tool's outcome."""
    lines = [line for line in stderr.split("\n") if line and ": warning: " not in line and not line.startswith("warning:")]
    if status is None:
        return "hang", "timed out"
    if status < 0 or status >= 128 or "Fatal error" in stderr:
        return "crash", "status %s: %s" % (status, stderr[-300:])
    if status == 0:
        return ("accept", "") if not lines else ("crash", "exit 0 with output: " + stderr[-300:])
    if status != 1 or len(lines) != 1 or not lines[0].startswith(tool + ": "):
        return "crash", "status %s, not one line: %s" % (status, stderr[-300:])
    return "refuse", lines[0][len(tool) + 2:]


class Worker:
    """One target name and one run directory share the source VM's directory; a worker checks its own leftovers."""

    def __init__(self, tools, run_dir, name):
        self.tools, self.run_dir, self.name = tools, run_dir, name

    def tool(self, name, *args):
        return [os.path.join(self.tools, name), "--run-dir", self.run_dir] + list(args) if name != "vmstream" else [
            os.path.join(self.tools, name)] + list(args)

    def leftovers(self):
        files = [f for f in os.listdir(self.run_dir) if f.split(".")[0] == self.name or f.startswith(self.name + "-")]
        processes = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    words = handle.read().split(b"\0")
            except OSError:
                continue
            mine = self.run_dir.encode() in words or b"--check" in words
            if mine and self.name.encode() in words:
                processes.append(pid)
        return files, processes

    def destroy(self):
        """Ends an accepted copy and removes its disk images, which a destroy leaves as the user's data."""
        run(self.tool("vmctl", "destroy", self.name), timeout=30)
        for name in os.listdir(self.run_dir):
            if name.startswith(self.name + "-") and name.endswith(".img"):
                os.unlink(os.path.join(self.run_dir, name))

    def feed(self, path):
        """The three verdicts on one stream file, and what was wrong."""
        dump = verdict("vmstream", *run(self.tool("vmstream", "dump"), path))
        dry = verdict("vmrecv", *run(self.tool("vmrecv", "-n", self.name), path))
        dry_left = self.leftovers()
        receive_status, receive_err = run(self.tool("vmrecv", self.name), path)
        receive = verdict("vmrecv", receive_status, receive_err)
        problems = {}
        for outcome in (dump, dry, receive):
            if outcome[0] in ("crash", "hang"):
                problems[outcome[0] + "es" if outcome[0] == "crash" else "hangs"] = outcome[1]
        files, processes = self.leftovers()
        restore_only = receive[0] == "refuse" and any(words in receive[1] for words in RESTORE_ONLY)
        if dry_left != ([], []):
            problems["left running"] = "-n left %s" % (dry_left,)
        if receive[0] == "accept" or (restore_only and "crashed" in receive[1]):
            status, output = run(self.tool("vmctl", "status", self.name), timeout=30, output=True)
            running = status == 0 and "state:   running" in output
            if receive[0] == "accept" and not running:
                problems["left running"] = "accepted but not running"
            if receive[0] != "accept" and running:
                problems["left running"] = "refused, yet running"
            self.destroy()
            files, processes = self.leftovers()
        if files or processes:
            problems["left running"] = "left behind: %s %s" % (files, processes)
            self.destroy()
        agree = self.agree(dump, dry, receive, restore_only)
        if agree is not None:
            problems["disagreements"] = agree
        return dump, dry, receive, restore_only, problems

    @staticmethod
    def agree(dump, dry, receive, restore_only):
        """None when the verdicts agree, else why not."""
        if "crash" in (dump[0], dry[0], receive[0]) or "hang" in (dump[0], dry[0], receive[0]):
            return None
        if dump[0] == "refuse":
            if dry != dump or receive != dump:
                return "dump %r, -n %r, receive %r" % (dump, dry, receive)
            return None
        if dry[0] == "refuse" and not dry[1].startswith((HOST_REFUSAL, "a VM named ")):
            return "dump accepted, -n refused for the format: %r" % (dry,)
        if restore_only and dry[0] == "accept":
            return None
        if dry != receive:
            return "-n %r, receive %r" % (dry, receive)
        return None


def make_seeds(tools, run_dir, work):
    """A small guest with a 4 MiB disk, saved raw, with LZ4, and live; it stays migrated in the run directory."""
    vmrun = [os.path.join(tools, "vmrun"), "--run-dir", run_dir]
    image = os.path.join(work, "src.img")
    with open(image, "wb") as handle:
        handle.truncate(4 << 20)
    subprocess.run(vmrun + ["--cpus", "2", "--memory", "16M", "--guest-working-set", "2M", "--disk", image,
                            "--guest-disk-rate", "4M/s", "src"], check=True, stdout=subprocess.DEVNULL)
    time.sleep(2)
    seeds = []
    for name, extra in (("raw", ["--warm"]), ("lz4", ["--warm", "-c", "lz4", "--force"]), ("live", ["--force"])):
        path = os.path.join(work, name + ".vms")
        if name == "live":
            run([os.path.join(tools, "vmctl"), "--run-dir", run_dir, "resume", "--force", "src"])
            time.sleep(1)
        with open(path, "wb") as out:
            subprocess.run([os.path.join(tools, "vmsend"), "--run-dir", run_dir] + extra + ["src"],
                           stdout=out, stderr=subprocess.DEVNULL, check=True)
        with open(path, "rb") as handle:
            seeds.append(stream_mutations.Stream(handle.read()))
    return seeds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--build", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.build/debug"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", help="write the results as Markdown to this file")
    args = parser.parse_args()
    # SIGTERM and SIGHUP end the campaign as ^C does: through the cleanup below, which ends the source VM.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.default_int_handler)
    tools = os.path.abspath(args.build)
    work = tempfile.mkdtemp(prefix="vmmutate-")
    run_dir = os.path.join(work, "run")
    os.mkdir(run_dir, 0o700)
    started = time.time()
    try:
        seeds = make_seeds(tools, run_dir, work)
        classes = list(stream_mutations.CLASSES)
        figures = {name: dict(streams=0, accepted=0, host=0, restore=0, disagreements=0, crashes=0, hangs=0,
                              **{"left running": 0}) for name in classes}
        examples = {}
        lock = threading.Lock()
        counter = iter(range(args.count))
        stop = threading.Event()

        def work_loop(worker):
            while not stop.is_set():
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                rng = random.Random(args.seed * 1_000_003 + number)
                class_name = classes[number % len(classes)]
                data = stream_mutations.mutate(class_name, rng, seeds[number % len(seeds)])
                path = os.path.join(work, "%s.vms" % worker.name)
                with open(path, "wb") as out:
                    out.write(data)
                dump, dry, receive, restore_only, problems = worker.feed(path)
                with lock:
                    row = figures[class_name]
                    row["streams"] += 1
                    row["accepted"] += receive[0] == "accept"
                    row["host"] += dump[0] == "accept" and dry[0] == "refuse"
                    row["restore"] += restore_only
                    for key, why in problems.items():
                        row[key] += 1
                        examples.setdefault((class_name, key), []).append("stream %d: %s" % (number, why))
                    done = sum(r["streams"] for r in figures.values())
                    if done % 250 == 0:
                        print("%d streams, %.0f s" % (done, time.time() - started), file=sys.stderr, flush=True)

        threads = [threading.Thread(target=work_loop, args=(Worker(tools, run_dir, "m%dt%d" % (os.getpid(), index)),))
                   for index in range(args.jobs)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            # Each worker ends its stream and cleans up after it; then the source goes.
            stop.set()
            for thread in threads:
                thread.join()
            raise
    finally:
        subprocess.run([os.path.join(tools, "vmctl"), "--run-dir", run_dir, "destroy", "src"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    report = render(figures, examples, args, time.time() - started, [len(seed.frame()) for seed in seeds])
    print(report)
    if args.report:
        with open(args.report, "w") as out:
            out.write(report)
    bad = sum(row[key] for row in figures.values() for key in ("disagreements", "crashes", "hangs", "left running"))
    sys.exit(1 if bad else 0)


def render(figures, examples, args, seconds, seed_sizes):
    columns = ["streams", "accepted", "host", "restore", "disagreements", "crashes", "hangs", "left running"]
    lines = [
        "| class | streams fed | accepted by all | refused by the host only | found only by a restore "
        "| disagreements | crashes | hangs | VMs or files left |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    totals = {key: 0 for key in columns}
    for name, row in figures.items():
        lines.append("| %s | %s |" % (name, " | ".join(str(row[key]) for key in columns)))
        for key in columns:
            totals[key] += row[key]
    lines.append("| **all** | %s |" % " | ".join("**%d**" % totals[key] for key in columns))
    text = "\n".join(lines)
    header = ("`fuzz/mutate-streams.py %d --seed %d --jobs %d`: %d streams in %.0f s; seed streams of %s bytes "
              "(a 16 MiB, 2-vCPU guest with a 4 MiB disk: cold raw, cold LZ4, live).\n\n" % (args.count, args.seed, args.jobs,
                                                                sum(r["streams"] for r in figures.values()), seconds,
                                                                " and ".join(map(str, seed_sizes))))
    detail = ""
    for (name, key), items in sorted(examples.items()):
        detail += "\n%s, %s:\n" % (name, key) + "".join("- %s\n" % item for item in items[:5])
    return header + text + "\n" + detail


if __name__ == "__main__":
    main()
