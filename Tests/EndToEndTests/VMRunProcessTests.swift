import Glibc
import MachineDescription
import Testing
import VMControl

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// vmrun and vmctl as a user runs them: real processes, a temporary run directory.
@Suite struct VMRunProcessTests {
    @Test func anUnknownVMIsAnError() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        for command in ["status", "pause", "resume", "destroy", "console"] {
            let result = try fixture.vmctl([command, "nosuch"])
            #expect(result.status == 1)
            #expect(result.standardError == "vmctl: no VM named 'nosuch' (no socket at \(fixture.directory)/nosuch.sock)\n")
        }
    }

    @Test func badFlagsAreUsageErrors() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        #expect(try fixture.vmrun(["--bogus", "x"]).status == 2)
        #expect(try fixture.vmrun(["--cpus", "0", "x"]).status == 2)
        #expect(try fixture.vmrun(["--cpus", "two", "x"]).status == 2)
        #expect(try fixture.vmrun([]).status == 2)
        #expect(try fixture.vmctl(["frobnicate", "x"]).status == 2)
        #expect(try fixture.vmctl(["status"]).status == 2)
        #expect(try runProcess(Products.path("vmrun"), ["--help"]).status == 0)
    }

    @Test func nonsenseIsAOneLineError() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        // Values wrong whatever the host are usage errors (2); what this host cannot do, or bad input, fails (1).
        let cases: [([String], Int32, String)] = [
            (
                ["--memory", "12Q", "x"], 2,
                "vmrun: invalid size '12Q': expected a number with an optional unit K, M, G or T, e.g. 512M or 4.5G\n"
            ),
            (["--memory", "1000T", "x"], 1, "is more than this host has"),
            (["--memory", "1K", "x"], 2, "vmrun: --memory 1K is too small: the guest needs at least 4M\n"),
            (["--memory", "3Q", "x"], 2, "vmrun: invalid size '3Q'"),
            (["--cpus", "-1", "x"], 2, "vmrun: --cpus must be 1 to 255, not -1\n"),
            (["--guest-dirty-rate", "fast", "x"], 2, "vmrun: invalid rate 'fast'"),
            (["--guest-working-set", "1G", "--memory", "64M", "x"], 2, "is larger than the guest's memory (64 MiB)"),
            (["bad/name"], 2, "vmrun: invalid VM name 'bad/name'"),
            (["--bogus", "x"], 2, "vmrun: unknown option '--bogus'"),
            (["--memory-image", "/nonexistent/image", "x"], 1, "vmrun: cannot read memory image /nonexistent/image"),
            (
                ["--memory-file", "/nonexistent/ram", "x"], 1,
                "vmrun: --memory-file /nonexistent/ram: cannot create it in /nonexistent"
            ),
            (["--memory-file", "/dev/shm/x", "--incoming", "x"], 2, "--memory-file is for a VM vmrun starts"),
            (["--incoming", "x"], 1, "vmrun: --incoming needs a MachineConfig JSON document on standard input; got nothing\n"),
        ]
        for (arguments, status, message) in cases {
            let result = try fixture.vmrun(arguments)
            #expect(result.status == status, "\(arguments): \(result.standardError)")
            #expect(result.standardError.contains(message), "\(arguments): \(result.standardError)")
            #expect(result.standardError.split(separator: "\n").count == 1, "\(arguments): \(result.standardError)")
        }
        let notJSON = try fixture.vmrun(["--incoming", "x"], input: Array("not json".utf8))
        #expect(notJSON.standardError == "vmrun: --incoming: standard input is not a MachineConfig JSON document\n")
        #expect(!fixture.exists("x.sock"))
    }

    @Test func aStaleSocketIsNotAVM() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        close(try UnixSocket.listen(path: fixture.directory + "/gone.sock"))
        let status = try fixture.vmctl(["status", "gone"])
        #expect(status.status == 1)
        #expect(status.standardError.contains("no VM named 'gone' (its vmrun is gone; stale socket at"))
        let list = try fixture.vmctl(["list"])
        #expect(list.status == 0)
        #expect(list.standardOutput == "NAME  STATE  VCPUS  MEMORY  PID\n")
    }

    @Test func aVMStartsPausesResumesAndIsDestroyedWithoutTrace() throws {
        try VMFixture.requireMachine()
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        let started = try fixture.vmrun(["--cpus", "2", "--memory", "64M", "demo"])
        #expect(started.status == 0, "\(started.standardError)")
        #expect(started.standardOutput.contains("vmctl --run-dir \(fixture.directory) status demo"))
        let pid = try #require(VMFixture.startedPid(started.standardOutput))
        #expect(fixture.exists("demo.sock"))

        var status = try fixture.status("demo")
        #expect(status.state == .running)
        #expect(status.vcpus.count == 2)
        #expect(status.memorySize == 64 << 20)
        #expect(status.pid == pid)
        try waitUntil("ticks rise on both vCPUs") { try fixture.status("demo").vcpus.allSatisfy { $0.tick > 0 } }

        #expect(try fixture.vmctl(["pause", "demo"]).status == 0)
        status = try fixture.status("demo")
        #expect(status.state == .paused)
        usleep(300_000)
        let paused = try fixture.status("demo")
        #expect(paused.vcpus.map(\.tick) == status.vcpus.map(\.tick))

        #expect(try fixture.vmctl(["resume", "demo"]).status == 0)
        try waitUntil("ticks continue from where they stopped") {
            zip(try fixture.status("demo").vcpus, paused.vcpus).allSatisfy { $0.tick > $1.tick }
        }
        #expect(try fixture.status("demo").vcpus.allSatisfy { $0.checksFailed == 0 })

        let human = try fixture.vmctl(["status", "demo"])
        #expect(human.standardOutput.contains("state:   running"))
        let destroyed = try fixture.vmctl(["destroy", "demo"])
        #expect(destroyed.status == 0, "\(destroyed.standardError)")
        #expect(!fixture.isAlive(pid))
        #expect(!fixture.exists("demo.sock"))
    }

    @Test func twoVMsRunAtOnceAndATakenNameIsRefused() throws {
        try VMFixture.requireMachine()
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        #expect(try fixture.vmrun(["--memory", "32M", "one"]).status == 0)
        let two = try fixture.vmrun(["--memory", "32M", "--paused", "two"])
        #expect(two.status == 0)
        let list = try fixture.vmctl(["list"]).standardOutput.split(separator: "\n")
        #expect(list.count == 3)
        #expect(list.dropFirst().map { $0.split(separator: " ").first } == ["one", "two"])
        #expect(try fixture.status("two").state == .paused)

        let again = try fixture.vmrun(["--memory", "32M", "one"])
        #expect(again.status == 1)
        let owner = try fixture.status("one").pid
        #expect(again.standardError == "vmrun: a VM named 'one' already exists (running, pid \(owner))\n")
        #expect(try fixture.status("one").state == .running)

        #expect(try fixture.vmctl(["destroy", "one"]).status == 0)
        #expect(try fixture.vmctl(["destroy", "two"]).status == 0)
        #expect(!fixture.exists("one.sock") && !fixture.exists("two.sock"))
    }

    @Test func sigtermDestroysTheVM() throws {
        try VMFixture.requireMachine()
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        let started = try fixture.vmrun(["--memory", "32M", "term"])
        let pid = try #require(VMFixture.startedPid(started.standardOutput))
        kill(pid, SIGTERM)
        try waitUntil("vmrun exits on SIGTERM") { !fixture.isAlive(pid) }
        #expect(!fixture.exists("term.sock"))
    }

    @Test func consoleShowsOutputAndTakesInput() throws {
        try VMFixture.requireMachine()
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        #expect(try fixture.vmrun(["--memory", "32M", "talk"]).status == 0)
        try waitUntil("the guest writes to its console") { try !fixture.vmctl(["console", "talk"]).standardOutput.isEmpty }
        #expect(try fixture.vmctl(["console", "--input", "hello\n", "talk"]).status == 0)
        #expect(try fixture.vmctl(["destroy", "talk"]).status == 0)
    }

    @Test func anIncomingVMWhoseReceiverLeavesIsDestroyed() throws {
        try VMFixture.requireMachine()
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        #expect(try fixture.vmrun(["--memory", "32M", "source"]).status == 0)
        let source = try ControlClient.connect(name: "source", runDirectory: RunDirectory(path: fixture.directory))
        let config = try source.describe().config
        source.close()
        let encoder = JSONEncoder()
        let started = try fixture.vmrun(["--incoming", "copy"], input: Array(try encoder.encode(config)))
        #expect(started.status == 0, "\(started.standardError)")
        let pid = try #require(VMFixture.startedPid(started.standardOutput))
        #expect(try fixture.status("copy").state == .incoming)
        #expect(try fixture.status("copy").memorySize == config.memorySize)

        let owner = try ControlClient.connect(
            name: "copy", runDirectory: RunDirectory(path: fixture.directory), ownIncoming: true)
        owner.close()
        try waitUntil("vmrun destroys the abandoned incoming VM") { !fixture.isAlive(pid) }
        #expect(!fixture.exists("copy.sock"))
        #expect(try fixture.vmctl(["destroy", "source"]).status == 0)
    }

    /// Polls `condition` for up to 20 s.
    private func waitUntil(_ what: String, _ condition: () throws -> Bool) throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if try condition() { return }
            usleep(50_000)
        }
        Issue.record("timed out waiting until \(what)")
    }
}

