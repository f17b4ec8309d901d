import Glibc
import Testing
import VMControl

extension MigrationEndToEndTests {
    /// What vmsend and vmrecv tell a person and a script about a migration of a real guest.
    @Suite struct ReportTests {
        /// Runs `send | receive` with each side's stderr in a file of its own; returns both.
        func migrate(
            _ fixture: VMFixture, send: [String], receive: [String], sourceLocation: SourceLocation = #_sourceLocation
        ) throws -> (send: String, receive: String) {
            let sendErrors = fixture.file("send.err")
            let receiveErrors = fixture.file("receive.err")
            let result = try runShell(
                "\(fixture.command("vmsend", send)) 2> \(shellQuoted(sendErrors)) | "
                    + "\(fixture.command("vmrecv", receive)) 2> \(shellQuoted(receiveErrors))")
            let output = (try fixture.text(of: sendErrors), try fixture.text(of: receiveErrors))
            #expect(result.status == 0, "\(output)", sourceLocation: sourceLocation)
            return output
        }

        @Test func bothSidesParsableOutputDescribesTheSameLiveMigration() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", workingSet: "32M", extra: ["--guest-dirty-rate", "5M/s"])
            let (sendText, receiveText) = try migrate(fixture, send: ["--parsable", "a"], receive: ["--parsable", "b"])
            let sent = try ParsableOutput(sendText, tool: "vmsend")
            let received = try ParsableOutput(receiveText, tool: "vmrecv")

