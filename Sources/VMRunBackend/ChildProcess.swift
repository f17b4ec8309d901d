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

/// Runs a helper program to completion: `input` on its stdin, stdout discarded, stderr captured.
enum ChildProcess {
    struct Result {
        var status: Int32
        var standardError: String
        /// The child's last non-empty stderr line, the one that says why it failed.
        var lastErrorLine: String? {
            standardError.split(separator: "\n").last.map(String.init)
        }
    }

    static func run(_ path: String, arguments: [String], input: [UInt8]) throws -> Result {
        var stdinPipe: [Int32] = [0, 0]
        var stderrPipe: [Int32] = [0, 0]
        guard pipe(&stdinPipe) == 0, pipe(&stderrPipe) == 0 else { throw MigrationError("pipe", errno: errno) }
        for descriptor in stdinPipe + stderrPipe { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned =
            path.contains("/")
            ? posix_spawn(&pid, path, &actions, nil, argv, environ)
            : posix_spawnp(&pid, path, &actions, nil, argv, environ)
        close(stdinPipe[0])
        close(stderrPipe[1])
        guard spawned == 0 else {
            close(stdinPipe[1])
            close(stderrPipe[0])
            throw MigrationError("cannot start \(path)", errno: spawned)
        }
        // The child reads all of stdin before it writes much to stderr, so writing first cannot deadlock; a child
        // that exits early says why on stderr.
        try? FileDescriptor(rawValue: stdinPipe[1]).writeFully(input, what: "\(path)'s standard input")
        close(stdinPipe[1])
        var captured: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = retryingInterrupts { read(stderrPipe[0], &chunk, chunk.count) }
            if count <= 0 { break }
            if captured.count < 64 << 10 { captured += chunk[0..<count] }
        }
        close(stderrPipe[0])
        var status: Int32 = 0
        _ = retryingInterrupts { waitpid(pid, &status, 0) }
        let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(status: exitStatus, standardError: String(decoding: captured, as: UTF8.self))
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
