#!/usr/bin/env python3
"""The Linux benchmark: live migration and cold restore of the Linux test guest (guest/linux), ours and QEMU 10
-M microvm side by side in one run. Driven by bench/linux.sh, which finds the tools and cleans up.

Each tool boots the guest once (same vmlinux and initramfs, 128 MiB, 1 vCPU, a 64 MiB sparse disk image) and then
moves it from instance to instance; the measures run in a random order drawn from --seed, every setting once per
run. One tab-separated line per measure on stdout (COLUMNS); the tools' own output and every failure's console
tail in --log. The pid of every vmrun and QEMU started goes, one per line, to WORKDIR/pids (linux.sh's cleanup).

Settings (the setting column):
  ours-disk     vmsend -P NAME | vmrecv -P NEW, default settings: the disk travels in the stream
  ours-shared   the same with vmsend --shared-storage: NEW opens the same image
  qemu-20       QEMU migrate unix:, downtime-limit 20 ms, the same image on both sides
  qemu-300      the same at QEMU's default downtime-limit, 300 ms
  restore-ours  vmsend --warm NAME > FILE (timed as the save), vmrecv NEW < FILE (the restore)
  restore-qemu  stop, migrate file: with mapped-ram (the save); a new QEMU -incoming defer, migrate-incoming
                file:, cont (the restore); the disk image stays where it is (QEMU's snapshot has no disk)
Every move and restore is judged by the guest: two new heartbeats in sequence with mem_failures=0
disk_failures=0 clock_jumps=0 disk=ok, no FAIL line and nothing about stalls or the clock in the console.
"""
import argparse
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

COLUMNS = ("tool", "measure", "setting", "run", "seq", "ok", "total_s", "downtime_ms", "tool_downtime_ms",
           "guest_gap_ms", "to_beat_s", "detail")
SETTINGS = ("ours-disk", "ours-shared", "qemu-20", "qemu-300", "restore-ours", "restore-qemu")
# The downtime's phases, as the -P summary lines end (vmsend's five, then vmrecv's three); see vmsend(8).
PHASES = ("pause", "dirty_log", "final_pages", "state", "end", "end_read", "restore", "resume")
# Words that mean the guest kernel noticed something wrong with its time or its CPUs (as LinuxGuestTests).
COMPLAINTS = ("rcu: INFO", "rcu_sched", "stall", "soft lockup", "hard LOCKUP", "hung_task", "blocked for more than",
              "clocksource watchdog", "timekeeping watchdog", "Call Trace", "BUG:", "Oops", "Kernel panic")
BEAT = re.compile(r"vmtest: beat=(\d+)((?: \S+=\S*)*)")
# The command line vmrun gives by default on this kind of host (guest/linux/README.md); QEMU gets it too.
CMDLINE = ("console=ttyS0 earlyprintk=serial,ttyS0 nokaslr lpj=1000000 tsc=reliable no_timer_check mitigations=off "
           "panic=-1 rodata=off rdinit=/init clearcpuid=xsave,cx16,popcnt,smap,erms,fsrm "
           "rcupdate.rcu_cpu_stall_suppress_at_boot=1")


class BenchError(Exception):
    pass


def die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log(text):
    with open(ARGS.log, "a") as f:
        f.write(text.rstrip("\n") + "\n")


def say(text):
    print(f"linux-bench: {text}", file=sys.stderr, flush=True)
    log(f"# {time.strftime('%H:%M:%S')} {text}")


def note_pid(pid):
    with open(os.path.join(ARGS.workdir, "pids"), "a") as f:
        f.write(f"{pid}\n")


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing)"


def make_disk(path):
    with open(path, "wb") as f:
        f.truncate(64 << 20)


def parse_beat(line):
    match = BEAT.search(line)
    if not match:
        return None
    fields = dict(pair.split("=", 1) for pair in match.group(2).split())
    fields["beat"] = match.group(1)
    return fields


