import CLinux
import Glibc
import SystemPackage
import SystemSupport
import VMControl
import VMM

/// Starts the VM process in the background and waits until its socket listens.
///
/// The VM process is this executable again (posix_spawn, never fork() of a threaded process),
/// in a session of its own, with stderr in `<run dir>/NAME.log` and a readiness pipe on fd 3.
struct BackgroundLauncher {
    let plan: MachinePlan
    let command: VMRun

    /// How long the VM process may take to create the machine (a large --memory-image takes a while).
    static let readyTimeoutSeconds: Int32 = 300

    func launch() throws -> Int32 {
        try plan.runDirectory.create()
        signal(SIGPIPE, SIG_IGN)
        let executable = try ownExecutable()
        let logPath = plan.runDirectory.processLogPath(for: plan.name)

        var ready: [Int32] = [0, 0]
        var input: [Int32] = [-1, -1]
        guard pipe(&ready) == 0, !command.incoming || pipe(&input) == 0 else { throw systemError("pipe") }
        for fd in ready + input where fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if command.incoming {
            posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        // Until the VM process holds the name, it writes nowhere: NAME.log may belong to a machine that runs now.
        // It opens a fresh log of its own once the name is its (see `VMProcess`); errors before that come back here.
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        posix_spawn_file_actions_adddup2(&actions, ready[1], 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A clean signal state: a caller that blocks or ignores SIGTERM must not pass that on.
        var signals = sigset_t()
        sigemptyset(&signals)
        posix_spawnattr_setsigmask(&attributes, &signals)
        for number in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&signals, number) }
        posix_spawnattr_setsigdefault(&attributes, &signals)
        posix_spawnattr_setflags(&attributes, CLINUX_POSIX_SPAWN_SETSID | Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let arguments = [executable] + childArguments()
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, &argv, environ)
        close(ready[1])
        if input[0] >= 0 { close(input[0]) }
        guard spawned == 0 else {
            close(ready[0])
            if input[1] >= 0 { close(input[1]) }
            throw ControlError("cannot start the VM process: \(String(cString: strerror(spawned)))")
        }
        if command.incoming {
            // The child reads all of it before it answers; an early exit shows in its answer, not here.
            try? FileDescriptor(rawValue: input[1]).writeFully(plan.incomingJSON, what: "the VM process's standard input")
            close(input[1])
        }
        let answer = readReadiness(ready[0])
        close(ready[0])
        if answer == "ready" {
            let state = command.incoming ? "waiting for its state" : (command.paused ? "created, paused" : "running")
            print("vmrun: '\(plan.name)' is \(state) (pid \(pid))")
            print("  status:  \(command.reachHint(runDirectory: plan.runDirectory))")
            print("  console: \(plan.runDirectory.consoleLogPath(for: plan.name))")
            for (index, disk) in plan.options.disks.enumerated() {
                print(
                    "  disk:    \(disk.name) = \(disk.path ?? "")\(disk.readOnly ? " (read-only)" : ""), virtio-mmio at \(DiskPlacement.kernelCommandLine(diskCount: index + 1).split(separator: " ").last ?? "")"
                )
            }
            return 0
        }
        if answer == nil { kill(pid, SIGTERM) }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        if let answer, !answer.isEmpty { throw ControlError(answer) }
        throw ControlError("the VM process ended before it was ready; see \(logPath) if it exists")
    }

    /// The options the VM process needs, spelled out so it never depends on this one's cwd, and so `ps` shows the
    /// machine it really runs: an incoming machine's vCPUs and memory are its configuration's.
    private func childArguments() -> [String] {
        var arguments = [plan.name, "--cpus", String(plan.cpus), "--memory", Self.exactSize(plan.memorySize)]
        if command.incoming {
            arguments.append("--incoming")
        } else {
            arguments += [
                "--guest-working-set", String(plan.options.guestWorkingSet),
                "--guest-dirty-rate", String(plan.options.guestDirtyRate),
            ]
        }
        arguments += ["--run-dir", plan.runDirectory.path, "--ready-fd", "3"]
        if let image = plan.options.memoryImage { arguments += ["--memory-image", image] }
        if let file = plan.options.memoryFile { arguments += ["--memory-file", file.path] }
        for disk in plan.options.disks { arguments += ["--disk", disk.path! + (disk.readOnly ? ",readonly" : "")] }
        if plan.options.guestDiskRate > 0 { arguments += ["--guest-disk-rate", String(plan.options.guestDiskRate)] }
        if let linux = plan.options.linux {
            arguments += ["--kernel", linux.kernel]
            if let initrd = linux.initrd { arguments += ["--initrd", initrd] }
            if let line = linux.commandLine { arguments += ["--cmdline", line] }
        }
        if command.paused { arguments.append("--paused") }
        if plan.options.hugePages { arguments.append("--hugepages") }
        return arguments
    }

    /// `2G`, `96M`, `4100K` or bytes: the largest unit that divides `bytes`, as `--memory` reads it back.
    static func exactSize(_ bytes: UInt64) -> String {
        for (unit, size) in [("T", UInt64(1) << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)]
        where bytes >= size && bytes % size == 0 {
            return "\(bytes / size)\(unit)"
        }
        return String(bytes)
    }

    /// The VM process's one line: "ready", an error, or nil if it timed out.
    private func readReadiness(_ fd: Int32) -> String? {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + .seconds(Int(Self.readyTimeoutSeconds))
        while bytes.count < 65536 {
            var poller = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            if pollDescriptors(&poller, timeout: ContinuousClock.now.duration(to: deadline)) == 0 { return nil }
            let count = retryingInterrupts { chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
            if count <= 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
    }

    private func ownExecutable() throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { throw systemError("readlink /proc/self/exe") }
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func systemError(_ what: String) -> ControlError {
        ControlError("\(what): \(String(cString: strerror(errno)))")
    }
}
