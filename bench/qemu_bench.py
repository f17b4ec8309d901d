#!/usr/bin/env python3
"""Times QEMU's own migration of a paused guest whose RAM is the benchmark image.

Measurements (each starts fresh QEMU processes; only the migration itself is timed, from the
QMP command to the MIGRATION event 'completed' of the side that finishes last):
  save-null  source `migrate exec:cat > /dev/null`
  save-file  source `migrate exec:cat > WORKDIR/TOOL.stream` (kept for restore)
  restore    destination `migrate-incoming exec:cat WORKDIR/TOOL.stream`
  e2e        source `migrate exec:cat > FIFO`, destination `migrate-incoming exec:cat FIFO`
  e2e-multifd         capability multifd, multifd-channels 2, zero-page-detection multifd (the
                      channel threads skip zero pages), both sides: destination
                      `migrate-incoming unix:WORKDIR/TOOL.sock`, source `migrate` to it (QEMU 4.0+)
  save-mapped-ram     capabilities multifd and mapped-ram, multifd-channels 2: source
                      `migrate file:WORKDIR/TOOL.mapped-ram` (QEMU 9.0+; pages at fixed offsets)
  restore-mapped-ram  the same capabilities, destination `migrate-incoming file:WORKDIR/TOOL.mapped-ram`
  e2e-multifd-hugepages, restore-mapped-ram-hugepages  the same, the destination's RAM on 2 MiB huge pages
                      from the host's pool (memory-backend-memfd, hugetlb=on), as `vmrecv --hugepages`
One tab-separated line per run on stdout:
  tool measure run seconds payload_bytes wire_bytes src_peak_rss_kib dst_peak_rss_kib cpu_seconds
(cpu_seconds: both QEMU processes' user and system time over the timed span; children they have not reaped
yet, such as an exec: URI's cat, are not in it)
With --verify, restore and e2e then compare regions of the destination's guest memory
(QMP pmemsave) with the image, and the source's too, so a fast but wrong figure cannot pass.
Standard library only; QEMU processes die with this one (PR_SET_PDEATHSIG) and on any error.
"""
import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

REGION = 2 << 20
MEASURES = ("save-null", "save-file", "restore", "e2e", "e2e-multifd", "save-mapped-ram", "restore-mapped-ram",
            "e2e-multifd-hugepages", "restore-mapped-ram-hugepages")
HUGE_PAGES = "-hugepages"  # a measure's suffix: its destination's RAM on huge pages
MULTIFD_CHANNELS = 2


class BenchError(Exception):
    """A failure worth one line on stderr and exit status 1."""



