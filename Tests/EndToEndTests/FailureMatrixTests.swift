import Foundation
import Glibc
import MachineDescription
import SystemPackage
import SystemSupport
import Testing
import VMControl

extension MigrationEndToEndTests {
    /// The failure paths a user can meet, one row each: which tool dies or is interrupted, how and when; a closed
    /// pipe; a full disk; a transport that never half-closes. Each row checks the exit statuses, the one-line
    /// messages, which copy runs afterwards (one, never two) and that the run directory holds nothing unexpected.
    @Suite struct FailureMatrixTests {
        enum Victim: String, CaseIterable { case vmsend, vmrecv }
        enum Blow: CaseIterable {
            case kill, interrupt
            var signal: Int32 { self == .kill ? SIGKILL : SIGINT }
        }
        enum Moment: CaseIterable { case roundZero, laterRound, finalPause }

        /// A live send of a guest dirtying flat out through a relay of about 12 MB/s: round 0 takes a second or two,
        /// and with no throttle and three rounds at most the final round still has most of the working set to send.
        func startMigration(_ fixture: VMFixture) throws -> (RunningMigration, Int32) {
            try fixture.startGuest("a", memory: "128M", workingSet: "16M")
            let owner = try fixture.status("a").pid
            let migration = RunningMigration(
                fixture, send: ["-P", "--no-throttle", "--max-rounds", "3", "a"], receive: ["b"])
            return (migration, owner)
        }

        /// Waits for `moment` of the send.
        func reach(_ moment: Moment, _ migration: RunningMigration, _ fixture: VMFixture) throws {
            switch moment {
            case .roundZero:
                // BEGIN has arrived when the incoming machine exists; round 0 runs for a while after that.
                try waitUntil("the receiver creates 'b'") { fixture.exists("b.sock") }
                usleep(200_000)
            case .laterRound:
                try waitUntil("round 0 ends") { migration.standardError("send").contains("round\t0\t") }
            case .finalPause:
                // Three rounds at most: round 1's end is the switch-over. The relay is stopped there, so the final round
                // cannot end before the blow however this host runs (a loaded one ran it unseen between two polls);
                // it goes on after the blow. Generous: when the Linux guest's test emulates ring 0 on the same two
                // cores, rounds crawl.
                var roundOne: [Substring] = []
                try waitUntil("round 1 ends", timeout: .seconds(170)) {
                    let lines = migration.standardError("send").split(separator: "\n")
                    roundOne = lines.first { $0.hasPrefix("round\t1\t") }?.split(separator: "\t") ?? []
                    return !roundOne.isEmpty
                }
                try migration.signal("relay", SIGSTOP)
                // The final round holds what round 1 found dirty; held up only once the pipes' 2 MiB are full.
                #expect(Int(roundOne[7]).map { $0 > 1024 } == true, "too little for a stopped relay to hold up: \(roundOne)")
                try waitUntil("the source pauses for the final round") { try fixture.status("a").state == .paused }
            }
        }

        static let rows: [(Victim, Blow, Moment)] = Victim.allCases.flatMap { victim in
            Blow.allCases.flatMap { blow in Moment.allCases.map { (victim, blow, $0) } }
        }

