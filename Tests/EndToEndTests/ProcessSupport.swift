import Glibc
import MachineDescription
import Testing
import VMControl

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// What a finished process said.
struct ProcessResult {
    var status: Int32
    var standardOutput: String
    var standardError: String
}

/// The built executables, found next to the test bundle (or in .build/debug).
enum Products {
    static let directory: String = {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let own = length > 0 ? String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        let candidates = [String(own[..<(own.lastIndex(of: "/") ?? own.startIndex)]), ".build/debug"]
        return candidates.first { access($0 + "/vmrun", X_OK) == 0 } ?? candidates[0]
    }()

    static func path(_ name: String) -> String { directory + "/" + name }
}

/// Runs an executable to completion with optional input; kills it after `timeout`.
func runProcess(
    _ executable: String, _ arguments: [String], input: [UInt8] = [], timeout: Duration = .seconds(60)
) throws -> ProcessResult {
    var output: [Int32] = [0, 0]
    var errors: [Int32] = [0, 0]
    var stdinPipe: [Int32] = [0, 0]
    guard pipe(&output) == 0, pipe(&errors) == 0, pipe(&stdinPipe) == 0 else { throw ControlError("pipe failed") }
    for fd in output + errors + stdinPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
    posix_spawn_file_actions_adddup2(&actions, output[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errors[1], 2)
    var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    // Its own process group, so a timeout kills a whole pipeline; SIGPIPE and a signal mask as a shell user has them
    // (the test runner's threads block signals, which a shell's `wait` would then never see).
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaults = sigset_t()
    sigemptyset(&defaults)
    sigaddset(&defaults, SIGPIPE)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    var unblocked = sigset_t()
    sigemptyset(&unblocked)
    posix_spawnattr_setsigmask(&attributes, &unblocked)
    posix_spawnattr_setpgroup(&attributes, 0)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, &attributes, &argv, environ)
    for fd in [output[1], errors[1], stdinPipe[0]] { close(fd) }
    guard spawned == 0 else {
        for fd in [output[0], errors[0], stdinPipe[1]] { close(fd) }
        throw ControlError("cannot run \(executable): \(String(cString: strerror(spawned)))")
    }
    signal(SIGPIPE, SIG_IGN)
    _ = input.withUnsafeBytes { write(stdinPipe[1], $0.baseAddress, $0.count) }
    close(stdinPipe[1])

    var collected: [[UInt8]] = [[], []]
    var open = [output[0], errors[0]]
    let deadline = ContinuousClock.now + timeout
    var chunk = [UInt8](repeating: 0, count: 65536)
    while open.contains(where: { $0 >= 0 }) && ContinuousClock.now < deadline {
        var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard poll(&fds, 2, 100) > 0 else { continue }
        for index in 0..<2 where fds[index].revents != 0 && open[index] >= 0 {
            let count = chunk.withUnsafeMutableBytes { read(open[index], $0.baseAddress, $0.count) }
            if count > 0 {
                collected[index] += chunk[..<count]
            } else {
                close(open[index])
                open[index] = -1
            }
        }
    }
    for fd in open where fd >= 0 { close(fd) }
    if ContinuousClock.now >= deadline { kill(-pid, SIGKILL) }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return ProcessResult(
        status: exitStatus, standardOutput: String(decoding: collected[0], as: UTF8.self),
        standardError: String(decoding: collected[1], as: UTF8.self))
}

/// A temporary run directory and the VMs started in it, all removed by `cleanUp`, even after a failure.
final class VMFixture {
    let directory: String
    private var pids: [Int32] = []

    init() {
        var template = Array("/tmp/vmrun-e2e-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    func vmrun(_ arguments: [String], input: [UInt8] = []) throws -> ProcessResult {
        let result = try runProcess(Products.path("vmrun"), ["--run-dir", directory] + arguments, input: input)
        if let pid = Self.startedPid(result.standardOutput) { pids.append(pid) }
        return result
    }

    func vmctl(_ arguments: [String]) throws -> ProcessResult {
        try runProcess(Products.path("vmctl"), ["--run-dir", directory] + arguments)
    }

    func status(_ name: String) throws -> MachineStatus {
        let result = try vmctl(["status", "--json", name])
        guard result.status == 0 else { throw ControlError("vmctl status failed: \(result.standardError)") }
        return try JSONDecoder().decode(MachineStatus.self, from: Data(result.standardOutput.utf8))
    }

    func exists(_ file: String) -> Bool { access(directory + "/" + file, F_OK) == 0 }

    /// Stops every VM this fixture started (SIGTERM, then SIGKILL) and removes the directory.
    func cleanUp() {
        pids += processesInRunDirectory()
        for pid in pids where isAlive(pid) { kill(pid, SIGTERM) }
        let deadline = ContinuousClock.now + .seconds(10)
        while pids.contains(where: isAlive) && ContinuousClock.now < deadline { usleep(20_000) }
        for pid in pids where isAlive(pid) { kill(pid, SIGKILL) }
        if let handle = opendir(directory) {
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(directory + "/" + name) }
            }
            closedir(handle)
        }
        rmdir(directory)
    }

    /// True while the process runs; a zombie counts as gone.
    func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let fd = open("/proc/\(pid)/stat", O_RDONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = read(fd, &buffer, buffer.count)
        let text = String(decoding: buffer[..<max(count, 0)], as: UTF8.self)
        guard let paren = text.lastIndex(of: ")") else { return true }
        return !text[paren...].hasPrefix(") Z")
    }

    /// The pid in vmrun's "'NAME' is running (pid N)" line.
    static func startedPid(_ output: String) -> Int32? {
        guard let marker = output.split(separator: "(pid ", maxSplits: 1).dropFirst().first else { return nil }
        return Int32(marker.prefix { $0.isNumber })
    }

    /// Why the VM tests cannot run on this machine, or nil when vmrun can start a VM.
    static let machineUnavailable: String? = {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { return "/dev/kvm is not available on this host" }
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        guard let result = try? fixture.vmrun(["--memory", "16M", "probe"]) else { return "vmrun could not be started" }
        if result.status == 0 {
            _ = try? fixture.vmctl(["destroy", "probe"])
            return nil
        }
        if result.standardError.contains("MachineNotBuilt") {
            return
                "KVMMachine is not built yet (the KVM branch is not merged); vmrun said: \(result.standardError.split(separator: "\n").first ?? "")"
        }
        return nil
    }()

    /// Skips the calling test, with the reason, when no VM can run here.
    static func requireMachine() throws {
        if let reason = machineUnavailable { try Test.cancel(Comment(rawValue: reason)) }
    }
}

