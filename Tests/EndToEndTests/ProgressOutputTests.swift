import Glibc
import Testing
import VMControl

/// What vmrecv prints about a stream it reads, checked with `vmrecv -n`: it checks a stream against this host's KVM
/// as a receive does, so the stream is a real machine's, saved cold once for the suite's tests.
@Suite struct ReceiveProgressTests {
    /// A cold LZ4 stream of a 64 MiB guest named 'sample' that wrote a `workingSet` over text, in a fresh fixture directory.
    func sample(_ fixture: VMFixture, workingSet: String = "16M") throws -> String {
        try VMFixture.requireMachine()
        // Text where the guest does not write, so that the compression ratio is well above 1 whatever it wrote.
        let image = fixture.file("text.img")
        guard try runShell("yes 'a page of text that compresses' | head -c 64M > \(shellQuoted(image))").status == 0 else {
            throw ControlError("cannot write \(image)")
        }
        try fixture.startGuest("sample", cpus: 1, memory: "64M", workingSet: workingSet, extra: ["--memory-image", image])
        let file = fixture.file("sample.vms")
        let saved = try runShell("\(fixture.command("vmsend", ["--warm", "-c", "lz4", "sample"])) > \(shellQuoted(file))")
        guard saved.status == 0 else { throw ControlError("vmsend: \(saved.standardError)") }
        try fixture.destroyAllAndExpectNothingLeft()
        return file
    }

    @Test func parsableOutputFromAFileAndFromAPipe() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        let stream = try sample(fixture)
        let length = fixture.size(of: "sample.vms")
        let vmrecv = fixture.command("vmrecv", ["--dry-run", "--parsable", "copy"])
        for (command, fromFile) in [
            ("\(vmrecv) < \(shellQuoted(stream))", true), ("cat \(shellQuoted(stream)) | \(vmrecv)", false),
        ] {
            let result = try runShell(command)
            #expect(result.status == 0, "\(result.standardError)")
            let output = try ParsableOutput(result.standardError, tool: "vmrecv")
            #expect(output.messages.isEmpty)
            #expect(output.size.mode == "cold" && output.size.machine == "copy")
            // A file's length is known before the stream is read; a pipe's is not.
            #expect(output.size.estimatedBytes == (fromFile ? length : nil))
            #expect(output.summary.streamBytes == length)
            #expect(output.summary.rounds == output.rounds.count && output.rounds.count == 1)
            #expect(output.rounds.map(\.kind) == ["final"], "a cold stream is one round, sent paused")
            #expect(
                output.rounds.allSatisfy { $0.pagesDone == $0.pagesInRound && $0.dirtyPages == nil && $0.throttlePercent == nil })
            #expect(output.summary.pausedMicroseconds == nil && output.summary.downtimeMicroseconds == nil)
            #expect(output.summary.compressionRatio > 1, "sample pages compress")
            // The rate is stream bytes over the time, the same figure as the two beside it.
            let expected = Double(output.summary.streamBytes) * 1e6 / Double(output.summary.elapsedMicroseconds)
            #expect(abs(Double(output.summary.rate) - expected) <= expected * 0.01 + 1)
        }
    }

    @Test func verboseSummaryHasARealCompressionRatioAndNoDowntimeForAColdStream() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        let stream = try sample(fixture)
        let result = try runShell("\(fixture.command("vmrecv", ["-n", "--verbose", "copy"])) < \(shellQuoted(stream))")
        #expect(result.status == 0, "\(result.standardError)")
        let summary = try #require(result.standardError.split(separator: "\n").last.map(String.init))
        #expect(summary.hasPrefix("verified VM 'sample' (64 MiB) as 'copy': "), "\(summary)")
        let ratio = summary.components(separatedBy: "compression ratio ").last.flatMap { Double($0) } ?? 0
        #expect(ratio > 1 && ratio < 10, "\(summary)")
        #expect(!summary.contains("downtime"), "\(summary)")
    }

    /// SIGUSR1 prints a progress line at once while vmrecv waits for input that does not come.
    @Test func sigusr1PrintsAProgressLineWhileAReadIsBlocked() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        _ = try sample(fixture, workingSet: "32M")
        let stream = try fixture.contents(of: "sample.vms")
        let fifo = fixture.file("fifo")
        guard mkfifo(fifo, 0o600) == 0 else { throw ControlError("mkfifo failed") }
        let errors = fixture.file("vmrecv.err")
        let started = try runShell(
            // Output redirected before the fifo is opened (the open blocks), so the shell returns at once; the
            // subshell's pid becomes vmrecv's by exec.
            "(exec > /dev/null 2> \(shellQuoted(errors)); exec \(fixture.command("vmrecv", ["-n", "-P", "copy"])) < \(shellQuoted(fifo))) & echo $!"
        )
        let pid = try #require(Int32(started.standardOutput.trimmingSpaces))
        defer { if fixture.isAlive(pid) { kill(pid, SIGKILL) } }
        var writer = open(fifo, O_WRONLY)
        guard writer >= 0 else { throw ControlError("cannot open the fifo") }
        defer { if writer >= 0 { close(writer) } }
        let head = 2 << 20
        try writeAll(writer, stream[0..<head])
        try waitUntil("vmrecv read all there is and is blocked reading more") {
            let size = try fixture.text(of: errors).hasPrefix("size\t")
            return size && unreadBytes(writer) == 0 && blockedSystemCall(pid).map { [0, 19].contains($0) } == true
        }
        let before = try fixture.text(of: errors).components(separatedBy: "\nprogress\t").count
        kill(pid, SIGUSR1)
        try waitUntil("a progress line appears") {
            try fixture.text(of: errors).components(separatedBy: "\nprogress\t").count > before
        }
        try writeAll(writer, stream[head...])
        close(writer)
        writer = -1
        try waitUntil("vmrecv finishes") { !fixture.isAlive(pid) }
        let output = try ParsableOutput(try fixture.text(of: errors), tool: "vmrecv")
        let asked = try #require(output.lines.first { $0.kind == "progress" })
        #expect(asked.totalBytes <= UInt64(head) && asked.round == 0 && asked.pagesDone < asked.pagesInRound)
        #expect(output.summary.streamBytes == UInt64(stream.count))
    }
}

/// Bytes written to a pipe and not read yet (FIONREAD works on either end).
func unreadBytes(_ fd: Int32) -> Int32 {
    var count: Int32 = 0
    return ioctl(fd, UInt(FIONREAD), &count) == 0 ? count : -1
}

func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) throws {
    var rest = bytes
    while !rest.isEmpty {
        let count = rest.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { throw ControlError("write failed: \(String(cString: strerror(errno)))") }
        rest = rest.dropFirst(count)
    }
}

extension VMFixture {
    /// A file's text, by its full path.
    func text(of path: String) throws -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count <= 0 { return String(decoding: bytes, as: UTF8.self) }
            bytes += chunk[0..<count]
        }
    }
}

extension String {
    var trimmingSpaces: String { String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed()) }
}
