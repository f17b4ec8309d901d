import Glibc
import MachineDescription
import Testing
import VMControl
import VMStream

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

extension MigrationEndToEndTests {
    /// Warm and cold migration through a pipe and a file.
    @Suite struct WarmTests {
        /// How the stream travels from vmsend to vmrecv.
        enum Transport { case pipe, file }

        /// Pauses A, leaves a console line for it unread, sends it warm to B; checks B continues and A stays paused.
        /// Returns the size of the stream when it went through a file.
        @discardableResult
        func migrateWarm(
            _ fixture: VMFixture, from source: String, to copy: String, via transport: Transport,
            options: [String] = [], sourceLocation: SourceLocation = #_sourceLocation
        ) throws -> UInt64 {
            #expect(try fixture.vmctl(["pause", source]).status == 0, sourceLocation: sourceLocation)
            #expect(try fixture.vmctl(["console", "--input", "hello\n", source]).status == 0, sourceLocation: sourceLocation)
            let paused = try fixture.status(source)
            let send = fixture.command("vmsend", ["--warm"] + options + [source])
            let receive = fixture.command("vmrecv", [copy])
            let streamFile = shellQuoted(fixture.file("\(copy).vms"))
            let result: ProcessResult
            switch transport {
            case .pipe:
                result = try runShell("\(send) | \(receive)")
            case .file:
                let saved = try runShell("\(send) > \(streamFile)")
                #expect(saved.status == 0, "\(saved.standardError)", sourceLocation: sourceLocation)
                #expect(saved.standardError.contains("stays paused"), sourceLocation: sourceLocation)
                result = try runShell("\(receive) < \(streamFile)")
            }
            #expect(result.status == 0, "\(result.standardError)", sourceLocation: sourceLocation)
            if transport == .pipe {
                // A was paused before the send (to leave its input unread); after a complete send it is migrated.
                #expect(
                    result.standardError.contains("vmsend: VM '\(source)' is migrated (stream "),
                    "\(result.standardError)", sourceLocation: sourceLocation)
            }

            let after = try fixture.status(source)
            #expect(after.state == .migrated, sourceLocation: sourceLocation)
            #expect(after.vcpus.map(\.tick) == paused.vcpus.map(\.tick), "the source ran on", sourceLocation: sourceLocation)
            try fixture.expectContinues(copy, from: paused, sourceLocation: sourceLocation)

            // The line written while A was paused was never read by A; B reads it, echoes it, and keeps writing.
            try waitUntil("'\(copy)' echoes the input its source never read") {
                try fixture.console(copy).contains("rx: hello")
            }
            #expect(try !fixture.console(source).contains("rx: hello"), sourceLocation: sourceLocation)
            let echoed = try fixture.console(copy)
            let checksAfterEcho = { (text: String) in
                text.components(separatedBy: "rx: hello").last?.components(separatedBy: "check OK").count ?? 0
            }
            try waitUntil("'\(copy)' writes check lines after the echo") {
                checksAfterEcho(try fixture.console(copy)) > checksAfterEcho(echoed) + 1
            }
            return transport == .file ? fixture.size(of: "\(copy).vms") : 0
        }

