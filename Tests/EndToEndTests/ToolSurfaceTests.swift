import Glibc
import MachineDescription
import Testing
import VMControl
@_spi(Fuzzing) import VMStream

/// What every tool offers a user before any VM is involved: its version, its long flags, and one line that names
/// the path and the permission when it cannot use a run directory or a device.
@Suite struct ToolSurfaceTests {
    static let tools = ["vmrun", "vmctl", "vmsend", "vmrecv", "vmstream"]

    @Test(arguments: tools)
    func versionIsTheReleaseAStreamRecordsAndTheFormatVersion(tool: String) throws {
        let result = try runProcess(Products.path(tool), ["--version"])
        #expect(result.status == 0)
        #expect(result.standardOutput == "\(tool) \(Release.version) (stream format \(StreamFormat.version))\n")
        #expect(result.standardError.isEmpty)
    }

    @Test func aStreamRecordsTheVersionTheToolsPrint() throws {
        let result = try runShell(
            "\(shellQuoted(Products.path("vmstream"))) sample --size 1M | \(shellQuoted(Products.path("vmstream"))) dump")
        #expect(result.standardOutput.contains("\ttool = vmstream \(Release.version)\n"), "\(result.standardOutput)")
    }

    /// Every short flag has a long spelling, and compression is spelled the same in both tools that write streams.
    @Test(arguments: [
        (
            "vmsend",
            [
                "-c", "--compress", "-n", "--dry-run", "-v", "--verbose", "-P", "--parsable", "-s", "--resumable", "-t",
                "--resume-token",
            ]
        ),
        (
            "vmrecv",
            [
                "-n", "--dry-run", "-v", "--verbose", "-P", "--parsable", "-F", "--force", "-s", "--resumable", "-A", "--abort",
            ]
        ),
        ("vmstream", ["dump", "-v", "--verbose"]), ("vmstream", ["sample", "-c", "--compress"]),
        ("vmctl", ["console", "-f", "--follow"]),
    ])
    func shortFlagsHaveLongOnes(tool: String, help: [String]) throws {
        let subcommand = help.first.map { $0.hasPrefix("-") ? [] : [$0] } ?? []
        let result = try runProcess(Products.path(tool), subcommand + ["--help"])
        #expect(result.status == 0)
        let flags = help.filter { $0.hasPrefix("-") }
        for pair in stride(from: 0, to: flags.count, by: 2) {
            #expect(result.standardOutput.contains("\(flags[pair]), \(flags[pair + 1])"), "\(tool): \(result.standardOutput)")
        }
    }