            #expect(sent.size.uuid == received.size.uuid && sent.size.uuid != "-")
            #expect(sent.size.mode == "live" && received.size.mode == "live")
            #expect(sent.size.machine == "a" && received.size.machine == "b")
            #expect((sent.size.estimatedBytes ?? 0) > 0 && received.size.estimatedBytes == nil, "a pipe has no length")
            // The same rounds, pages and stream bytes counted from both ends of the pipe.
            #expect(sent.rounds.map(\.kind) == received.rounds.map(\.kind))
            #expect(sent.rounds.map(\.round) == received.rounds.map(\.round))
            #expect(sent.rounds.map(\.pagesInRound) == received.rounds.map(\.pagesInRound))
            #expect(sent.rounds.last?.kind == "final" && sent.rounds.dropLast().allSatisfy { $0.kind == "round" })
            #expect(sent.summary.streamBytes == received.summary.streamBytes)
            #expect(sent.summary.rounds == received.summary.rounds && sent.summary.pages == received.summary.pages)
            #expect(sent.summary.guestBytes == 256 << 20 && received.summary.guestBytes == 256 << 20)
            // What each side can know: the sender its dirty rounds and how long its source was paused; the
            // receiver the downtime, to the resume.
            #expect(sent.rounds.dropLast().allSatisfy { $0.dirtyPages != nil && $0.throttlePercent != nil })
            #expect(received.lines.allSatisfy { $0.dirtyPages == nil && $0.dirtyRate == nil && $0.throttlePercent == nil })
            #expect(sent.summary.pausedMicroseconds != nil && sent.summary.downtimeMicroseconds == nil)
            #expect(received.summary.pausedMicroseconds == nil && received.summary.downtimeMicroseconds != nil)
            // Each side times its own phases of the pause; together they make up what each side saw of it.
            let sourcePhases = sent.summary.switchOverMicroseconds
            let destinationPhases = received.summary.switchOverMicroseconds
            #expect(sourcePhases[0..<5].allSatisfy { $0 != nil } && sourcePhases[5...].allSatisfy { $0 == nil })
            #expect(destinationPhases[0..<5].allSatisfy { $0 == nil } && destinationPhases[5...].allSatisfy { $0 != nil })
            let sourceTotal = sourcePhases.compactMap { $0 }.reduce(0, +)
            let paused = try #require(sent.summary.pausedMicroseconds)
            #expect(sourceTotal <= paused + 1000 && sourceTotal + 1000 >= paused, "\(sourcePhases) vs \(paused)")
            let downtime = try #require(received.summary.downtimeMicroseconds)
            let (arrival, restore, resume) = (destinationPhases[5]!, destinationPhases[6]!, destinationPhases[7]!)
            #expect(
                arrival + 1000 >= paused && arrival + restore + resume <= downtime + 1000, "\(destinationPhases) vs \(downtime)")
            // Beside the line on the migrated source, only a missed-target warning, which a loaded machine may earn.
            #expect(sent.messages.contains { $0.hasPrefix("vmsend: VM 'a' is migrated") }, "\(sent.messages)")
            #expect(
                sent.messages.allSatisfy {
                    $0.hasPrefix("vmsend: VM 'a' is migrated") || $0.hasPrefix("vmsend: warning: missed the downtime target")
                }, "\(sent.messages)")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func aColdRestoreReportsNoDowntimeAndAMissedTargetIsAWarning() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let file = shellQuoted(fixture.file("a.vms"))
            let saved = try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(file)")
            #expect(saved.status == 0, "\(saved.standardError)")
            let restored = try runShell("\(fixture.command("vmrecv", ["--verbose", "--parsable", "b"])) < \(file)")
            #expect(restored.status == 0, "\(restored.standardError)")
            let output = try ParsableOutput(restored.standardError, tool: "vmrecv")
            #expect(output.size.mode == "cold" && output.size.estimatedBytes == fixture.size(of: "a.vms"))
            #expect(output.summary.downtimeMicroseconds == nil, "the age of a file is not downtime")
            let told = try runShell("\(fixture.command("vmrecv", ["--verbose", "c"])) < \(file)")
            #expect(told.standardError.contains("a cold restore, so no downtime"), "\(told.standardError)")

            // A target of 0 ms cannot be met: vmsend says so with both figures; vmrecv measures the downtime.
            let (send, receive) = try migrate(
                fixture, send: ["--downtime", "0", "--max-rounds", "2", "b"], receive: ["-v", "d"])
            let warning = send.split(separator: "\n").first { $0.hasPrefix("vmsend: warning: ") } ?? ""
            #expect(warning.contains("missed the downtime target of 0 ms: the source was paused "), "\(send)")
            #expect(warning.contains(" ms before the stream ended"), "\(send)")
            #expect(receive.contains(" ms from the source's pause to the resume here"), "\(receive)")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// On a terminal, -v draws a bar; the summary and every message start on a line of their own.
        @Test func aTerminalGetsABarEndedBeforeAnyMessage() throws {
            try VMFixture.requireMachine()
            guard access("/usr/bin/script", X_OK) == 0 else { try Test.cancel("no script(1) to give the tools a terminal") }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let file = shellQuoted(fixture.file("a.vms"))
            // script(1) runs the command on a new pseudo-terminal: stderr is a terminal, stdout the file.
            let send = try runShell(
                "/usr/bin/script -qec \(shellQuoted(fixture.command("vmsend", ["-v", "--warm", "a"]) + " > \(file)")) /dev/null")
            #expect(send.status == 0, "\(send.standardOutput)")
            let sendScreen = screen(send.standardOutput)
            #expect(send.standardOutput.contains("\rfinal round 0 ["), "\(send.standardOutput)")
            #expect(sendScreen.contains { $0.hasPrefix("final round 0 [") && $0.contains("100%") }, "\(sendScreen)")
            #expect(sendScreen.contains { $0.hasPrefix("sent VM 'a' (64 MiB): ") }, "\(sendScreen)")
            #expect(sendScreen.contains { $0.hasPrefix("vmsend: VM 'a' is migrated") }, "\(sendScreen)")

            let receive = try runShell(
                "/usr/bin/script -qec \(shellQuoted(fixture.command("vmrecv", ["-v", "b"]) + " < \(file)")) /dev/null")
            #expect(receive.status == 0, "\(receive.standardOutput)")
            let receiveScreen = screen(receive.standardOutput)
            #expect(receiveScreen.contains { $0.hasPrefix("received final round 0 [") }, "\(receiveScreen)")
            #expect(receiveScreen.last?.hasPrefix("received VM 'a' (64 MiB) as 'b': ") == true, "\(receiveScreen)")
            // No message shares a line with a bar.
            for line in sendScreen + receiveScreen where line.contains("[") && line.contains("%") {
                #expect(line.hasPrefix("final round ") || line.hasPrefix("received final round "), "\(line)")
            }
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// SIGUSR1 prints a progress line at once while vmsend is blocked writing to a full pipe nobody reads.
        @Test func sigusr1PrintsAProgressLineWhileAWriteIsBlocked() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "32M")
            let fifo = fixture.file("fifo")
            guard mkfifo(fifo, 0o600) == 0 else { throw ControlError("mkfifo failed") }
            let errors = fixture.file("vmsend.err")
            // Output redirected before the fifo is opened (the open blocks), so the shell returns at once; the
            // subshell's pid becomes vmsend's by exec.
            let started = try runShell(
                "(exec > /dev/null 2> \(shellQuoted(errors)); exec \(fixture.command("vmsend", ["-P", "--warm", "a"])) > \(shellQuoted(fifo))) & echo $!"
            )
            let pid = try #require(Int32(started.standardOutput.trimmingSpaces))
            let reader = open(fifo, O_RDONLY)
            guard reader >= 0 else { throw ControlError("cannot open the fifo") }
            defer { close(reader) }
            try waitUntil("vmsend is blocked writing to the full pipe") {
                unreadBytes(reader) > 0 && blockedSystemCall(pid).map { [1, 20, 278].contains($0) } == true
            }
            let before = try fixture.text(of: errors).components(separatedBy: "\nprogress\t").count
            kill(pid, SIGUSR1)
            try waitUntil("a progress line appears") {
                try fixture.text(of: errors).components(separatedBy: "\nprogress\t").count > before
            }
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            while read(reader, &chunk, chunk.count) > 0 {}
            try waitUntil("vmsend finishes") { !fixture.isAlive(pid) }
            let output = try ParsableOutput(try fixture.text(of: errors), tool: "vmsend")
            let asked = try #require(output.lines.first { $0.kind == "progress" })
            #expect(asked.round == 0 && asked.pagesDone < asked.pagesInRound && asked.totalBytes < output.summary.streamBytes)
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}

/// The system call `pid`'s main thread is in (read 0, readv 19, write 1, writev 20, vmsplice 278), nil while it runs.
func blockedSystemCall(_ pid: Int32) -> Int? {
    let fd = open("/proc/\(pid)/syscall", O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    let count = read(fd, &buffer, buffer.count)
    return Int(String(decoding: buffer[..<max(count, 0)], as: UTF8.self).prefix { $0 != " " })
}

/// What a terminal shows of `output`: each line as the last `\r` left it, without clear-to-end-of-line.
func screen(_ output: String) -> [String] {
    output.replacing("\u{1b}[K", with: "").replacing("\r\n", with: "\n")
        .split(separator: "\n").map { line in String(line.split(separator: "\r", omittingEmptySubsequences: false).last ?? "") }
}