def remove_if_there(path):
    """Removes path unless it is gone already (whoever else made it may remove it at any time)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

def die_with_parent():
    """Runs in the QEMU child: SIGKILL it when this script dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QMP:
    """A minimal QMP client: commands in order, events kept until asked for."""

    def __init__(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise BenchError(f"QMP socket {path} did not come up in {timeout} s")
                time.sleep(0.02)
        self.reader = self.sock.makefile("rb")
        self.events = []
        self.read()  # greeting
        self.execute("qmp_capabilities")

    def read(self):
        line = self.reader.readline()
        if not line:
            raise BenchError("QEMU closed its QMP socket (did it crash? see its log)")
        return json.loads(line)

    def execute(self, command, **arguments):
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self.read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise BenchError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def wait_migration(self, timeout):
        """Blocks until a MIGRATION event says completed (returns its arrival time) or failed."""
        self.sock.settimeout(timeout)
        try:
            while True:
                event = self.events.pop(0) if self.events else self.read()
                if event.get("event") != "MIGRATION":
                    continue
                status = event["data"]["status"]
                if status == "completed":
                    return time.monotonic()
                if status in ("failed", "cancelled"):
                    raise BenchError(f"QEMU migration {status}: {self.execute('query-migrate')}")
        except socket.timeout:
            raise BenchError(f"QEMU migration did not complete within {timeout} s")
        finally:
            self.sock.settimeout(None)

    def close(self):
        self.reader.close()
        self.sock.close()


class Setup:
    """Which QEMU runs and how: binary, firmware folders (-L), module folder, destination RAM."""

    def __init__(self, args):
        self.binary = args.qemu
        self.data_dirs = args.data_dir or []
        self.module_dir = args.module_dir
        self.dst_memory = args.dst_memory  # "ram" (anonymous) or a folder for a fresh file (share=on)


class Qemu:
    """One paused QEMU process: the source (RAM = the image, private mapping) or a destination."""

    def __init__(self, name, workdir, size, setup, image=None, capabilities=(), parameters=None, huge_pages=False):
        self.socket_path = os.path.join(workdir, f"{name}.qmp")
        self.log_path = os.path.join(workdir, f"{name}.log")
        if image:  # share=off: MAP_PRIVATE, so QEMU can never write the image file
            backend = f"memory-backend-file,id=pc.ram,size={size},mem-path={image},share=off,prealloc=off"
        elif huge_pages:  # the whole size is reserved from the pool at start, as vmrecv --hugepages does
            backend = f"memory-backend-memfd,id=pc.ram,size={size},hugetlb=on,hugetlbsize=2M,share=on"
        elif setup.dst_memory == "ram":
            backend = f"memory-backend-ram,id=pc.ram,size={size}"
        else:  # a folder: QEMU creates a fresh file there and unlinks it at once, as vmrecv's memfd
            backend = f"memory-backend-file,id=pc.ram,size={size},mem-path={setup.dst_memory},share=on,prealloc=off"
        command = [setup.binary]
        for folder in setup.data_dirs:
            command += ["-L", folder]
        command += ["-enable-kvm", "-S", "-nographic", "-nodefaults", "-m", f"{size // (1 << 20)}M",
                    "-object", backend, "-machine", "pc,memory-backend=pc.ram",
                    "-qmp", f"unix:{self.socket_path},server=on,wait=off"]
        if not image:
            command += ["-incoming", "defer"]
        environment = dict(os.environ)
        if setup.module_dir:  # the system's modules belong to the system's QEMU
            environment["QEMU_MODULE_DIR"] = setup.module_dir
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            env=environment, preexec_fn=die_with_parent)
        self.peak_rss_kib = None
        try:
            self.qmp = QMP(self.socket_path)
        except BenchError as error:
            self.stop()
            raise BenchError(f"{error}; QEMU said: {self.log_tail()}")
        self.qmp.execute("migrate-set-capabilities", capabilities=[{"capability": c, "state": True}
                                                                    for c in ("events", *capabilities)])
        parameters = dict(parameters or {})
        if image:
            # 100 GB/s: far above any rate here, so bandwidth limiting never applies.
            parameters["max-bandwidth"] = 100 * 10**9
        if parameters:
            self.qmp.execute("migrate-set-parameters", **parameters)

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as log:
                return log.read()[-400:].decode(errors="replace").strip() or "(nothing)"
        except OSError:
            return "(no log)"

    def save_regions(self, regions, workdir, tag):
        """Guest-physical copies of the given 2 MiB regions, as bytes."""
        saved = []
        for region in regions:
            path = os.path.join(workdir, f"{tag}-{region}.mem")
            self.qmp.execute("pmemsave", val=region * REGION, size=REGION, filename=path)
            with open(path, "rb") as f:
                saved.append(f.read())
            os.unlink(path)
        return saved

    def stop(self):
        """Quits QEMU (politely, then SIGKILL) and records its peak RSS."""
        if self.process.returncode is None:
            try:
                self.qmp.execute("quit")
            except (BenchError, OSError, AttributeError):
                pass
            deadline = time.monotonic() + 10
            while True:
                pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
                if pid:
                    self.process.returncode = os.waitstatus_to_exitcode(status)
                    self.peak_rss_kib = usage.ru_maxrss
                    break
                if time.monotonic() > deadline:
                    self.process.kill()
                time.sleep(0.02)
        if hasattr(self, "qmp"):
            self.qmp.close()
        remove_if_there(self.socket_path)