    @Test func anUnknownStreamVersionIsOneLineNamingBothVersions() throws {
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        #expect(
            try runShell("\(shellQuoted(Products.path("vmstream"))) sample --size 1M > \(shellQuoted(fixture.file("v1.vms")))")
                .status == 0)
        var stream = try fixture.contents(of: "v1.vms")
        stream[8] = 2  // the version, a u32 after the magic; the header checksum is made right again
        try fixture.write(ChecksumRepair.repair(stream), to: "v2.vms")
        let expected = "unsupported stream version 2 (this reader understands version \(StreamFormat.version))"
        for tool in ["vmstream dump", "vmrecv -n copy"] {
            let words = tool.split(separator: " ").map(String.init)
            let command = ([Products.path(words[0])] + words.dropFirst()).map(shellQuoted).joined(separator: " ")
            let result = try runShell("\(command) < \(shellQuoted(fixture.file("v2.vms")))")
            fixture.expectOneLineFailure(result, tool: words[0], saying: [expected])
        }
    }

    @Test func aMissingRunDirectoryIsNamed() throws {
        let missing = "/tmp/vmsend-no-such-run-dir-\(getpid())"
        let send = try runProcess(Products.path("vmsend"), ["--run-dir", missing, "a"])
        #expect(send.status == 1)
        #expect(send.standardError == "vmsend: no VM named 'a': the run directory \(missing) does not exist (vmrun creates it)\n")
        let list = try runProcess(Products.path("vmctl"), ["--run-dir", missing, "list"])
        #expect(list.status == 1)
        #expect(
            list.standardError == "vmctl: no run directory \(missing): no VM has run with it (vmrun creates it; see --run-dir)\n")
    }

    /// Run as nobody: each tool says which path it cannot use and which permission it lacks.
    @Test func aMissingPermissionNamesThePathAndThePermission() throws {
        guard getuid() == 0 else { try Test.cancel("needs root to run the tools as another user") }
        guard access("/usr/bin/setpriv", X_OK) == 0 else { try Test.cancel("no setpriv(1) to drop privileges") }
        let fixture = VMFixture()  // mode 0700, root's: nobody can neither list nor search it
        defer { fixture.cleanUp() }
        try fixture.write([], to: "a.sock")
        let asNobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        func run(_ tool: String, _ arguments: [String], runDirectory: String? = nil) throws -> ProcessResult {
            try runProcess(
                asNobody[0],
                Array(asNobody.dropFirst()) + [Products.path(tool), "--run-dir", runDirectory ?? fixture.directory] + arguments)
        }
        let owner = "(owner root, group root, mode 0700)"
        let list = try run("vmctl", ["list"])
        #expect(
            list.standardError
                == "vmctl: cannot list run directory \(fixture.directory): permission denied: needs read and search permission on \(fixture.directory) \(owner)\n"
        )
        let send = try run("vmsend", ["a"])
        #expect(
            send.standardError
                == "vmsend: cannot reach VM 'a': permission denied: needs search permission on \(fixture.directory) \(owner)\n")
        let inside = fixture.file("vms")
        let start = try run("vmrun", ["--memory", "16M", "b"], runDirectory: inside)
        #expect(
            start.standardError
                == "vmrun: cannot create run directory \(inside): permission denied: needs write and search permission on \(fixture.directory) \(owner)\n"
        )
        #expect(list.status == 1 && send.status == 1 && start.status == 1)
        var kvmDevice = stat()
        if stat("/dev/kvm", &kvmDevice) == 0 && kvmDevice.st_mode & 0o006 != 0o006 {
            let kvm = try run("vmrun", ["--foreground", "--memory", "16M", "c"], runDirectory: "/tmp/vmsend-nobody-\(getpid())")
            defer { rmdir("/tmp/vmsend-nobody-\(getpid())") }
            #expect(kvm.status == 1)
            #expect(
                kvm.standardError.hasPrefix(
                    "vmrun: cannot open /dev/kvm: permission denied: needs read and write permission on /dev/kvm ("),
                "\(kvm.standardError)")
        }
    }
}

extension MigrationEndToEndTests {
    @Suite struct ChunkVersionTests {
        /// A device's state chunk of a version this vmrun does not know: refused in one line naming both versions.
        @Test func anUnknownStateChunkVersionIsOneLineNamingBothVersions() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let file = fixture.file("a.vms")
            #expect(try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(file))").status == 0)
            var stream = try fixture.contents(of: "a.vms")
            let reader = StreamReader(bytes: stream)
            var chunk: (offset: Int, name: String, version: UInt32)?
            while let record = try reader.next(into: DiscardingPageSink()) {
                if case .deviceState(let state) = record, chunk == nil, let info = reader.lastRecord {
                    chunk = (Int(info.offset), state.name, state.version)
                }
            }
            let found = try #require(chunk)
            // A chunk's payload opens with its version, a u32 after the 16-byte record header.
            stream[found.offset + 16] = 99
            try fixture.write(ChecksumRepair.repair(stream), to: "b.vms")
            let result = try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(fixture.file("b.vms")))")
            fixture.expectOneLineFailure(
                result, tool: "vmrecv", saying: ["state chunk \(found.name): version 99", "understands \(found.version)"])
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
