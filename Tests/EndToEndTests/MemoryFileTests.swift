import Glibc
import Testing

extension MigrationEndToEndTests {
    /// Guest RAM on a file the user names (`vmrun --memory-file`): the guest's writes land in it, a migration reads
    /// from it, a paused machine that is sent leaves it as it was, and a file that cannot be the RAM is refused.
    @Suite struct MemoryFileTests {
        /// Bytes of `path` that hold data (not holes).
        func allocatedBytes(_ path: String) -> UInt64 {
            var info = stat()
            return stat(path, &info) == 0 ? UInt64(info.st_blocks) * 512 : 0
        }

        @Test func theGuestWritesTheFileAndMigratesLiveFromIt() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let path = fixture.file("ram.img")
            let source = try fixture.startGuest("a", memory: "64M", workingSet: "16M", extra: ["--memory-file", path])
            #expect(fixture.size(of: "ram.img") == 64 << 20, "created at the guest's size")
            #expect(allocatedBytes(path) >= 1 << 20, "the guest's writes land in the file")

            let live = try runShell("\(fixture.command("vmsend", ["a"])) | \(fixture.command("vmrecv", ["b"]))")
            #expect(live.status == 0, "\(live.standardError)")
            #expect(try fixture.status("a").state == .migrated)
            try fixture.expectContinues("b", from: source)
            try fixture.destroyAllAndExpectNothingLeft()
            #expect(fixture.size(of: "ram.img") == 64 << 20, "the file outlives the machine")
        }

        @Test func aPausedMachineThatIsSentLeavesItsFileAsItWas() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            // A pattern over the first 8 MiB, where the bundled guest's boot area would go, and a hole after it.
            let pattern = (0..<(8 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 12) }
            let path = fixture.file("ram.img")
            try fixture.write(pattern, to: "ram.img")
            let started = try fixture.vmrun(["--memory", "32M", "--memory-file", path, "--paused", "x"])
            #expect(started.status == 0, "\(started.standardError)")
            #expect(fixture.size(of: "ram.img") == 32 << 20, "grown to --memory")

            let warm = try runShell(
                "\(fixture.command("vmsend", ["--warm", "x"])) | \(fixture.command("vmrecv", ["--paused", "y"]))")
            #expect(warm.status == 0, "\(warm.standardError)")
            try fixture.destroyAllAndExpectNothingLeft()
            #expect(try fixture.contents(of: "ram.img").prefix(8 << 20).elementsEqual(pattern), "not a byte changed")
            #expect(allocatedBytes(path) <= 9 << 20, "the growth stayed a hole")
        }

        @Test func aFileThatCannotBeTheRAMIsRefusedInOneLine() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.write([UInt8](repeating: 1, count: (16 << 20) + 4096), to: "big.img")
            let tooBig = try fixture.vmrun(["--memory", "16M", "--memory-file", fixture.file("big.img"), "x"])
            fixture.expectOneLineFailure(tooBig, tool: "vmrun", saying: ["--memory-file", "more than --memory"])
            let folder = try fixture.vmrun(["--memory", "16M", "--memory-file", fixture.directory, "x"])
            fixture.expectOneLineFailure(folder, tool: "vmrun", saying: ["not a regular file"])
            let both = try fixture.vmrun(["--memory", "16M", "--memory-file", fixture.file("r.img"), "--hugepages", "x"])
            #expect(both.status == 2, "\(both.standardError)")
            #expect(both.standardError.contains("exclude each other"), "\(both.standardError)")
            let image = try fixture.vmrun([
                "--memory", "16M", "--memory-file", fixture.file("r.img"), "--memory-image", fixture.file("big.img"), "x",
            ])
            #expect(image.status == 2, "\(image.standardError)")
            #expect(!fixture.exists("x.sock") && !fixture.exists("r.img"), "nothing created")
        }
    }
}