class Console:
    """A serial console log that only grows (each machine has a new one): its beats as they come."""

    def __init__(self, path):
        self.path = path

    def text(self, start=0):
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            return ""
        end = data.rfind(b"\n")
        return data[:end + 1].decode(errors="replace").replace("\r", "") if end >= 0 else ""

    def wait_beats(self, start, count, timeout, alive=lambda: True, stall=None):
        """The first `count` beats after offset `start`, each with the monotonic time it was seen. With `stall`,
        gives up when the console has not grown for that many seconds."""
        deadline = time.monotonic() + timeout
        grew = time.monotonic()
        seen = []
        position = start
        partial = b""
        while len(seen) < count:
            try:
                with open(self.path, "rb") as f:
                    f.seek(position)
                    data = f.read()
            except OSError:
                data = b""
            now = time.monotonic()
            if data:
                grew = now
                position += len(data)
                partial += data
                *lines, partial = partial.split(b"\n")
                for line in lines:
                    beat = parse_beat(line.decode(errors="replace"))
                    if beat:
                        seen.append((beat, now))
            if len(seen) >= count:
                break
            if now > deadline:
                raise BenchError(f"{len(seen)} of {count} heartbeats within {timeout:.0f} s in {self.path}")
            if stall and now - grew > stall:
                raise BenchError(f"the console stopped for {stall:.0f} s, its last line: "
                                 f"{(self.text(start).splitlines() or ['(none)'])[-1]}")
            if not alive():
                raise BenchError(f"the machine stopped ({len(seen)} of {count} heartbeats in {self.path})")
            time.sleep(0.02)
        return seen[:count]

    def complaints(self, start=0):
        # not the kernel's command line, which names rcupdate.rcu_cpu_stall_suppress_at_boot
        text = "\n".join(line for line in self.text(start).splitlines() if "command line" not in line.lower())
        found = [c for c in COMPLAINTS if c in text]
        fails = [line for line in text.splitlines() if "vmtest: FAIL" in line or "vmtest: FATAL" in line]
        return found + fails[:3]

    def tail(self, lines=25):
        return "\n".join(self.text().splitlines()[-lines:])


def health(beats, console, last_before=None):
    """Problems with the guest's beats and console after a move (empty when healthy)."""
    problems = []
    for beat, _ in beats:
        for counter in ("mem_failures", "disk_failures", "clock_jumps"):
            if beat.get(counter) != "0":
                problems.append(f"beat {beat['beat']}: {counter}={beat.get(counter)}")
        if beat.get("disk") != "ok":
            problems.append(f"beat {beat['beat']}: disk={beat.get('disk')}")
    numbers = [int(b["beat"]) for b, _ in beats]
    if last_before is not None and numbers and numbers[0] != last_before + 1:
        problems.append(f"first beat after is {numbers[0]}, the last before was {last_before}")
    if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        problems.append(f"beats out of sequence: {numbers}")
    problems += [f"console: {c}" for c in console.complaints()]
    return problems


def judge(result, console, t0, source_text, what):
    """Waits for two heartbeats on the moved guest's console (new file, offset 0) and checks them against the
    source's console."""
    try:
        beats = console.wait_beats(0, 2, ARGS.beat_timeout)
    except BenchError as error:
        result.fail(str(error))
        log(f"### console of {what}:\n{console.tail()}")
        return False
    last_before = last_beat(source_text, read(console.path))
    result.set(guest_gap_ms=int(beats[0][0].get("gap_ms", -1)), to_beat_s=beats[0][1] - t0)
    result.detail(beat_before=last_before, beat_after=beats[0][0]["beat"], next_gap_ms=beats[1][0].get("gap_ms"))
    problems = health(beats, console, last_before)
    if problems:
        result.fail("; ".join(problems))
        log(f"### console of {what}:\n{console.tail()}")
    return True


def last_beat(source_text, copy_text):
    """The number of the last beat the source printed. The pause may cut a line: the copy's UART sends the rest,
    so the copy's console starts with the end of that line, which is joined to the source's."""
    if source_text and not source_text.endswith("\n"):
        source_text += copy_text.split("\n", 1)[0]
    numbers = re.findall(r"vmtest: beat=(\d+) ", source_text)
    return int(numbers[-1]) if numbers else None