/// Usage errors look like failures: one line, `tool: …`, exit 2; help only when asked for.
@Suite struct UsageErrorTests {
    @Test(arguments: [
        ("vmsend", ["--downtime", "-5", "x"], "vmsend: --downtime must be 0 or more milliseconds, not -5"),
        ("vmsend", ["-c", "zstd", "x"], "vmsend: the value 'zstd' is invalid for '-c <method>'"),
        ("vmsend", ["bad/name"], "vmsend: invalid VM name 'bad/name'"),
        ("vmrecv", [], "vmrecv: missing expected argument '<name>'"),
        ("vmrecv", ["--bogus", "x"], "vmrecv: unknown option '--bogus'"),
        ("vmctl", [], "vmctl: missing subcommand: list, status, pause, resume, destroy or console"),
        ("vmctl", ["status", "a/b"], "vmctl: invalid VM name 'a/b'"),
        ("vmstream", [], "vmstream: missing subcommand: dump or sample"),
        ("vmrun", ["--memory", "3Q", "x"], "vmrun: invalid size '3Q'"),
    ])
    func usageErrorsAreOneLineAndExitTwo(tool: String, arguments: [String], line: String) throws {
        let result = try runProcess(Products.path(tool), arguments)
        #expect(result.status == 2, "\(result.standardError)")
        #expect(result.standardError.hasPrefix(line), "\(result.standardError)")
        #expect(result.standardError.split(separator: "\n").count == 1, "\(result.standardError)")
        #expect(result.standardOutput.isEmpty)
    }
}
