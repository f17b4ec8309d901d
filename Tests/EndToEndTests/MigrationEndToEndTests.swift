import Glibc
import MachineDescription
import Testing
import VMControl

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// vmsend and vmrecv as a user runs them: real processes, real pipes, files and sockets.
///
/// One suite, run one test at a time: migrations of guests that dirty memory flat out compete for
/// the two cores, and one at a time keeps each test's rounds about its own guest.
@Suite(.serialized) enum MigrationEndToEndTests {}

/// A shell pipe stage that carries about 10 MB/s: 128 KiB at a time with a pause in between
/// (tee writes to fd 3, the next stage's end of the pipe). Makes rounds last seconds.
let slowPipe = "sh -c 'while n=$(head -c 131072 | tee /dev/fd/3 | wc -c) && [ \"$n\" -gt 0 ]; do sleep 0.01; done' 3>&1"

/// What every migration test does around vmsend/vmrecv: start a guest, migrate, prove the copy is right.
extension VMFixture {
    /// Starts a background VM and waits until every vCPU has ticked and passed a check.
    @discardableResult
    func startGuest(
        _ name: String, cpus: Int = 2, memory: String = "256M", workingSet: String = "32M",
        extra: [String] = []
    ) throws -> MachineStatus {
        let started = try vmrun(["--cpus", "\(cpus)", "--memory", memory, "--guest-working-set", workingSet] + extra + [name])
        guard started.status == 0 else { throw ControlError("vmrun \(name) failed: \(started.standardError)") }
        var status = try self.status(name)
        try waitUntil("'\(name)' ticks and passes a check on every vCPU") {
            status = try self.status(name)
            return status.vcpus.allSatisfy { $0.tick > 0 && $0.checksPassed > 0 }
        }
        return status
    }

    /// Checks that `copy` continues where `source` stopped: ticks not from 0, two new passes on every vCPU, no failure.
    @discardableResult
    func expectContinues(
        _ copy: String, from source: MachineStatus,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> MachineStatus {
        let first = try status(copy)
        #expect(first.state == .running, sourceLocation: sourceLocation)
        #expect(first.vcpus.count == source.vcpus.count, sourceLocation: sourceLocation)
        for (restored, original) in zip(first.vcpus, source.vcpus) {
            #expect(
                restored.tick >= original.tick, "ticks restarted: \(restored.tick) < \(original.tick)",
                sourceLocation: sourceLocation)
        }
        let later = try waitForNewChecks(copy, after: source)
        #expect(later.vcpus.allSatisfy { $0.checksFailed == 0 }, "\(later.vcpus)", sourceLocation: sourceLocation)
        return later
    }

    /// The one-line error of a tool that exited 1.
    func expectOneLineFailure(
        _ result: ProcessResult, tool: String, saying words: [String],
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(result.status == 1, "\(tool) exited \(result.status): \(result.standardError)", sourceLocation: sourceLocation)
        let lines = result.standardError.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(result.standardError)", sourceLocation: sourceLocation)
        #expect(result.standardError.hasPrefix("\(tool): "), "\(result.standardError)", sourceLocation: sourceLocation)
        for word in words {
            #expect(
                result.standardError.contains(word), "'\(word)' missing in: \(result.standardError)",
                sourceLocation: sourceLocation)
        }
    }

    /// Size of a file in the run directory.
    func size(of name: String) -> UInt64 {
        var info = stat()
        return stat(file(name), &info) == 0 ? UInt64(info.st_size) : 0
    }

    /// The bytes of a file in the run directory.
    func contents(of name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: file(name))))
    }

    /// Writes a file in the run directory.
    func write(_ bytes: [UInt8], to name: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: file(name)))
    }
}