class Result:
    def __init__(self, tool, measure, setting):
        self.values = dict(tool=tool, measure=measure, setting=setting)
        self.details = []
        self.ok = True

    def set(self, **values):
        self.values.update(values)

    def detail(self, **values):
        self.details += [f"{k}={fmt(v)}" for k, v in values.items()]

    def fail(self, why):
        self.ok = False
        self.details.append("FAIL=" + re.sub(r"\s+", "_", why)[:300])

    def line(self, run, seq):
        v = dict(self.values, run=run, seq=seq, ok=1 if self.ok else 0, detail=";".join(self.details) or "-")
        return "\t".join(fmt(v.get(c)) for c in COLUMNS)


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 100 else f"{value:.1f}"
    return str(value)


def p_summary(text):
    """The -P summary line's fields (vmsend(8)), or None."""
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[0] == "summary" and len(fields) >= 11:
            return fields
    return None


def ms(micro):
    return None if micro in (None, "-") else int(micro) / 1000


# ---------------------------------------------------------------------------------------------------------
# Ours: vmrun, vmsend, vmrecv, vmctl in a private run folder.

class Ours:
    def __init__(self):
        self.run_dir = os.path.join(ARGS.workdir, "run")
        os.makedirs(self.run_dir, exist_ok=True)
        self.current = None  # the name of the machine holding the guest
        self.disk = None  # its image
        self.hop = 0

    def console(self, name):
        return Console(os.path.join(self.run_dir, f"{name}.console"))

    def vmctl(self, *arguments):
        return subprocess.run([ARGS.vmctl, "--run-dir", self.run_dir, *arguments], capture_output=True, text=True)

    def status(self, name):
        done = self.vmctl("status", "--json", name)
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def started(self, name):
        pid = self.status(name).get("pid")
        if pid:
            note_pid(pid)

    def destroy(self, name):
        self.vmctl("destroy", name)

    def drop(self):
        """Destroys the machine holding the guest, with its image."""
        if self.current:
            self.destroy(self.current)
            if self.disk and os.path.exists(self.disk):
                os.unlink(self.disk)
            self.current = self.disk = None

    def boot(self):
        result = Result("ours", "boot", "-")
        self.hop += 1
        name, image = f"lx{self.hop}", os.path.join(ARGS.workdir, f"ours-boot{self.hop}.img")
        make_disk(image)
        t0 = time.monotonic()
        done = subprocess.run([ARGS.vmrun, "--run-dir", self.run_dir, "--cpus", "1", "--memory", "128M",
                               "--kernel", ARGS.kernel, "--initrd", ARGS.initrd, "--disk", image, name],
                              capture_output=True, text=True)
        if done.returncode != 0:
            os.unlink(image)
            raise BenchError(f"vmrun: {done.stderr.strip()}")
        self.started(name)
        self.current, self.disk = name, image
        alive = lambda: os.path.exists(os.path.join(self.run_dir, f"{name}.sock"))
        return boot_result(result, self.console(name), t0, alive, self.drop)

    def move(self, result, send_options, receive_input=None):
        """vmsend SEND_OPTIONS CURRENT | vmrecv NEW (or, with receive_input, vmsend into that file, then vmrecv from
        it), then the guest is judged on NEW. total_s: from the start of vmrecv (and of vmsend, in a pipe) until both
        exited (vmrecv watches the copy for a quarter of a second after resuming it, then exits)."""
        source = self.current
        self.hop += 1
        target = f"lx{self.hop}"
        disk_dir = os.path.join(ARGS.workdir, "disks", target)
        os.makedirs(disk_dir)
        send = [ARGS.vmsend, "-P", *send_options, "--run-dir", self.run_dir, source]
        receive = [ARGS.vmrecv, "-P", "--run-dir", self.run_dir, "--disk-dir", disk_dir, target]
        err_send, err_recv = (os.path.join(ARGS.workdir, f) for f in ("vmsend.err", "vmrecv.err"))
        with open(err_send, "wb") as es, open(err_recv, "wb") as er:
            if receive_input is None:
                t0 = time.monotonic()
                sender = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=es, preexec_fn=die_with_parent)
                receiver = subprocess.Popen(receive, stdin=sender.stdout, stdout=subprocess.DEVNULL, stderr=er,
                                            preexec_fn=die_with_parent)
                sender.stdout.close()
                receiver.wait()
                sender.wait()
                t_recv = t0
            else:
                t0 = time.monotonic()
                with open(receive_input, "wb") as out:
                    sender = subprocess.run(send, stdout=out, stderr=es, preexec_fn=die_with_parent)
                result.detail(save_s=f"{time.monotonic() - t0:.3f}", snapshot_bytes=os.path.getsize(receive_input))
                t_recv = time.monotonic()
                receiver = None
                if sender.returncode == 0:
                    with open(receive_input, "rb") as inp:
                        receiver = subprocess.run(receive, stdin=inp, stdout=subprocess.DEVNULL, stderr=er,
                                                  preexec_fn=die_with_parent)
                os.unlink(receive_input)
            done = time.monotonic()
        send_text, recv_text = read(err_send), read(err_recv)
        log(f"## ours {result.values['setting']} hop {self.hop}: {source} -> {target}\n{send_text}{recv_text}")
        receiver_status = receiver.returncode if receiver else "-"
        if sender.returncode or receiver_status:
            result.fail(f"vmsend {sender.returncode} vmrecv {receiver_status}: "
                        f"{last_line(send_text)} / {last_line(recv_text)}")
            self.destroy(target)
            shutil.rmtree(disk_dir, ignore_errors=True)
            return
        self.started(target)
        result.set(total_s=done - t_recv)
        sent, received = p_summary(send_text), p_summary(recv_text)
        if sent and received:
            result.set(downtime_ms=ms(received[9]))
            result.detail(rounds=received[5], stream_bytes=received[1], paused_ms=ms(sent[8]), send_ms=ms(sent[6]),
                          recv_ms=ms(received[6]))
            round0 = [line.split("\t") for line in send_text.splitlines()
                      if line.startswith(("round\t0\t", "final\t0\t"))]
            if round0:
                result.detail(round0_ms=ms(round0[-1][5]), round0_bytes=round0[-1][4])
            if len(sent) >= 19 and len(received) >= 19:
                result.detail(**{f"ph_{p}": ms(v) for p, v in zip(PHASES, sent[11:16] + received[16:19])})
        state = self.status(source).get("state")
        if state != "migrated":
            result.fail(f"the source is {state}, not migrated")
        source_text = read(self.console(source).path)  # paused now
        self.destroy(source)
        images = [os.path.join(disk_dir, f) for f in os.listdir(disk_dir)]
        if images:
            os.unlink(self.disk)
            self.disk = images[0]
        else:
            os.rmdir(disk_dir)
        self.current = target
        judge(result, self.console(target), t_recv, source_text, target)

    def migrate(self, setting):
        result = Result("ours", "migrate", setting)
        self.move(result, ["--shared-storage"] if setting == "ours-shared" else [])
        return result

    def restore(self):
        result = Result("ours", "restore", "restore-ours")
        self.move(result, ["--warm"], os.path.join(ARGS.workdir, "ours-snapshot.vms"))
        return result


