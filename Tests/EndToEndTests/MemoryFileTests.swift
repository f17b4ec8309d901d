import Glibc
import SystemSupport
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

        /// A start that fails once the machine exists (here a `--kernel` that is no ELF file: it is read only after
        /// the memory is mapped and the vCPUs made) puts the file back: removed if this start created it, empty
        /// again if it was empty, and not a byte changed if it held the RAM.
        @Test func aStartThatFailsLatePutsTheFileBack() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            let created = SharedMemoryPath("late-new")
            let empty = SharedMemoryPath("late-empty")
            let full = SharedMemoryPath("late-full")
            defer {
                fixture.cleanUp()
                for file in [created, empty, full] { file.cleanUp() }
            }
            let kernel = fixture.file("not-a-kernel")
            let pattern = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
            for (path, bytes, size) in [
                (kernel, [UInt8](repeating: 0x90, count: 4096), 4096), (empty.path, [], 0),
                (full.path, pattern, 16 << 20),
            ] {
                let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
                #expect(fd >= 0 && write(fd, bytes, bytes.count) == bytes.count && ftruncate(fd, off_t(size)) == 0)
                close(fd)
            }
            for file in [created, empty, full] {
                let start = try fixture.vmrun(["--memory", "16M", "--memory-file", file.path, "--kernel", kernel, "x"])
                fixture.expectOneLineFailure(start, tool: "vmrun", saying: ["--kernel", "not a little-endian 64-bit ELF"])
                #expect(!fixture.exists("x.sock"), "no machine is left")
            }
            #expect(size(created.path) == nil, "the file this start created is gone")
            #expect(size(empty.path) == 0, "the empty file is empty again")
            #expect(size(full.path) == 16 << 20)
            let reader = open(full.path, O_RDONLY)
            var read = [UInt8](repeating: 0, count: pattern.count)
            #expect(reader >= 0 && Glibc.read(reader, &read, read.count) == read.count && read == pattern, "not a byte changed")
            close(reader)
            #expect((allocatedBytes(full.path) ?? .max) <= 2 << 20, "the hole stayed a hole")
        }

        /// On hugetlbfs the mount's own page size counts: 16 MiB is whole 2 MiB pages but not whole 1 GiB pages, and
        /// is refused in one line on a mount of 1 GiB pages, the file it created removed.
        @Test func aHugetlbfsMountCountsItsOwnPageSize() throws {
            try VMFixture.requireMachine()
            guard access(HugePagePool.folder(pageSize: 1 << 30), F_OK) == 0 else {
                try Test.cancel("this host has no 1 GiB huge pages")
            }
            guard geteuid() == 0, runShellQuietly("command -v unshare") else {
                try Test.cancel("mounting hugetlbfs in a mount namespace of its own needs root and unshare(1)")
            }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let mount = fixture.file("huge-1g")
            #expect(mkdir(mount, 0o700) == 0)
            defer { rmdir(mount) }  // before the fixture removes its folder
            let start = fixture.command("vmrun", ["--memory", "16M", "--memory-file", mount + "/ram", "x"])
            // The mount is seen by this shell and its children only, and goes with them: nothing to unmount.
            let script = """
                mount -t hugetlbfs -o pagesize=1G none \(shellQuoted(mount)) || exit 9
                \(start); status=$?
                [ ! -e \(shellQuoted(mount + "/ram")) ] || echo "the file is left" >&2
                exit $status
                """
            let result = try runShell("unshare --mount --propagation private sh -c \(shellQuoted(script))")
            fixture.expectOneLineFailure(result, tool: "vmrun", saying: ["--memory-file", "1G pages", "not a whole number"])
            #expect(!fixture.exists("x.sock"), "no machine is left")
        }

        /// A machine whose RAM is a file on 1 GiB pages runs, says so, and migrates live to small pages.
        @Test func aMachineOnOneGiBPagesRunsAndMigrates() throws {
            try VMFixture.requireMachine()
            guard geteuid() == 0, runShellQuietly("command -v unshare") else {
                try Test.cancel("mounting hugetlbfs in a mount namespace of its own needs root and unshare(1)")
            }
            guard access(HugePagePool.folder(pageSize: 1 << 30), F_OK) == 0 else {
                try Test.cancel("this host has no 1 GiB huge pages")
            }
            let grant = try MigrationEndToEndTests.HugePageTests.PoolGrant(pages: 1, pageSize: 1 << 30)
            defer { grant.release() }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }  // first: the machine goes, and its mount and page with it
            let mount = fixture.file("huge-1g")
            #expect(mkdir(mount, 0o700) == 0)
            defer { rmdir(mount) }  // before the fixture removes its folder
            // The machine's process keeps the mount namespace, and so the mount, for as long as it runs.
            let start = fixture.command(
                "vmrun", ["--memory", "1G", "--memory-file", mount + "/ram", "--guest-working-set", "16M", "a"])
            let script = "mount -t hugetlbfs -o pagesize=1G none \(shellQuoted(mount)) && \(start)"
            let started = try runShell("unshare --mount --propagation private sh -c \(shellQuoted(script))")
            #expect(started.status == 0, "\(started.standardError)")
            let source = try fixture.status("a")
            #expect(source.hugePages == true && source.hugePageSize == 1 << 30, "on 1 GiB pages: \(source)")

            let live = try runShell("\(fixture.command("vmsend", ["a"])) | \(fixture.command("vmrecv", ["b"]))")
            #expect(live.status == 0, "\(live.standardError)")
            let copy = try fixture.expectContinues("b", from: try fixture.status("a"))
            #expect(copy.hugePageSize == nil, "the copy is on small pages")
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
