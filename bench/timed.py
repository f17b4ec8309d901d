#!/usr/bin/env python3
"""Runs one command or a two-command pipeline and prints 'SECONDS [CPU] RSS1_KIB [RSS2_KIB]'.

usage: timed.py [--cpu] [--stdin FILE] [--stdout FILE] -- CMD... [--pipe CMD...]
Seconds are wall-clock from the first start to the last exit; peak RSS comes from wait4, so it is
each process's own peak (VmHWM), not a sample. With --cpu, CPU is the user and system seconds of
all the commands together (and the children they waited for): the work two cores had to share.
Exits 1 if any command fails, naming it.
"""
import os
import subprocess
import sys
import time


def main(argv):
    stdin_path = stdout_path = None
    with_cpu = False
    while argv and argv[0] != "--":
        if argv[0] == "--cpu":
            with_cpu = True
            argv = argv[1:]
        elif argv[0] in ("--stdin", "--stdout") and len(argv) >= 2:
            if argv[0] == "--stdin":
                stdin_path = argv[1]
            else:
                stdout_path = argv[1]
            argv = argv[2:]
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    argv = argv[1:]
    commands = [[]]
    for word in argv:
        if word == "--pipe":
            commands.append([])
        else:
            commands[-1].append(word)
    if not all(commands) or len(commands) > 2:
        print("timed.py: need one command, or two joined by --pipe", file=sys.stderr)
        return 2
    source = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    sink = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    processes = []
    start = time.monotonic()
    try:
        first = subprocess.Popen(commands[0], stdin=source,
                                 stdout=subprocess.PIPE if len(commands) == 2 else sink)
        processes.append(first)
        if len(commands) == 2:
            processes.append(subprocess.Popen(commands[1], stdin=first.stdout, stdout=sink))
            first.stdout.close()
        results = {}
        while len(results) < len(processes):
            pid, status, usage = os.wait4(-1, 0)
            results[pid] = (os.waitstatus_to_exitcode(status), usage.ru_maxrss,
                            usage.ru_utime + usage.ru_stime)
        seconds = time.monotonic() - start
    except BaseException:
        for process in processes:
            process.kill()
        raise
    for process, command in zip(processes, commands):
        process.returncode = results[process.pid][0]
        if process.returncode != 0:
            print(f"timed.py: {command[0]} exited with status {process.returncode}", file=sys.stderr)
            return 1
    cpu = [f"{sum(results[p.pid][2] for p in processes):.4f}"] if with_cpu else []
    print(" ".join([f"{seconds:.4f}", *cpu, *(str(results[p.pid][1]) for p in processes)]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except OSError as error:
        print(f"timed.py: {error}", file=sys.stderr)
        sys.exit(1)