def boot_result(result, console, t0, alive, give_up):
    try:
        beats = console.wait_beats(0, 1, ARGS.boot_timeout, alive, ARGS.boot_stall)
    except BenchError as error:
        result.fail(str(error))
        log(f"### console of the boot that failed:\n{console.tail()}")
        give_up()
        return result
    result.set(to_beat_s=beats[0][1] - t0)
    problems = health(beats, console)
    if problems:
        result.fail("; ".join(problems))
        log(f"### console of the boot that failed:\n{console.tail()}")
        give_up()
    return result


# ---------------------------------------------------------------------------------------------------------
# QEMU 10 -M microvm, as guest/linux/try-in-qemu.sh boots it, plus QMP.

class QMP:
    def __init__(self, path, process, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"no QMP socket at {path}")
                time.sleep(0.02)
        self.reader = self.sock.makefile("rb")
        self.events = []
        self.read(None)
        self.execute("qmp_capabilities")

    def read(self, timeout):
        self.sock.settimeout(timeout)
        try:
            line = self.reader.readline()
        finally:
            self.sock.settimeout(None)
        if not line:
            raise BenchError("QEMU closed its QMP socket")
        message = json.loads(line)
        if "event" in message:
            stamp = message.get("timestamp", {})
            message["time"] = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
        return message

    def execute(self, command, **arguments):
        message = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self.read(120)
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise BenchError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(self, name, timeout, match=lambda data: True, fail=None):
        """The first event `name` whose data matches (kept events first); `fail` data raises."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if fail and fail(event):
                    self.events.remove(event)
                    raise BenchError(f"QEMU: {event['event']} {event.get('data')}")
                if event["event"] == name and match(event.get("data", {})):
                    self.events.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no QMP event {name} within {timeout} s")
            try:
                self.events.append(self.read(left))
            except (socket.timeout, TimeoutError):
                pass


def migration_failed(event):
    return event["event"] == "MIGRATION" and event["data"]["status"] in ("failed", "cancelled")


class QemuVM:
    count = 0

    def __init__(self, disk, incoming=False):
        QemuVM.count += 1
        self.id = QemuVM.count
        self.disk = disk
        base = os.path.join(ARGS.workdir, f"qemu{self.id}")
        self.qmp_path, self.log_path = base + ".qmp", base + ".log"
        self.console = Console(base + ".console")
        command = [ARGS.qemu]
        for folder in ARGS.qemu_data_dir:
            command += ["-L", folder]
        command += ["-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off", "-enable-kvm",
                    "-cpu", "host,arch-capabilities=off", "-m", "128M", "-smp", "1", "-nodefaults",
                    "-no-user-config", "-display", "none", "-serial", f"file:{self.console.path}", "-no-reboot",
                    "-kernel", ARGS.kernel, "-initrd", ARGS.initrd, "-append", CMDLINE,
                    # as try-in-qemu.sh's -drive (raw, cache writeback)
                    "-blockdev", json.dumps({"driver": "raw", "node-name": "disk0",
                                             "file": {"driver": "file", "filename": disk}}),
                    "-device", "virtio-blk-device,drive=disk0",
                    "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if incoming:
            command += ["-incoming", "defer"]
        environment = dict(os.environ, QEMU_MODULE_DIR=ARGS.qemu_module_dir) if ARGS.qemu_module_dir else None
        self.started = time.monotonic()
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=environment,
                                            preexec_fn=die_with_parent)
        note_pid(self.process.pid)
        try:
            self.qmp = QMP(self.qmp_path, self.process)
        except (BenchError, OSError) as error:
            self.quit()
            raise BenchError(f"{error}; QEMU said: {read(self.log_path)[-300:]}")
        self.qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])

    def alive(self):
        return self.process.poll() is None

    def set_capabilities(self, names, state):
        self.qmp.execute("migrate-set-capabilities",
                         capabilities=[{"capability": name, "state": state} for name in names])

    def quit(self):
        if self.process.poll() is None:
            try:
                self.qmp.execute("quit")
            except (BenchError, OSError, AttributeError):
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self, "qmp"):
            self.qmp.sock.close()
        for path in (self.qmp_path,):
            if os.path.exists(path):
                os.unlink(path)


class Qemu:
    def __init__(self):
        self.vm = None
        self.image = os.path.join(ARGS.workdir, "qemu-disk.img")

    def drop(self):
        if self.vm:
            self.vm.quit()
            self.vm = None
        if os.path.exists(self.image):
            os.unlink(self.image)

    def boot(self):
        result = Result("qemu10", "boot", "-")
        make_disk(self.image)
        t0 = time.monotonic()
        self.vm = QemuVM(self.image)
        return boot_result(result, self.vm.console, t0, self.vm.alive, self.drop)

    def migrate(self, setting):
        """migrate unix: to a new QEMU -incoming on the same image; timed, as ours, from starting the
        destination to its RESUME event (migrate_to_resume_ms: from the migrate command). The downtime: the
        source's STOP event to the copy's RESUME (QMP timestamps, one clock)."""
        result = Result("qemu10", "migrate", setting)
        source = self.vm
        limit = 300 if setting == "qemu-300" else 20
        sock = os.path.join(ARGS.workdir, "qemu-migrate.sock")
        target = None
        try:
            # QEMU's default max-bandwidth (128 MiB/s) would be the limit; ours has none.
            source.qmp.execute("migrate-set-parameters", **{"downtime-limit": limit, "max-bandwidth": 100 * 10**9})
            source.qmp.events.clear()  # this QEMU's own incoming migration's events, when it was a copy
            t0 = time.time()  # as ours, from starting the destination: vmrecv starts its vmrun
            target = QemuVM(self.image, incoming=True)
            target.qmp.execute("migrate-incoming", uri=f"unix:{sock}")
            t_migrate = time.time()
            source.qmp.execute("migrate", uri=f"unix:{sock}")
            source.qmp.wait_event("MIGRATION", ARGS.migrate_timeout, lambda d: d["status"] == "completed",
                                  migration_failed)
            stop = source.qmp.wait_event("STOP", 10)
            info = source.qmp.execute("query-migrate")
            resume = target.qmp.wait_event("RESUME", ARGS.migrate_timeout, fail=migration_failed)
        except BenchError as error:
            result.fail(str(error))
            log(f"## qemu {setting} failed: {error}\n" + (read(target.log_path) if target else "") +
                read(source.log_path))
            if target:
                target.quit()
            return result
        log(f"## qemu {setting}: {json.dumps(info)}")
        ram = info.get("ram", {})
        source_text = read(source.console.path)
        result.set(total_s=resume["time"] - t0, downtime_ms=(resume["time"] - stop["time"]) * 1000,
                   tool_downtime_ms=info.get("downtime"))
        result.detail(downtime_limit=limit, migrate_to_resume_ms=f"{(resume['time'] - t_migrate) * 1000:.1f}",
                      qemu_total_ms=info.get("total-time"), setup_ms=info.get("setup-time"),
                      rounds=ram.get("dirty-sync-count"), ram_bytes=ram.get("transferred"),
                      expected_downtime_ms=info.get("expected-downtime"))
        source.quit()
        self.vm = target
        judge(result, target.console, time.monotonic() - (time.time() - t0), source_text, f"qemu{target.id}")
        return result

    def restore(self):
        """stop, migrate file: with mapped-ram and multifd (2 channels), quit; a new QEMU -incoming defer on the
        same image, migrate-incoming file:, cont. The restore: migrate-incoming to RESUME."""
        result = Result("qemu10", "restore", "restore-qemu")
        source = self.vm
        saved = os.path.join(ARGS.workdir, "qemu-snapshot.mapped-ram")
        caps = ["multifd", "mapped-ram"]
        target = None
        try:
            source.set_capabilities(caps, True)
            source.qmp.execute("migrate-set-parameters", **{"multifd-channels": 2})
            source.qmp.events.clear()  # this QEMU's own incoming migration's events, when it was a copy
            t0 = time.monotonic()
            source.qmp.execute("stop")
            source.qmp.execute("migrate", uri=f"file:{saved}")
            source.qmp.wait_event("MIGRATION", ARGS.migrate_timeout, lambda d: d["status"] == "completed",
                                  migration_failed)
            result.detail(save_s=f"{time.monotonic() - t0:.3f}", snapshot_bytes=os.stat(saved).st_blocks * 512)
            source_text = read(source.console.path)
            source.quit()
            self.vm = None
            t0 = time.monotonic()
            target = QemuVM(self.image, incoming=True)
            target.set_capabilities(caps, True)
            target.qmp.execute("migrate-set-parameters", **{"multifd-channels": 2})
            target.qmp.execute("migrate-incoming", uri=f"file:{saved}")
            target.qmp.wait_event("MIGRATION", ARGS.migrate_timeout, lambda d: d["status"] == "completed",
                                  migration_failed)
            target.qmp.execute("cont")  # saved stopped, so it restores stopped
            target.qmp.wait_event("RESUME", ARGS.migrate_timeout)
            result.set(total_s=time.monotonic() - t0)
            target.set_capabilities(caps, False)  # its next migration goes to a socket
        except BenchError as error:
            result.fail(str(error))
            log(f"## qemu restore failed: {error}\n" + (read(target.log_path) if target else ""))
            if target:
                target.quit()
            return result
        finally:
            if os.path.exists(saved):
                os.unlink(saved)
        self.vm = target
        judge(result, target.console, t0, source_text, f"qemu{target.id}")
        return result


# ---------------------------------------------------------------------------------------------------------

def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--initrd", required=True)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--vmrun", required=True)
    parser.add_argument("--vmsend", required=True)
    parser.add_argument("--vmrecv", required=True)
    parser.add_argument("--vmctl", required=True)
    parser.add_argument("--qemu", required=True)
    parser.add_argument("--qemu-data-dir", action="append", default=[])
    parser.add_argument("--qemu-module-dir")
    parser.add_argument("--boot-timeout", type=float, default=900)
    parser.add_argument("--boot-stall", type=float, default=300,
                        help="a boot whose console stays silent this long is given up and tried again")
    parser.add_argument("--boot-attempts", type=int, default=2)
    parser.add_argument("--beat-timeout", type=float, default=120)
    parser.add_argument("--migrate-timeout", type=float, default=300)
    ARGS = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    items = [s for s in ARGS.settings.split(",") if s]
    unknown = [s for s in items if s not in SETTINGS]
    if unknown:
        raise BenchError(f"unknown settings {unknown}")
    os.makedirs(os.path.join(ARGS.workdir, "disks"), exist_ok=True)
    print("#" + "\t".join(COLUMNS), flush=True)
    sides = {"ours": Ours(), "qemu10": Qemu()}
    rng = random.Random(ARGS.seed)
    plan = []
    for run in range(1, ARGS.runs + 1):
        chosen = list(items)
        rng.shuffle(chosen)
        plan += [(run, item) for item in chosen]
    say(f"{len(plan)} measures in the order of seed {ARGS.seed}")
    running = {}
    try:
        for seq, (run, item) in enumerate(plan, 1):
            tool = "ours" if "ours" in item else "qemu10"
            side = sides[tool]
            if not running.get(tool):
                running[tool] = boot(tool, side, run, seq)
                if not running[tool]:
                    raise BenchError(f"{tool}: the guest did not boot in {ARGS.boot_attempts} attempts "
                                     f"(see {ARGS.log})")
            result = side.restore() if item.startswith("restore-") else side.migrate(item)
            print(result.line(run, seq), flush=True)
            v = result.values
            failed = "" if result.ok else ", FAILED: " + ";".join(result.details)
            say(f"{seq}/{len(plan)} run {run} {item}: {fmt(v.get('total_s'))} s, downtime {fmt(v.get('downtime_ms'))} "
                f"ms, guest gap {fmt(v.get('guest_gap_ms'))} ms{failed}")
            if not result.ok:  # whatever state the guest is in, the next measure starts from a new boot
                side.drop()
                running[tool] = False
    finally:
        for side in sides.values():
            side.drop()
    return 0


def boot(tool, side, run, seq):
    """Boots the tool's guest, trying again when a boot stalls (seen on this host under load); every attempt is
    a result line."""
    for attempt in range(1, ARGS.boot_attempts + 1):
        say(f"booting the guest under {tool}, attempt {attempt}")
        result = side.boot()
        result.detail(attempt=attempt)
        print(result.line(run, seq), flush=True)
        if result.ok:
            say(f"{tool}: first heartbeat {result.values['to_beat_s']:.1f} s after start")
            return True
        say(f"{tool}: boot failed: {';'.join(result.details)}")
    return False


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"linux-bench: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
