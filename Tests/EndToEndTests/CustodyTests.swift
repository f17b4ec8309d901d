import Foundation
import Glibc
import MachineDescription
import SystemPackage
import Testing
import VMControl
import VMStream

extension MigrationEndToEndTests {
    /// Exactly one copy against every command a user can type after a send, two receivers racing for a name,
    /// and what a machine leaves behind when it ends.
    @Suite struct CustodyTests {
        /// A small guest sent warm to `a.vms`: A is migrated.
        func sentGuest(_ fixture: VMFixture) throws {
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let sent = try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(fixture.file("a.vms")))")
            #expect(sent.status == 0, "\(sent.standardError)")
        }

        /// A send interrupted while it blocks on a full pipe leaves a source that was paused before it as it was.
        @Test func anInterruptedSendOfAPausedSourceLeavesItPaused() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "16M")
            #expect(try fixture.vmctl(["pause", "a"]).status == 0)
            let pidFile = fixture.file("vmsend.pid")
            let readerPidFile = fixture.file("reader.pid")
            let errors = fixture.file("vmsend.err")
            defer { for file in [pidFile, readerPidFile] { killRecordedProcess(file) } }
            // The reader never reads: vmsend blocks once the pipe is full, until the interrupt.
            let started = try runShell(
                "(sh -c 'echo $$ > \(pidFile); exec \(fixture.command("vmsend", ["--warm", "a"]))' 2> \(shellQuoted(errors)) "
                    + "| sh -c 'echo $$ > \(readerPidFile); exec sleep 30' &) > /dev/null 2>&1")
            #expect(started.status == 0)
            try waitUntil("vmsend blocks on the full pipe") {
                guard let pid = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap({ Int32($0.filter(\.isNumber)) })
                else { return false }
                return blockedSystemCall(pid).map { [1, 20, 278].contains($0) } == true
            }
            killRecordedProcess(pidFile)
            try waitUntil("vmsend says why it stopped") { (try? fixture.text(of: errors))?.isEmpty == false }
            usleep(200_000)
            expectOneLine(
                try fixture.text(of: errors), "vmsend",
                saying: ["terminated; the source VM 'a' stays paused, as it was before the send"])
            #expect(try fixture.status("a").state == .paused)
            killRecordedProcess(readerPidFile)
            unlink(errors)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func aMigratedSourceIsNeitherResumedNorSentAgainUnlessForced() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try sentGuest(fixture)
            let status = try fixture.status("a")
            #expect(status.state == .migrated)
            let human = try fixture.vmctl(["status", "a"]).standardOutput
            #expect(human.contains("state:   migrated (stream \(status.migration?.stream ?? "?"), "), "\(human)")
            #expect(human.contains(", to file \(fixture.file("a.vms")))"), "\(human)")
            #expect(try fixture.vmctl(["list"]).standardOutput.contains("a     migrated"))

            let resume = try fixture.vmctl(["resume", "a"])
            expectOneLine(resume.standardError, "vmctl", saying: ["VM 'a' was migrated (stream ", "use vmctl resume --force"])
            #expect(resume.status == 1)
            let again = try runShell("\(fixture.command("vmsend", ["a"])) | cat > /dev/null")
            expectOneLine(again.standardError, "vmsend", saying: ["VM 'a' was migrated", "if that copy is gone, use --force"])
            #expect(try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > /dev/null; echo $?").standardOutput == "1\n")
            #expect(try fixture.vmctl(["pause", "a"]).status == 0)
            #expect(try fixture.status("a").state == .migrated, "a pause changes nothing")
            try fixture.expectOnly(["a"], plus: ["a.vms"])

            // The copy runs; the source stays paused until the user says otherwise.
            #expect(try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(fixture.file("a.vms")))").status == 0)
            #expect(try fixture.status("a").state == .migrated)
            try fixture.expectRunning("b")
            // Forced: the user says the copy is gone.
            #expect(try fixture.vmctl(["destroy", "b"]).status == 0)
            let forced = try runShell("\(fixture.command("vmsend", ["--warm", "--force", "a"])) > /dev/null")
            #expect(forced.status == 0, "\(forced.standardError)")
            #expect(try fixture.vmctl(["resume", "--force", "a"]).status == 0)
            try fixture.expectRunning("a")
            #expect(fixture.log("a").contains("resumed by vmctl pid "))
            try fixture.expectOnly(["a"], plus: ["a.vms"])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func destroySourceDestroysOnlyAfterTheFileReadsBackWhole() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let piped = try runShell(
                "exec 3>&1; { \(fixture.command("vmsend", ["--destroy-source", "a"])); echo $? >&3; } | cat > /dev/null")
            #expect(piped.standardOutput == "2\n", "a usage error")
            expectOneLine(piped.standardError, "vmsend", saying: ["--destroy-source needs standard output to be a file"])
            try fixture.expectRunning("a")
            let file = shellQuoted(fixture.file("a.vms"))
            let saved = try runShell("\(fixture.command("vmsend", ["--warm", "--destroy-source", "a"])) > \(file)")
            #expect(saved.status == 0)
            expectOneLine(
                saved.standardError, "vmsend", saying: ["VM 'a' was destroyed after its stream", "read back and verified"])
            #expect(fixture.files() == ["a.vms"], "\(fixture.files())")
            #expect(try runShell("\(fixture.command("vmrecv", ["a"])) < \(file)").status == 0, "the file restores")
            try fixture.expectRunning("a")
            // Appended after other bytes (>>): what is read back is this stream, from where it starts.
            let appended = fixture.file("appended.vms")
            #expect(FileManager.default.createFile(atPath: appended, contents: Data("not a stream\n".utf8)))
            let again = try runShell(
                "\(fixture.command("vmsend", ["--warm", "--destroy-source", "a"])) >> \(shellQuoted(appended))")
            #expect(again.status == 0, "\(again.standardError)")
            #expect(!fixture.exists("a.sock"), "destroyed after its own stream verified")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// Two receives of one name at once: one wins, the other is refused and touches nothing of the winner's.
        @Test func twoReceiversWithOneNameLeaveOneMachine() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try sentGuest(fixture)
            let file = shellQuoted(fixture.file("a.vms"))
            let receive = fixture.command("vmrecv", ["b"])
            let both = try runShell(
                "(\(receive) < \(file) 2> \(fixture.file("1.err")); echo $? > \(fixture.file("1.status"))) & "
                    + "(\(receive) < \(file) 2> \(fixture.file("2.err")); echo $? > \(fixture.file("2.status"))) & wait")
            #expect(both.status == 0)
            let statuses = try ["1", "2"].map { try String(contentsOfFile: fixture.file("\($0).status"), encoding: .utf8) }
            let errors = try ["1", "2"].map { try String(contentsOfFile: fixture.file("\($0).err"), encoding: .utf8) }
            #expect(statuses.sorted() == ["0\n", "1\n"], "\(statuses) \(errors)")
            let loser = errors[statuses[0] == "1\n" ? 0 : 1]
            expectOneLine(loser, "vmrecv", saying: ["a VM named 'b' already exists"])
            #expect(!loser.contains("vmrecv: vmrun:"), "no double prefix")
            try fixture.expectRunning("b")
            #expect(!fixture.log("b").contains("already exists"), "the loser wrote nothing into the winner's log")
            for name in ["1.err", "2.err", "1.status", "2.status"] { unlink(fixture.file(name)) }
            try fixture.expectOnly(["a", "b"], plus: ["a.vms"])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A machine's files go with it; a new machine of the same name starts with an empty console.
        @Test func aMachineLeavesNothingAndANewOneInheritsNothing() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("x", memory: "32M", workingSet: "4M")
            #expect(try fixture.vmctl(["console", "--input", "first machine\n", "x"]).status == 0)
            try waitUntil("x echoes its input") { try fixture.console("x").contains("rx: first machine") }
            #expect(try fixture.vmctl(["destroy", "x"]).status == 0)
            #expect(fixture.files().isEmpty, "\(fixture.files())")
            try fixture.startGuest("x", memory: "32M", workingSet: "4M")
            #expect(try !fixture.console("x").contains("first machine"))
            let kept = try fixture.vmctl(["destroy", "--keep-logs", "x"])
            #expect(kept.status == 0)
            #expect(kept.standardOutput.hasPrefix("kept: \(fixture.directory)/x.console."), "\(kept.standardOutput)")
            #expect(
                fixture.files().count == 2 && fixture.files().allSatisfy { $0.hasPrefix("x.console.") || $0.hasPrefix("x.log.") })
            let keptLog = try #require(fixture.files().first { $0.hasPrefix("x.log.") })
            #expect(try String(contentsOfFile: fixture.file(keptLog), encoding: .utf8).contains("destroyed by vmctl pid "))
        }

        /// A copy whose guest crashes as it starts is reported by vmrecv, shown as crashed, and never runs again.
        @Test func aCopyThatCrashesRightAfterResumingIsReported() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try sentGuest(fixture)
            // Without its top-level page table the guest's first instruction fetch faults: a triple fault.
            try StreamEditor.rewrite(
                try fixture.contents(of: "a.vms"), to: fixture.file("broken.vms"), editing: { _ in },
                page: { segment, page, bytes in if segment == 0 && page == 0x100 { bytes = [UInt8](repeating: 0, count: 4096) } })
            let result = try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(fixture.file("broken.vms")))")
            expectOneLine(result.standardError, "vmrecv", saying: ["VM 'b' crashed right after it was resumed", "triple fault"])
            #expect(result.status == 1)
            let status = try fixture.status("b")
            #expect(status.state == .crashed)
            #expect(try fixture.vmctl(["status", "b"]).standardOutput.contains("state:   crashed (vcpu"))
            #expect(fixture.log("b").contains("crashed: vcpu"))
            let resume = try fixture.vmctl(["resume", "--force", "b"])
            expectOneLine(resume.standardError, "vmctl", saying: ["has crashed", "cannot run again"])
            #expect(try fixture.status("a").state == .migrated, "no copy runs; the source stays migrated")
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