/// Runs a command line with /bin/sh -c: real pipes and redirections, as a user types them.
func runShell(_ command: String, timeout: Duration = .seconds(120)) throws -> ProcessResult {
    try runProcess("/bin/sh", ["-c", command], timeout: timeout)
}

/// `word` quoted for /bin/sh.
func shellQuoted(_ word: String) -> String {
    "'" + word.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
}

/// Polls `condition` until it holds or `timeout` passes; generous, because the machine is shared and noisy.
func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () throws -> Bool) throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return }
        usleep(50_000)
    }
    throw ControlError("timed out after \(timeout) waiting until \(what)")
}

extension VMFixture {
    /// A shell word list running one of the built tools with this run directory.
    func command(_ tool: String, _ arguments: [String] = []) -> String {
        ([Products.path(tool), "--run-dir", directory] + arguments).map(shellQuoted).joined(separator: " ")
    }

    /// The path of a file in the run directory (removed by `cleanUp`).
    func file(_ name: String) -> String { directory + "/" + name }

    /// Processes whose command line names this run directory: vmruns, whoever started them, or pipelines.
    func processesInRunDirectory() -> [Int32] {
        guard let handle = opendir("/proc") else { return [] }
        defer { closedir(handle) }
        var found: [Int32] = []
        let needle = Array(directory.utf8)
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = Int32(name), pid != getpid(), isAlive(pid) else { continue }
            let fd = open("/proc/\(pid)/cmdline", O_RDONLY)
            guard fd >= 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 8192)
            let count = read(fd, &buffer, buffer.count)
            close(fd)
            let line = buffer[..<max(count, 0)]
            if line.count >= needle.count
                && (0...(line.count - needle.count)).contains(where: { line[$0..<$0 + needle.count].elementsEqual(needle) })
            {
                found.append(pid)
            }
        }
        return found
    }

    /// The sockets in the run directory: one per VM that is still there.
    func sockets() -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".sock") { names.append(name) }
        }
        return names.sorted()
    }

    /// Destroys every VM `vmctl list` shows, and checks that no VM process or socket is left.
    func destroyAllAndExpectNothingLeft(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let list = try vmctl(["list"]).standardOutput.split(separator: "\n").dropFirst()
        for line in list {
            if let name = line.split(separator: " ").first { _ = try vmctl(["destroy", String(name)]) }
        }
        try? waitUntil("every VM process is gone", timeout: .seconds(15)) { processesInRunDirectory().isEmpty }
        #expect(processesInRunDirectory().isEmpty, "processes left: \(processesInRunDirectory())", sourceLocation: sourceLocation)
        #expect(sockets().isEmpty, "sockets left: \(sockets())", sourceLocation: sourceLocation)
    }

    /// Waits until every vCPU of `name` has passed `passes` more checks than in `before` (or since it started).
    /// Checks are held while dirty logging is on, so new passes are what prove the memory they read is right.
    @discardableResult
    func waitForNewChecks(
        _ name: String, after before: MachineStatus? = nil, passes: UInt64 = 2,
        timeout: Duration = .seconds(60)
    ) throws -> MachineStatus {
        let baseline = before?.vcpus.map(\.checksPassed)
        var last = try status(name)
        try waitUntil("\(passes) new checks pass on every vCPU of '\(name)'", timeout: timeout) {
            last = try status(name)
            return last.vcpus.enumerated().allSatisfy { index, vcpu in
                vcpu.checksPassed + vcpu.checksFailed >= (baseline?[index] ?? 0) + passes
            }
        }
        return last
    }

    /// What the VM wrote to its console so far.
    func console(_ name: String) throws -> String {
        try vmctl(["console", name]).standardOutput
    }
}
