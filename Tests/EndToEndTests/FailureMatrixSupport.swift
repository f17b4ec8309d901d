import Foundation
import Glibc
import MachineDescription
import Synchronization
import Testing
import VMControl

/// A python pass-through that carries about 12 MB/s, 128 KiB at a time, and ends as soon as either side does
/// (a shell loop over `head | tee` would swallow a dead reader's EPIPE and keep draining its writer).
let slowRelay =
    "python3 -c 'import sys, time\nr, w = sys.stdin.buffer, sys.stdout.buffer\nwhile True:\n    b = r.read1(131072)\n"
    + "    if not b: break\n    w.write(b); w.flush(); time.sleep(0.01)'"

/// `vmsend … | relay | vmrecv …` run on a thread of its own, so that a test can watch it, stop the relay and kill
/// one side by its pid. Each stage's pid and stderr, and the tools' exit statuses, land in a scratch folder outside
/// the run directory.
final class RunningMigration: Sendable {
    let scratch: String
    private let finished = Mutex<ProcessResult?>(nil)

    /// Starts the pipeline; `send` and `receive` are the tools' arguments after `--run-dir`.
    init(_ fixture: VMFixture, send: [String], receive: [String], relay: String = slowRelay) {
        var template = Array("/tmp/vmfail-XXXXXX".utf8CString)
        scratch = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let scratch = self.scratch
        // Each tool runs as `sh -c 'echo $$ > pid; exec tool…'`: the pid written is the tool's own.
        func stage(_ name: String, _ command: String) -> String {
            "sh -c \(shellQuoted("echo $$ > \(scratch)/\(name).pid; exec \"$@\" 2> \(scratch)/\(name).err")) sh \(command)"
        }
        let line =
            "\(stage("send", fixture.command("vmsend", send))) | \(stage("relay", relay)) | \(stage("recv", fixture.command("vmrecv", receive)))"
            + "; echo ${PIPESTATUS[0]} ${PIPESTATUS[2]} > \(scratch)/statuses"
        let thread = Thread { [self] in
            let result = try? runProcess("/bin/bash", ["-c", line], timeout: .seconds(180))
            finished.withLock { $0 = result ?? ProcessResult(status: -1, standardOutput: "", standardError: "") }
        }
        thread.start()
    }

    func pid(_ tool: String) -> Int32? {
        (try? String(contentsOfFile: "\(scratch)/\(tool).pid", encoding: .utf8)).flatMap { Int32($0.filter(\.isNumber)) }
    }

    func standardError(_ tool: String) -> String {
        (try? String(contentsOfFile: "\(scratch)/\(tool).err", encoding: .utf8)) ?? ""
    }

    /// Sends `signal` to the tool's own process, nothing else.
    func signal(_ tool: String, _ number: Int32) throws {
        guard let pid = pid(tool) else { throw ControlError("no pid for \(tool)") }
        kill(pid, number)
    }

    /// Waits for both tools to end; their exit statuses (128 + signal when killed).
    func wait() throws -> (send: Int32, receive: Int32) {
        try waitUntil("the pipeline ends", timeout: .seconds(180)) { finished.withLock { $0 != nil } }
        let words = ((try? String(contentsOfFile: "\(scratch)/statuses", encoding: .utf8)) ?? "").split(separator: " ")
        guard words.count == 2, let send = Int32(words[0].filter(\.isNumber)), let receive = Int32(words[1].filter(\.isNumber))
        else { throw ControlError("the pipeline left no exit statuses") }
        return (send, receive)
    }

    /// Lets a stopped relay go on, so that a pipeline a failed test leaves behind still ends.
    func remove() {
        if finished.withLock({ $0 == nil }) { try? signal("relay", SIGCONT) }
        for name in ["send", "relay", "recv"].flatMap({ ["\($0).pid", "\($0).err"] }) + ["statuses"] {
            unlink("\(scratch)/\(name)")
        }
        rmdir(scratch)
    }
}

extension VMFixture {
    /// Every file in the run directory, sorted.
    func files() -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Only `names`' socket, console and log are in the run directory, and only their vmrun processes run.
    func expectOnly(
        _ names: [String], plus extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let wanted = (names.flatMap { ["\($0).console", "\($0).log", "\($0).sock"] } + extra).sorted()
        #expect(files() == wanted, "run directory holds \(files()), expected \(wanted)", sourceLocation: sourceLocation)
        let pids = try names.map { try status($0).pid }
        #expect(
            Set(processesInRunDirectory()) == Set(pids), "processes \(processesInRunDirectory()), expected \(pids)",
            sourceLocation: sourceLocation)
    }

    /// The machine runs: its state says so and its vCPUs tick on.
    func expectRunning(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try status(name)
        #expect(before.state == .running, "\(name) is \(before.stateDescription)", sourceLocation: sourceLocation)
        try waitUntil("'\(name)' ticks on", timeout: .seconds(20)) {
            zip(try status(name).vcpus, before.vcpus).allSatisfy { $0.tick > $1.tick }
        }
    }

    /// The vmrun log of a machine, as it is now.
    func log(_ name: String) -> String {
        (try? String(contentsOfFile: file("\(name).log"), encoding: .utf8)) ?? ""
    }
}

/// The one line a tool printed on stderr, checked for its prefix and words.
func expectOneLine(
    _ text: String, _ tool: String, saying words: [String] = [], sourceLocation: SourceLocation = #_sourceLocation
) {
    let lines = text.split(separator: "\n")
    #expect(lines.count == 1, "\(tool): expected one line, got: \(text)", sourceLocation: sourceLocation)
    #expect(text.hasPrefix("\(tool): "), "\(text)", sourceLocation: sourceLocation)
    for word in words { #expect(text.contains(word), "'\(word)' missing in: \(text)", sourceLocation: sourceLocation) }
}