        @Test func warmThroughAPipeContinuesWhereTheSourceStopped() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a")
            try migrateWarm(fixture, from: "a", to: "b", via: .pipe)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func coldThroughAFileContinuesWhereTheSourceStopped() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a")
            let size = try migrateWarm(fixture, from: "a", to: "b", via: .file)
            #expect(size > 32 << 20, "the working set is in the stream")
            let reader = StreamReader(bytes: try fixture.contents(of: "b.vms"))
            _ = try reader.next(into: DiscardingPageSink())
            #expect(reader.begin?.mode == .cold, "a send to a file is a cold save")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func lz4MakesTheStreamSmallerAndLosesNothing() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a")
            #expect(try fixture.vmctl(["pause", "a"]).status == 0)
            let plain = try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(fixture.file("plain.vms")))")
            #expect(plain.status == 0, "\(plain.standardError)")
            // The first send made A migrated: sending it again needs --force (the first stream was never restored).
            let compressed = try migrateWarm(fixture, from: "a", to: "b", via: .file, options: ["-c", "lz4", "--force"])
            let uncompressed = fixture.size(of: "plain.vms")
            #expect(compressed > 0 && compressed < uncompressed, "lz4 \(compressed) bytes, plain \(uncompressed) bytes")
            print("lz4 stream \(compressed) bytes, uncompressed \(uncompressed) bytes")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A 6 GiB guest whose working set sits at the top of RAM: the stream and the tools' memory follow
        /// what the guest touched, not its size.
        @Test func aLargeGuestCostsWhatItTouched() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let workingSet: UInt64 = 32 << 20
            try fixture.startGuest("a", memory: "6G", workingSet: "32M")
            #expect(try fixture.vmctl(["pause", "a"]).status == 0)
            let paused = try fixture.status("a")
            let time = { (name: String) in "/usr/bin/time -f %M -o \(shellQuoted(fixture.file(name)))" }
            let stream = shellQuoted(fixture.file("big.vms"))
            let send = try runShell("\(time("send.rss")) \(fixture.command("vmsend", ["--warm", "a"])) > \(stream)")
            #expect(send.status == 0, "\(send.standardError)")
            let receive = try runShell("\(time("recv.rss")) \(fixture.command("vmrecv", ["b"])) < \(stream)")
            #expect(receive.status == 0, "\(receive.standardError)")
            try fixture.expectContinues("b", from: paused)

            let size = fixture.size(of: "big.vms")
            #expect(
                size >= workingSet && size < workingSet + (16 << 20),
                "stream of \(size) bytes for a \(workingSet)-byte working set")
            // The working set is in highmem, the segment above 4 GiB.
            var pagesPerSegment: [Int: Int] = [:]
            let reader = StreamReader(bytes: try fixture.contents(of: "big.vms"))
            while let record = try reader.next(into: DiscardingPageSink()) {
                if case .pages(let batch) = record { pagesPerSegment[batch.segment, default: 0] += batch.count - batch.zeroPages }
            }
            #expect(reader.begin?.machine.segments.map(\.name) == ["lowmem", "highmem"])
            #expect(pagesPerSegment[1, default: 0] * 4096 >= Int(workingSet), "data pages per segment: \(pagesPerSegment)")

            // Peak RSS counts the guest pages each tool mapped and touched (the working set), plus the tool itself.
            let rss = { (name: String) in
                UInt64(
                    (try? String(contentsOfFile: fixture.file(name), encoding: .utf8))?
                        .split(separator: "\n").last.flatMap { UInt64($0) } ?? 0) << 10
            }
            let (sendRSS, receiveRSS) = (rss("send.rss"), rss("recv.rss"))
            print(
                "6 GiB guest, 32 MiB working set: stream \(size) bytes; peak RSS vmsend \(sendRSS >> 20) MiB, vmrecv \(receiveRSS >> 20) MiB"
            )
            #expect(sendRSS > 0 && sendRSS < workingSet + (64 << 20), "vmsend peak RSS \(sendRSS)")
            #expect(receiveRSS > 0 && receiveRSS < workingSet + (64 << 20), "vmrecv peak RSS \(receiveRSS)")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func dryRunReceiveVerifiesAndCreatesNothing() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let stream = shellQuoted(fixture.file("a.vms"))
            #expect(try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(stream)").status == 0)
            let owner = try fixture.status("a").pid
            let dryRun = try runShell("\(fixture.command("vmrecv", ["--dry-run", "-v", "b"])) < \(stream)")
            #expect(dryRun.status == 0, "\(dryRun.standardError)")
            #expect(dryRun.standardError.contains("would restore"), "\(dryRun.standardError)")
            #expect(fixture.sockets() == ["a.sock"])
            #expect(fixture.processesInRunDirectory() == [owner])
            let estimate = try runShell(fixture.command("vmsend", ["--dry-run", "-v", "a"]) + " > /dev/null")
            #expect(estimate.status == 0, "\(estimate.standardError)")
            #expect(estimate.standardError.contains("estimated stream size"), "\(estimate.standardError)")

            // -n, as zfs recv -n.
            let short = try runShell("\(fixture.command("vmrecv", ["-n", "b"])) < \(stream)")
            let shortEstimate = try runShell(fixture.command("vmsend", ["-n", "-v", "a"]) + " > /dev/null")
            #expect(short.status == 0, "vmrecv -n: \(short.standardError)")
            #expect(shortEstimate.status == 0, "vmsend -n: \(shortEstimate.standardError)")
            #expect(fixture.sockets() == ["a.sock"])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// Like `zfs send`, vmsend is quiet unless asked: a slow send prints no progress lines without -v or -P.
        @Test func aSlowSendIsQuietWithoutVerbose() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "16M")
            let result = try runShell(
                "\(fixture.command("vmsend", ["--warm", "a"])) | \(slowPipe) | \(fixture.command("vmrecv", ["b"]))")
            #expect(result.status == 0, "\(result.standardError)")
            let lines = result.standardError.split(separator: "\n")
            #expect(
                lines.count == 1 && lines[0].hasPrefix("vmsend: VM 'a' is migrated"), "unasked output: \(result.standardError)")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func aTerminalIsRefusedAtBothEnds() throws {
            try VMFixture.requireMachine()
            guard access("/usr/bin/script", X_OK) == 0 else { try Test.cancel("no script(1) to give the tools a terminal") }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            // script(1) runs the command on a new pseudo-terminal; -e passes on its exit status.
            let send = try runShell(
                "/usr/bin/script -qec \(shellQuoted(fixture.command("vmsend", ["--warm", "a"]))) /dev/null < /dev/null")
            #expect(send.status == 1)
            #expect(send.standardOutput.contains("vmsend: stream can not be written to a terminal"), "\(send.standardOutput)")
            #expect(try fixture.status("a").state == .running, "a refused send leaves the VM running")
            let receive = try runShell(
                "/usr/bin/script -qec \(shellQuoted(fixture.command("vmrecv", ["b"]))) /dev/null < /dev/null")
            #expect(receive.status == 1)
            #expect(
                receive.standardOutput.contains("vmrecv: stream can not be read from a terminal"), "\(receive.standardOutput)")
            #expect(fixture.sockets() == ["a.sock"])
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
