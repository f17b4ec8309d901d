import Foundation
import Glibc
import MachineDescription
import Testing
import VMStream

extension MigrationEndToEndTests {
    /// `vmsend -s` of a running guest, cut by the transport in round 0, in a later round, inside the state and just
    /// before END, each time continued with `vmsend -t` from the receiver's token: the copy runs with every check
    /// passing, the source kept running until its pause, and only the cut records travelled twice.
    @Suite struct LiveResumeTests {
        static let cutter: String = {
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            return "/usr/bin/python3 " + shellQuoted(root.appendingPathComponent("scripts/cut-stream.py").path)
        }()

        func token(_ fixture: VMFixture, _ name: String) throws -> ResumeToken {
            let text = try #require(try fixture.status(name).partial?.token, "'\(name)' holds no partial receive")
            return try ResumeToken(parsing: text)
        }

        /// With a disk, the first cut falls in round 0's disk blocks, and the disk's checks must pass on the copy.
        @Test(arguments: [("none", false), ("lz4", false), ("none", true)])
        func aLiveStreamCutFourTimesArrivesWholeAndRuns(compression: String, disk: Bool) throws {
            try VMFixture.requireMachine()
            guard access("/usr/bin/python3", X_OK) == 0 else { try Test.cancel("needs /usr/bin/python3") }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let image = fixture.file("a.img")
            var extra: [String] = []
            if disk {
                #expect(close(open(image, O_CREAT | O_WRONLY, 0o600)) == 0 && truncate(image, 16 << 20) == 0)
                extra = ["--disk", image, "--guest-disk-rate", "4M/s"]
            }
            let before = try fixture.startGuest("a", cpus: 2, memory: "128M", workingSet: "16M", extra: extra)
            if disk { try waitUntil("'a' writes its disk") { (try fixture.status("a").disk?.writes ?? 0) > 50 } }
            let receive = fixture.command("vmrecv", ["-s", "--disk-dir", fixture.directory, "b"])
            // Where each send is cut, counted in the records that send carries: inside round 0 (its memory, or its
            // disk); the third round list of the first continuation (a later round); the first kernel state chunk;
            // END.
            let legs: [(cut: String, sourceAfter: RunState)] = [
                (disk ? "DISK-BLOCKS 2 500" : "PAGES 3 1000", .running), ("ROUND 3 5000", .running),
                ("KERNEL 1 20", .paused), ("END 1", .paused),
            ]
            var point: ResumePoint?
            var resent: [UInt64] = []
            var wire: UInt64 = 0
            for leg in legs {
                var send = fixture.command("vmsend", ["-s", "-c", compression, "a"])
                if let point {
                    let whole = try fixture.status("a").resumable?.completed == true
                    // The cut in a later round needs live rounds after the one resumed: a pause of 1 ms is not reached
                    // before a few more, however fast this host carries the guest's writes.
                    let rounds = leg.cut.hasPrefix("ROUND") ? ["--downtime", "1"] : []
                    send = fixture.command(
                        "vmsend",
                        ["-t", ResumeToken(point: point, machine: "a", mode: .live).text] + (whole ? ["--force"] : []) + rounds
                            + ["a"])
                }
                let result = try runShell("\(send) | \(Self.cutter) \(leg.cut) | \(receive)")
                expectOneLine(
                    result.standardError.split(separator: "\n").filter { $0.hasPrefix("vmrecv") }.joined(), "vmrecv",
                    saying: ["vmrecv: stream interrupted after ", "; resume with: vmsend -t ", " a | ... vmrecv -s b"])
                // A host too loaded to run the guest during a round leaves it almost nothing to send, and that round
                // switches over: the later-round cut then falls in the final round, after the pause, and vmsend says so.
                let cutAfterPause =
                    leg.cut.hasPrefix("ROUND") && result.standardError.contains("stays paused so that stream")
                if cutAfterPause { print("cut \(leg.cut) fell in the final round: \(result.standardError)") }
                let sourceAfter = cutAfterPause ? .paused : leg.sourceAfter
                let source = try fixture.status("a")
                #expect(
                    source.state == sourceAfter || (sourceAfter == .paused && source.state == .migrated),
                    "after cut \(leg.cut): \(source.stateDescription)")
                #expect(source.resumable?.expires != nil, "after cut \(leg.cut) the source keeps the stream")
                if sourceAfter == .running { #expect(result.standardError.contains("keeps running, its writes logged")) }
                let next = try token(fixture, "b").point
                let passed = result.standardError.split(separator: "\n").first { $0.hasPrefix("cut-stream: ") }
                let sent = try #require(passed.flatMap { UInt64($0.split(separator: " ")[1]) }, "\(result.standardError)")
                wire += sent
                // What arrived of the record the cut fell in travels again; nothing verified does.
                let start = point.map { $0.offset - 104 } ?? 0
                try #require(next.offset > (point?.offset ?? 0) && next.offset <= start + sent, "cut \(leg.cut): \(next)")
                resent.append(start + sent - next.offset)
                point = next
            }
            let whole = try fixture.status("a").resumable?.completed == true
            let last = try runShell(
                "\(fixture.command("vmsend", ["-t", ResumeToken(point: point!, machine: "a", mode: .live).text] + (whole ? ["--force"] : []) + ["-v", "a"])) | \(receive)"
            )
            #expect(last.status == 0, "\(last.standardError)")
            #expect(resent.allSatisfy { $0 < (1 << 20) + 64 }, "\(resent)")
            #expect(resent.last == 0, "cut just before END: every record before it verified")
            print(
                "live resume figures (\(compression)\(disk ? ", disk" : "")): cuts \(legs.map(\.cut)); bytes of cut records sent again \(resent); \(wire) bytes before the last send"
            )
            try fixture.expectContinues("b", from: before)
            let copy = try fixture.status("b")
            #expect(copy.partial == nil)
            if disk {
                try waitUntil("the copy checks its disk") { (try fixture.status("b").disk?.checksPassed ?? 0) > 5 }
                #expect(try fixture.status("b").disk?.checksFailed == 0)
            }
            #expect(try fixture.status("a").state == .migrated)
            _ = try fixture.vmctl(["destroy", "b"])
            unlink(fixture.file("b-vda.img"))
            unlink(image)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// An interrupted live resumable send leaves its source running and its stream continuable; one killed
        /// outright leaves no journal, so its token is refused saying why, and the source's dirty log is off.
        @Test func anInterruptedLiveSendCanBeContinuedAndAKilledOneSaysWhyNot() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let before = try fixture.startGuest("a", cpus: 1, memory: "64M", workingSet: "8M")
            let receive = fixture.command("vmrecv", ["-s", "b"])
            for signal in ["INT", "KILL"] {
                // A transport that takes 3 MB and then stalls (its reader holds the pipe open) holds the send in
                // round 0 until the signal comes.
                let stream = fixture.file("leg.vms")
                let fifo = fixture.file("leg.fifo")
                #expect(mkfifo(fifo, 0o600) == 0)
                _ = try runShell(
                    "\(fixture.command("vmsend", ["-s", "a"])) > \(shellQuoted(fifo)) 2>\(shellQuoted(fixture.file("send.err"))) & "
                        + "pid=$!; exec 3<\(shellQuoted(fifo)); head -c 3000000 <&3 > \(shellQuoted(stream)); sleep 0.5; "
                        + "kill -\(signal) $pid; wait $pid; exec 3<&-")
                unlink(fifo)
                let message = (try? String(contentsOfFile: fixture.file("send.err"), encoding: .utf8)) ?? ""
                try fixture.expectRunning("a")
                let kept = try runShell("\(receive) < \(shellQuoted(stream))")
                expectOneLine(kept.standardError, "vmrecv", saying: ["stream interrupted after"])
                let token = try token(fixture, "b")
                let continued = try runShell("\(fixture.command("vmsend", ["-t", token.text, "a"])) | \(receive)")
                if signal == "INT" {
                    #expect(message.contains("keeps running, its writes logged"), "\(message)")
                    #expect(continued.status == 0, "\(continued.standardError)")
                    try fixture.expectContinues("b", from: before)
                    _ = try fixture.vmctl(["destroy", "b"])
                    _ = try fixture.vmctl(["resume", "--force", "a"])
                } else {
                    #expect(continued.status == 1)
                    expectOneLine(
                        continued.standardError.split(separator: "\n").filter { $0.hasPrefix("vmsend") }.joined(), "vmsend",
                        saying: ["its sender left no journal of what it sent"])
                    #expect(try fixture.status("a").resumable == nil)
                    _ = try runShell(fixture.command("vmrecv", ["-A", "b"]))
                }
                unlink(stream)
                unlink(fixture.file("send.err"))
            }
            try fixture.expectRunning("a")
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