        @Test(arguments: rows)
        func aToolThatDiesOrIsInterruptedLeavesExactlyOneCopyRunning(victim: Victim, blow: Blow, moment: Moment) throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let (migration, owner) = try startMigration(fixture)
            defer { migration.remove() }
            try reach(moment, migration, fixture)
            if moment == .roundZero, let incoming = try? fixture.status("b").pid {
                // ps shows the machine being received as it is, not placeholder flags.
                let words = (try? FileDescriptor.readFile("/proc/\(incoming)/cmdline", limit: 4096)) ?? []
                let line = String(decoding: words.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
                #expect(line.contains(" b --cpus 2 --memory 128M --incoming --run-dir "), "\(line)")
            }
            try migration.signal(victim == .vmsend ? "send" : "recv", blow.signal)
            if moment == .finalPause { try migration.signal("relay", SIGCONT) }
            let (send, receive) = try migration.wait()
            let sendLines = migration.standardError("send").split(separator: "\n").filter { !$0.contains("\t") }
                .joined(separator: "\n")
            let receiveError = migration.standardError("recv")
            let pausedBeforeTheBlow = moment == .finalPause
            let sourceFate = pausedBeforeTheBlow ? "the source VM 'a' was resumed" : "the source VM 'a' keeps running"

            switch (victim, blow) {
            case (.vmsend, .kill):
                #expect(send == 128 + SIGKILL)
                #expect(sendLines.isEmpty, "\(sendLines)")
            case (.vmsend, .interrupt):
                #expect(send == 1)
                expectOneLine(sendLines, "vmsend", saying: ["vmsend: interrupted; " + sourceFate])
            case (.vmrecv, _):
                #expect(send == 1)
                expectOneLine(sendLines, "vmsend", saying: [sourceFate])
            }
            switch (victim, blow) {
            case (.vmrecv, .kill):
                #expect(receive == 128 + SIGKILL)
                #expect(receiveError.isEmpty, "\(receiveError)")
            case (.vmrecv, .interrupt):
                #expect(receive == 1)
                expectOneLine(receiveError, "vmrecv", saying: ["interrupted at byte ", "the incoming VM 'b' was destroyed"])
            case (.vmsend, _):
                #expect(receive == 1)
                // Cut short, or pages lent to the pipe that changed once the source was resumed.
                expectOneLine(receiveError, "vmrecv")
                #expect(
                    receiveError.contains("stream truncated at byte") || receiveError.contains("checksum mismatch in record"),
                    "\(receiveError)")
            }
            // vmrecv returned only once its machine was gone; a killed vmrecv's machine goes by itself, soon.
            if !(victim == .vmrecv && blow == .kill) {
                #expect(!fixture.exists("b.sock") && fixture.processesInRunDirectory() == [owner], "vmrecv left 'b' behind")
            }
            try waitUntil("only 'a' is left", timeout: .seconds(15)) { fixture.processesInRunDirectory() == [owner] }
            // A source the sender paused runs again: resumed by vmsend, or by vmrun when vmsend died before END.
            try waitUntil("'a' runs again", timeout: .seconds(15)) { try fixture.status("a").state == .running }
            try fixture.expectRunning("a")
            try fixture.expectOnly(["a"])
            if victim == .vmsend && blow == .kill && pausedBeforeTheBlow {
                #expect(
                    fixture.log("a").contains("went away before its stream was complete: no copy can run, so the VM was resumed"))
            }
            try fixture.destroyAllAndExpectNothingLeft()
            #expect(fixture.files().isEmpty, "a destroyed VM leaves nothing: \(fixture.files())")
        }

        @Test func aClosedPipeOrAFullDiskResumesTheSource() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let full = try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > /dev/full")
            expectOneLine(full.standardError, "vmsend", saying: ["No space left on device", "the source VM 'a' was resumed"])
            #expect(full.status == 1)
            try fixture.expectRunning("a")
            let closed = try runShell("\(fixture.command("vmsend", ["--warm", "a"])) | head -c 100000 > /dev/null")
            #expect(closed.standardError.hasSuffix("the source VM 'a' was resumed\n"), "\(closed.standardError)")
            try fixture.expectRunning("a")
            try fixture.expectOnly(["a"])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A transport that never signals the end of its input: the receive ends at END, at once.
        @Test func aTransportWithoutHalfCloseDoesNotHoldTheGuest() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let stream = shellQuoted(fixture.file("a.vms"))
            #expect(try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(stream)").status == 0)
            // The writer holds the pipe open for a minute after the stream and 8 bytes of garbage.
            let writerPid = fixture.file("writer.pid")
            defer { killRecordedProcess(writerPid) }
            let pipeline =
                "sh -c 'cat \(stream); printf garbage!; echo $$ > \(writerPid); exec sleep 60' | "
                + "{ \(fixture.command("vmrecv", ["b"])) 2> \(fixture.file("recv.err")); echo $? > \(fixture.file("recv.status")); }"
            let started = ContinuousClock.now
            let running = Thread { _ = try? runShell(pipeline, timeout: .seconds(120)) }
            running.start()
            try waitUntil("vmrecv ends although its input never does", timeout: .seconds(60)) {
                access(fixture.file("recv.status"), F_OK) == 0
            }
            let seconds = secondsOf(ContinuousClock.now - started)
            #expect(seconds < 30, "vmrecv waited \(seconds) s for an end of input that never came")
            #expect(try String(contentsOfFile: fixture.file("recv.status"), encoding: .utf8) == "0\n")
            #expect(
                try String(contentsOfFile: fixture.file("recv.err"), encoding: .utf8)
                    == "vmrecv: warning: 8 bytes after END ignored\n")
            killRecordedProcess(writerPid)
            for name in ["recv.err", "recv.status"] { unlink(fixture.file(name)) }
            try fixture.expectRunning("b")
            #expect(try fixture.status("a").state == .migrated)
            try fixture.expectOnly(["a", "b"], plus: ["a.vms"])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// nc without -N on both sides: neither ever closes, yet vmsend and vmrecv finish and the copy runs.
        @Test func netcatWithoutHalfCloseStillMigrates() throws {
            try VMFixture.requireMachine()
            guard access("/usr/bin/nc", X_OK) == 0 else { try Test.cancel("netcat (nc) is not installed") }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let port = try MigrationEndToEndTests.LiveTests().freeLoopbackPort()
            // The listener and vmrecv, then the sender; each nc's pid is kept to end it afterwards.
            let listenPid = fixture.file("listen.pid")
            let sendPid = fixture.file("sendnc.pid")
            // Ended whatever the test finds: neither nc ever exits by itself.
            defer { for file in [listenPid, sendPid] { killRecordedProcess(file) } }
            let listen =
                "sh -c 'echo $$ > \(listenPid); exec nc -l 127.0.0.1 \(port)' | { \(fixture.command("vmrecv", ["b"])) "
                + "2> \(fixture.file("recv.err")); echo $? > \(fixture.file("recv.status")); }"
            let receiver = Thread { _ = try? runShell(listen, timeout: .seconds(120)) }
            receiver.start()
            try waitUntil("nc listens") { access(listenPid, F_OK) == 0 }
            usleep(300_000)
            let send =
                "\(fixture.command("vmsend", ["a"])) 2> \(fixture.file("send.err")) "
                + "| sh -c 'echo $$ > \(sendPid); exec nc 127.0.0.1 \(port)'"
            let sender = Thread { _ = try? runShell(send, timeout: .seconds(120)) }
            sender.start()
            try waitUntil("vmrecv ends although nc never closes", timeout: .seconds(60)) {
                access(fixture.file("recv.status"), F_OK) == 0
            }
            let status = try String(contentsOfFile: fixture.file("recv.status"), encoding: .utf8)
            #expect(status == "0\n", "\((try? String(contentsOfFile: fixture.file("recv.err"), encoding: .utf8)) ?? "")")
            try fixture.expectRunning("b")
            try waitUntil("the source is migrated") { try fixture.status("a").state == .migrated }
            for file in [listenPid, sendPid] { killRecordedProcess(file) }
            for file in ["recv.err", "recv.status", "send.err"] { unlink(fixture.file(file)) }
            try fixture.expectOnly(["a", "b"])
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}

/// Seconds of a duration, for messages.
func secondsOf(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// Ends the process whose pid a test's shell wrote to `file` (a process the test started), and removes the file;
/// nothing when there is no file.
func killRecordedProcess(_ file: String) {
    if let pid = (try? String(contentsOfFile: file, encoding: .utf8)).flatMap({ Int32($0.filter(\.isNumber)) }) {
        kill(pid, SIGTERM)
    }
    unlink(file)
}
