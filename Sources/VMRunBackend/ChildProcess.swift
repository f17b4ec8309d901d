import MachineDescription
import Migration
import SystemPackage
import SystemSupport

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Runs a helper program to completion: `input` on its stdin, stdout and stderr captured (64 KiB of each at most).
enum ChildProcess {
    struct Result {
        var status: Int32
        var standardOutput: String
        var standardError: String
        /// The child's last non-empty stderr line, the one that says why it failed, without the child's own
        /// `vmrun: ` in front (the caller puts its name there).
        var lastErrorLine: String? {
            guard let line = standardError.split(separator: "\n").last.map(String.init) else { return nil }
            return line.hasPrefix("vmrun: ") ? String(line.dropFirst(7)) : line
        }
    }

    static func run(_ path: String, arguments: [String], input: [UInt8]) throws -> Result {
        let child = try spawn(path, arguments: arguments)
        // The child reads all of stdin before it writes much, so writing first cannot deadlock; a child that exits
        // early says why on stderr.
        try? FileDescriptor(rawValue: child.input).writeFully(input, what: "\(path)'s standard input")
        close(child.input)
        var captured: [[UInt8]] = [[], []]
        var open = [child.output, child.errors]
        var chunk = [UInt8](repeating: 0, count: 4096)
        while open.contains(where: { $0 >= 0 }) {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            guard pollDescriptors(&fds, timeout: nil) > 0 else { continue }
            for index in 0..<2 where open[index] >= 0 && fds[index].revents != 0 {
                let count = retryingInterrupts { read(open[index], &chunk, chunk.count) }
                if count > 0 {
                    if captured[index].count < 64 << 10 { captured[index] += chunk[0..<count] }
                } else {
                    close(open[index])
                    open[index] = -1
                }
            }
        }
        return Result(
            status: wait(child.pid), standardOutput: String(decoding: captured[0], as: UTF8.self),
            standardError: String(decoding: captured[1], as: UTF8.self))
    }

    /// A started child and our ends of its stdin, stdout and stderr pipes.
    struct Spawned {
        var pid: pid_t
        var input: Int32
        var output: Int32
        var errors: Int32
    }

    static func spawn(_ path: String, arguments: [String]) throws -> Spawned {
        var pipes: [[Int32]] = [[0, 0], [0, 0], [0, 0]]
        for index in pipes.indices {
            guard pipe(&pipes[index]) == 0 else {
                for opened in pipes[..<index] { for fd in opened { close(fd) } }
                throw MigrationError("pipe", errno: errno)
            }
            for descriptor in pipes[index] { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipes[0][0], 0)
        posix_spawn_file_actions_adddup2(&actions, pipes[1][1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipes[2][1], 2)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned =
            path.contains("/")
            ? posix_spawn(&pid, path, &actions, nil, argv, environ)
            : posix_spawnp(&pid, path, &actions, nil, argv, environ)
        for fd in [pipes[0][0], pipes[1][1], pipes[2][1]] { close(fd) }
        guard spawned == 0 else {
            for fd in [pipes[0][1], pipes[1][0], pipes[2][0]] { close(fd) }
            throw MigrationError("cannot start \(path)", errno: spawned)
        }
        return Spawned(pid: pid, input: pipes[0][1], output: pipes[1][0], errors: pipes[2][0])
    }

    /// Reaps `pid`; its exit status, or 128 + the signal that ended it.
    static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        _ = retryingInterrupts { waitpid(pid, &status, 0) }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

/// The machine configuration as `vmrun --incoming` reads it on stdin.
public enum MachineConfigJSON {
    public static func encode(_ config: MachineConfig) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(config))
    }
}

/// Waits until a process that is not our child (a daemonised vmrun) is gone, SIGKILLing it after `timeout`: a
/// receive that failed returns only once its machine's process has ended.
func waitUntilGone(_ pid: Int32, timeout: Duration = .seconds(10)) {
    guard pid > 0 else { return }
    let deadline = ContinuousClock.now + timeout
    while processIsAlive(pid) {
        if ContinuousClock.now >= deadline {
            kill(pid, SIGKILL)
            let last = ContinuousClock.now + .seconds(5)
            while processIsAlive(pid) && ContinuousClock.now < last { usleep(5000) }
            return
        }
        usleep(2000)
    }
}
