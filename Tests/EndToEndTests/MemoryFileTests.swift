import Glibc
import Testing

extension MigrationEndToEndTests {
    /// Guest RAM on a file the user names (`vmrun --memory-file`): the guest's writes land in it, a migration reads
    /// from it, a paused machine that is sent leaves it as it was, and a file that cannot be the RAM is refused in
    /// one line, with the file left as it was found.
    @Suite struct MemoryFileTests {
        /// A path in /dev/shm (the file must be on tmpfs; the fixture's folder may not be), removed by `cleanUp`.
        final class SharedMemoryPath {
            let path: String
            init(_ name: String) { path = "/dev/shm/vmrun-e2e-\(getpid())-\(name)" }
            func cleanUp() { unlink(path) }
        }

        /// Size and bytes holding data (not holes) of `path`; nil if there is no such file.
        func extent(_ path: String) -> (size: UInt64, allocated: UInt64)? {
            var info = stat()
            return stat(path, &info) == 0 ? (UInt64(info.st_size), UInt64(info.st_blocks) * 512) : nil
        }

        func size(_ path: String) -> UInt64? { extent(path)?.size }
        func allocatedBytes(_ path: String) -> UInt64? { extent(path)?.allocated }

        @Test func theGuestWritesTheFileAndMigratesLiveFromIt() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            let ram = SharedMemoryPath("live")
            defer {
                fixture.cleanUp()
                ram.cleanUp()
            }
            let source = try fixture.startGuest("a", memory: "64M", workingSet: "16M", extra: ["--memory-file", ram.path])
            #expect(size(ram.path) == 64 << 20, "created at the guest's size")
            #expect((allocatedBytes(ram.path) ?? 0) >= 1 << 20, "the guest's writes land in the file")

            let second = try fixture.vmrun(["--memory", "64M", "--memory-file", ram.path, "b"])
            fixture.expectOneLineFailure(second, tool: "vmrun", saying: ["in use by another process"])

            let live = try runShell("\(fixture.command("vmsend", ["a"])) | \(fixture.command("vmrecv", ["b"]))")
            #expect(live.status == 0, "\(live.standardError)")
            #expect(try fixture.status("a").state == .migrated)
            try fixture.expectContinues("b", from: source)
            try fixture.destroyAllAndExpectNothingLeft()
            #expect(size(ram.path) == 64 << 20, "the file outlives the machine")
        }

        @Test func aPausedMachineThatIsSentLeavesItsFileAsItWas() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            let ram = SharedMemoryPath("paused")
            defer {
                fixture.cleanUp()
                ram.cleanUp()
            }
            // A pattern over the first 8 MiB, where the bundled guest's boot area would go, and a hole after it.
            let pattern = (0..<(8 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 12) }
            let fd = open(ram.path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            #expect(fd >= 0 && write(fd, pattern, pattern.count) == pattern.count && ftruncate(fd, 32 << 20) == 0)
            close(fd)
            let started = try fixture.vmrun(["--memory", "32M", "--memory-file", ram.path, "--paused", "x"])
            #expect(started.status == 0, "\(started.standardError)")

            let warm = try runShell(
                "\(fixture.command("vmsend", ["--warm", "x"])) | \(fixture.command("vmrecv", ["--paused", "y"]))")
            #expect(warm.status == 0, "\(warm.standardError)")
            try fixture.destroyAllAndExpectNothingLeft()
            var read = [UInt8](repeating: 0, count: pattern.count)
            let reader = open(ram.path, O_RDONLY)
            #expect(reader >= 0 && Glibc.read(reader, &read, read.count) == read.count)
            close(reader)
            #expect(read == pattern, "not a byte changed")
            #expect((allocatedBytes(ram.path) ?? .max) <= 9 << 20, "the hole stayed a hole")
        }

        @Test func aFileThatCannotBeTheRAMIsRefusedInOneLineAndLeftAsItWas() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            let small = SharedMemoryPath("small")
            defer {
                fixture.cleanUp()
                small.cleanUp()
            }
            let fd = open(small.path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            #expect(fd >= 0 && write(fd, [1, 2, 3], 3) == 3)
            close(fd)
            let tooSmall = try fixture.vmrun(["--memory", "16M", "--memory-file", small.path, "x"])
            fixture.expectOneLineFailure(tooSmall, tool: "vmrun", saying: ["--memory-file", "fewer than --memory"])
            #expect(size(small.path) == 3, "never grown over")

            let folder = try fixture.vmrun(["--memory", "16M", "--memory-file", fixture.directory, "x"])
            fixture.expectOneLineFailure(folder, tool: "vmrun", saying: ["not a regular file"])

            // The fixture's folder is not on tmpfs here: the new file is refused, in the VM process, and removed.
            let onDisk = fixture.file("ram.img")
            let type = try runShell("stat -f -c %T \(shellQuoted(fixture.directory))").standardOutput
            if !type.hasPrefix("tmpfs") {
                let refused = try fixture.vmrun(["--memory", "16M", "--memory-file", onDisk, "x"])
                fixture.expectOneLineFailure(refused, tool: "vmrun", saying: ["not on tmpfs or hugetlbfs"])
                #expect(size(onDisk) == nil, "the file it created is gone")
            }

            let both = try fixture.vmrun(["--memory", "16M", "--memory-file", onDisk, "--hugepages", "x"])
            #expect(both.status == 2 && both.standardError.contains("exclude each other"), "\(both.standardError)")
            let image = try fixture.vmrun([
                "--memory", "16M", "--memory-file", onDisk, "--memory-image", small.path, "x",
            ])
            #expect(image.status == 2 && image.standardError.contains("--memory-image"), "\(image.standardError)")
            #expect(!fixture.exists("x.sock") && size(onDisk) == nil, "nothing created")
        }
    }
}