def sample_regions(size):
    """A few regions of each kind (not region 0: the VGA/BIOS window sits in its first MiB) plus the last."""
    count = size // REGION
    return sorted({r for r in (1, 2, 3, 4, 5, 6, 7, count // 2, count // 2 + 2, count // 2 + 3, count - 1)
                   if 0 < r < count})


def image_regions(image, regions):
    with open(image, "rb") as f:
        return [os.pread(f.fileno(), REGION, r * REGION) for r in regions]


def verify(image, size, workdir, *machines):
    regions = sample_regions(size)
    expected = image_regions(image, regions)
    for machine, tag in machines:
        for region, want, got in zip(regions, expected, machine.save_regions(regions, workdir, tag)):
            if want != got:
                raise BenchError(f"verify: guest memory of the {tag} at region {region} "
                                 f"(GPA {region * REGION:#x}) differs from the image")
    print(f"verify: {len(regions)} regions of 2 MiB match the image on " +
          " and ".join(tag for _, tag in machines), file=sys.stderr)


def migrated_bytes(qmp):
    info = qmp.execute("query-migrate")
    return info.get("ram", {}).get("transferred", 0)


def run_measure(measure, image, size, workdir, timeout, check, setup, tool):
    """Runs one measurement; returns (seconds, wire_bytes, src_rss_kib, dst_rss_kib, cpu_seconds)."""
    stream = os.path.join(workdir, f"{tool}.stream")
    mapped = os.path.join(workdir, f"{tool}.mapped-ram")
    multifd = {"multifd-channels": MULTIFD_CHANNELS}
    huge = measure.endswith(HUGE_PAGES)
    measure = measure.removesuffix(HUGE_PAGES)
    source = destination = None
    try:
        if measure in ("save-null", "save-file"):
            source = Qemu("src", workdir, size, setup, image)
            target = "cat > /dev/null" if measure == "save-null" else f"cat > {stream}"
            cpu_start = cpu_seconds(source, destination)
            start = time.monotonic()
            source.qmp.execute("migrate", uri=f"exec:{target}")
            end = source.qmp.wait_migration(timeout)
            cpu = cpu_seconds(source, destination) - cpu_start
            wire = os.path.getsize(stream) if measure == "save-file" else migrated_bytes(source.qmp)
        elif measure == "save-mapped-ram":
            if os.path.exists(mapped):
                os.unlink(mapped)  # a new file each time, as save-file's
            source = Qemu("src", workdir, size, setup, image, ("multifd", "mapped-ram"), multifd)
            cpu_start = cpu_seconds(source, destination)
            start = time.monotonic()
            source.qmp.execute("migrate", uri=f"file:{mapped}")
            end = source.qmp.wait_migration(timeout)
            cpu = cpu_seconds(source, destination) - cpu_start
            wire = allocated_bytes(mapped)
        elif measure in ("restore", "restore-mapped-ram"):
            saved = stream if measure == "restore" else mapped
            if not os.path.exists(saved):
                before = "save-file" if measure == "restore" else "save-mapped-ram"
                raise BenchError(f"{measure} needs a saved stream: run {before} first ({saved} is missing)")
            if measure == "restore":
                destination = Qemu("dst", workdir, size, setup)
                uri = f"exec:cat {stream}"
            else:
                destination = Qemu("dst", workdir, size, setup, None, ("multifd", "mapped-ram"), multifd, huge)
                uri = f"file:{mapped}"
            cpu_start = cpu_seconds(source, destination)
            start = time.monotonic()
            destination.qmp.execute("migrate-incoming", uri=uri)
            end = destination.qmp.wait_migration(timeout)
            cpu = cpu_seconds(source, destination) - cpu_start
            wire = allocated_bytes(saved)
            if check:
                verify(image, size, workdir, (destination, "destination"))
        elif measure == "e2e":
            fifo = os.path.join(workdir, f"{tool}.fifo")
            if os.path.exists(fifo):
                os.unlink(fifo)
            os.mkfifo(fifo)
            try:
                destination = Qemu("dst", workdir, size, setup)
                source = Qemu("src", workdir, size, setup, image)
                destination.qmp.execute("migrate-incoming", uri=f"exec:cat {fifo}")
                cpu_start = cpu_seconds(source, destination)
                start = time.monotonic()
                source.qmp.execute("migrate", uri=f"exec:cat > {fifo}")
                source.qmp.wait_migration(timeout)
                end = destination.qmp.wait_migration(timeout)
                cpu = cpu_seconds(source, destination) - cpu_start
                wire = migrated_bytes(source.qmp)
                if check:
                    verify(image, size, workdir, (source, "source"), (destination, "destination"))
            finally:
                os.unlink(fifo)
        elif measure == "e2e-multifd":
            sock = os.path.join(workdir, f"{tool}.sock")
            remove_if_there(sock)
            try:
                destination = Qemu("dst", workdir, size, setup, None, ("multifd",), multifd, huge)
                # zero-page-detection multifd (QEMU 9.0+): the channel threads find the zero pages.
                source = Qemu("src", workdir, size, setup, image, ("multifd",),
                              {**multifd, "zero-page-detection": "multifd"})
                destination.qmp.execute("migrate-incoming", uri=f"unix:{sock}")
                cpu_start = cpu_seconds(source, destination)
                start = time.monotonic()
                source.qmp.execute("migrate", uri=f"unix:{sock}")
                source.qmp.wait_migration(timeout)
                end = destination.qmp.wait_migration(timeout)
                cpu = cpu_seconds(source, destination) - cpu_start
                wire = migrated_bytes(source.qmp)
                if check:
                    verify(image, size, workdir, (source, "source"), (destination, "destination"))
            finally:
                remove_if_there(sock)  # QEMU removes it itself when the incoming side closes: a race
        else:
            raise BenchError(f"unknown measurement {measure!r} (one of {', '.join(MEASURES)})")
        if check and measure.startswith("save"):
            verify(image, size, workdir, (source, "source"))
    finally:
        for machine in (source, destination):
            if machine:
                machine.stop()
    return (end - start, wire,
            source.peak_rss_kib if source else None,
            destination.peak_rss_kib if destination else None, cpu)


def cpu_seconds(*machines):
    """User and system seconds the machines' QEMU processes (threads and reaped children) have used so far."""
    total = 0
    for machine in machines:
        if machine:
            with open(f"/proc/{machine.process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def allocated_bytes(path):
    """What a file holds (mapped-ram's is sparse: zero pages are holes); a stream's size otherwise."""
    info = os.stat(path)
    return min(info.st_size, info.st_blocks * 512)


def main():
    parser = argparse.ArgumentParser(description="Time QEMU migration of the benchmark image.")
    parser.add_argument("image")
    parser.add_argument("measures", nargs="+", choices=MEASURES, metavar="MEASURE",
                        help=" | ".join(MEASURES))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--first-run", type=int, default=1, help="number of the first run in the output")
    parser.add_argument("--workdir", required=True, help="folder for sockets, logs, stream and FIFO")
    parser.add_argument("--verify", action="store_true", help="compare guest memory with the image")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--qemu", default=os.environ.get("QEMU", "qemu-system-x86_64"),
                        help="the QEMU binary (default $QEMU, else qemu-system-x86_64 from PATH)")
    parser.add_argument("--tool", default="qemu72", help="the tool name in the result lines")
    parser.add_argument("--data-dir", action="append", metavar="DIR",
                        help="a firmware folder, passed as -L (repeatable, searched in order)")
    parser.add_argument("--module-dir", help="QEMU_MODULE_DIR for this QEMU")
    parser.add_argument("--dst-memory", default="ram", metavar="ram|FOLDER",
                        help="destination RAM: anonymous (ram, default) or a fresh file in FOLDER, share=on")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    size = os.path.getsize(args.image)
    if size <= 0 or size % REGION:
        raise BenchError(f"{args.image}: size {size} is not a positive multiple of 2 MiB")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    setup = Setup(args)
    for run in range(args.first_run, args.first_run + args.runs):
        for measure in args.measures:
            seconds, wire, src_rss, dst_rss, cpu = run_measure(measure, args.image, size, args.workdir,
                                                               args.timeout, args.verify and run == args.first_run,
                                                               setup, args.tool)
            print("\t".join(str(v) for v in (args.tool, measure, run, f"{seconds:.4f}", size, wire,
                                              src_rss or "-", dst_rss or "-", f"{cpu:.2f}")), flush=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        print(f"qemu-migrate: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        print(f"qemu-migrate: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
