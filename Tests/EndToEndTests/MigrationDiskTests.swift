import Glibc
import MachineDescription
import Testing
import VMControl

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

extension MigrationEndToEndTests {
    /// Disks travel in the stream: the bundled guest writes and checks its disk, and a copy must find every block.
    @Suite struct DiskTests {
        /// Starts `name` with a new sparse image `name.img` of `size` as its disk, writing it at `rate`; waits until the
        /// guest has written and checked blocks.
        @discardableResult
        func startGuestWithDisk(
            _ fixture: VMFixture, _ name: String, size: String = "64M", rate: String = "4M/s", extra: [String] = []
        ) throws -> MachineStatus {
            let image = fixture.file("\(name).img")
            #expect(truncate(image, off_t(try ByteSize.parse(size))) == 0 || createImage(image, size: size))
            try fixture.startGuest(
                name, memory: "128M", workingSet: "16M", extra: ["--disk", image, "--guest-disk-rate", rate] + extra)
            var status = try fixture.status(name)
            try waitUntil("'\(name)' writes and checks its disk") {
                status = try fixture.status(name)
                return (status.disk?.writes ?? 0) > 50 && (status.disk?.checksPassed ?? 0) > 10
            }
            return status
        }

        func createImage(_ path: String, size: String) -> Bool {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            defer { close(fd) }
            return fd >= 0 && ftruncate(fd, off_t((try? ByteSize.parse(size)) ?? 0)) == 0
        }

        func contents(_ path: String) -> Data { FileManager.default.contents(atPath: path) ?? Data() }

        func allocatedBytes(_ path: String) -> Int {
            var info = stat()
            return stat(path, &info) == 0 ? Int(info.st_blocks) * 512 : -1
        }

        /// Waits until `name` passed `passes` more disk checks than `before`, and none failed.
        func expectDiskChecksContinue(
            _ fixture: VMFixture, _ name: String, after before: MachineStatus, passes: UInt64 = 20,
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            var status = try fixture.status(name)
            #expect(
                (status.disk?.writes ?? 0) >= (before.disk?.writes ?? 0), "disk counters restarted",
                sourceLocation: sourceLocation)
            try waitUntil("'\(name)' passes \(passes) new disk checks") {
                status = try fixture.status(name)
                return (status.disk?.checksPassed ?? 0) + (status.disk?.checksFailed ?? 0) >= (before.disk?.checksPassed ?? 0)
                    + passes
            }
            #expect(status.disk?.checksFailed == 0, "\(String(describing: status.disk))", sourceLocation: sourceLocation)
        }

        /// Live, while the guest writes its disk: paused at both ends, the copy's image equals the source's block for
        /// block, holes stayed holes, and once resumed the copy's disk checks pass.
        @Test func aLiveMigrationCarriesTheDiskTheGuestWrites() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try startGuestWithDisk(fixture, "a")
            let send = fixture.command("vmsend", ["-P", "a"])
            let receive = fixture.command("vmrecv", ["--paused", "b"])
            let result = try runShell("\(send) | \(receive)")
            #expect(result.status == 0, "\(result.standardError)")
            let rounds = result.standardError.split(separator: "\n").filter { $0.hasPrefix("round\t") }.count
            #expect(rounds >= 1, "the guest wrote its disk during live rounds: \(result.standardError)")
            let source = try fixture.status("a")
            #expect(source.state == .migrated)
            let sourceImage = contents(fixture.file("a.img"))
            #expect(
                sourceImage == contents(fixture.file("b-vda.img")),
                "the copy's image differs from the source's at the switch-over")
            #expect(
                allocatedBytes(fixture.file("b-vda.img")) <= allocatedBytes(fixture.file("a.img")) + (1 << 20), "holes stay holes"
            )
            #expect(allocatedBytes(fixture.file("b-vda.img")) < sourceImage.count / 2)
            #expect(try fixture.vmctl(["resume", "b"]).status == 0)
            try fixture.expectContinues("b", from: source)
            try expectDiskChecksContinue(fixture, "b", after: source)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// Warm through a pipe and cold through a file (which `vmstream dump` reads): the disk arrives whole.
        @Test func warmAndColdCarryTheDisk() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try startGuestWithDisk(fixture, "a")
            let warm = try runShell(
                "\(fixture.command("vmsend", ["--warm", "a"])) | \(fixture.command("vmrecv", ["--paused", "b"]))")
            #expect(warm.status == 0, "\(warm.standardError)")
            #expect(contents(fixture.file("a.img")) == contents(fixture.file("b-vda.img")))
            let source = try fixture.status("a")
            #expect(try fixture.vmctl(["resume", "b"]).status == 0)
            try expectDiskChecksContinue(fixture, "b", after: source)

            // Cold: the copy saves itself to a file, and that file restores a third machine.
            let file = fixture.file("b.vms")
            let save = try runShell("\(fixture.command("vmsend", ["--warm", "b"])) > \(shellQuoted(file))")
            #expect(save.status == 0, "\(save.standardError)")
            let dump = try runProcess(Products.path("vmstream"), ["dump"], input: Array(contents(file)))
            #expect(
                dump.status == 0 && dump.standardOutput.contains("disk 0 = vda") && dump.standardOutput.contains("Disk blocks = ")
            )
            let saved = try fixture.status("b")
            let restore = try runShell("\(fixture.command("vmrecv", ["c"])) < \(shellQuoted(file))")
            #expect(restore.status == 0, "\(restore.standardError)")
            try expectDiskChecksContinue(fixture, "c", after: saved)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// The final round's disk blocks dropped on purpose: the receiver's check of the disk's fingerprint refuses
        /// the copy before it runs, or, if the dropped blocks missed the sample, the copy reads one and its check fails.
        @Test func aStaleDiskBlockIsCaught() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try startGuestWithDisk(fixture, "a", size: "16M", rate: "8M/s")
            let send =
                "VMSEND_TEST_FAULT=drop-final-dirty-blocks "
                + fixture.command("vmsend", ["--no-throttle", "--max-rounds", "3", "a"])
            let result = try runShell("\(send) | \(fixture.command("vmrecv", ["b"]))")
            let dropped = result.standardError.split(separator: "\n").first { $0.contains("test fault: ") }
                .flatMap { Int($0.split(separator: " ")[3]) }
            #expect(dropped != nil, "\(result.standardError)")
            if result.status == 0 && dropped == 0 {
                print("the guest wrote no disk block in the final round: nothing was lost")
            } else if result.status == 0 {
                // The guest reads back the block it wrote last before each burst: after the switch-over that is one of
                // the dropped blocks.
                try waitUntil("the copy reports a failed disk check", timeout: .seconds(30)) {
                    (try fixture.status("b").disk?.checksFailed ?? 0) > 0
                }
                #expect(try fixture.console("b").contains("disk check FAIL"))
            } else {
                #expect(result.standardError.contains("does not hold the sender's disk"), "\(result.standardError)")
                #expect(!fixture.sockets().contains("b.sock"), "a refused copy is not left behind")
                #expect(!FileManager.default.fileExists(atPath: fixture.file("b-vda.img")))
            }
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// Blocks the guest wrote, lost in the copy where the fingerprint does not look: the guest's own check fails.
        @Test func aLostDiskBlockFailsTheGuestsCheck() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try startGuestWithDisk(fixture, "a", size: "16M", rate: "8M/s")
            let result = try runShell(
                "\(fixture.command("vmsend", ["--warm", "a"])) | \(fixture.command("vmrecv", ["--paused", "b"]))")
            #expect(result.status == 0, "\(result.standardError)")
            // Zero every block the fingerprint does not sample (it reads block i * count / 256).
            let image = fixture.file("b-vda.img")
            let blocks = 4096
            let sampled = Set((0...256).map { $0 * blocks / 256 })
            let fd = open(image, O_WRONLY)
            let zeros = [UInt8](repeating: 0, count: 4096)
            for block in 0..<blocks where !sampled.contains(block) {
                #expect(zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(block * 4096)) } == 4096)
            }
            close(fd)
            #expect(try fixture.vmctl(["resume", "b"]).status == 0)
            try waitUntil("the copy reports a failed disk check", timeout: .seconds(30)) {
                (try fixture.status("b").disk?.checksFailed ?? 0) > 0
            }
            #expect(try fixture.console("b").contains("disk check FAIL"))
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// With shared storage no disk data travels; the copy opens the same image, and can go back the same way.
        @Test func sharedStorageSendsTheIdentityNotTheData() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try startGuestWithDisk(fixture, "a")
            let stream = fixture.file("shared.vms")
            let save = try runShell(
                "\(fixture.command("vmsend", ["--shared-storage", "a"])) | tee \(shellQuoted(stream)) | \(fixture.command("vmrecv", ["b"]))"
            )
            #expect(save.status == 0, "\(save.standardError)")
            let dump = try runProcess(Products.path("vmstream"), ["dump"], input: Array(contents(stream)))
            #expect(dump.standardOutput.contains("shared storage at \(fixture.file("a.img"))"))
            #expect(!dump.standardOutput.contains("DISK BLOCKS"), "no disk data travels")
            #expect(!FileManager.default.fileExists(atPath: fixture.file("b-vda.img")))
            let first = try fixture.status("a")
            try expectDiskChecksContinue(fixture, "b", after: first)
            #expect(try fixture.vmctl(["destroy", "a"]).status == 0)

            let back = try runShell(
                "\(fixture.command("vmsend", ["--shared-storage", "b"])) | \(fixture.command("vmrecv", ["a"]))")
            #expect(back.status == 0, "\(back.standardError)")
            try expectDiskChecksContinue(fixture, "a", after: try fixture.status("b"))
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A shared-storage stream on a host whose image is missing, of another size, or holds other data: one line,
        /// and nothing is left running.
        @Test func aSharedImageThatIsNotTheSendersIsRefused() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try startGuestWithDisk(fixture, "a", size: "16M")
            let stream = fixture.file("shared.vms")
            let save = try runShell("\(fixture.command("vmsend", ["--warm", "--shared-storage", "a"])) > \(shellQuoted(stream))")
            #expect(save.status == 0, "\(save.standardError)")
            #expect(try fixture.vmctl(["destroy", "a"]).status == 0)
            let image = fixture.file("a.img")
            let original = contents(image)
            func receive() throws -> ProcessResult {
                try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(stream))")
            }

            #expect(rename(image, image + ".moved") == 0)
            var result = try receive()
            #expect(
                result.status == 1 && result.standardError.contains("the shared image \(image) is missing here"),
                "\(result.standardError)")
            #expect(rename(image + ".moved", image) == 0)

            #expect(truncate(image, off_t(original.count + 4096)) == 0)
            result = try receive()
            #expect(
                result.status == 1 && result.standardError.contains("holds \(original.count + 4096) bytes"),
                "\(result.standardError)")

            #expect(FileManager.default.createFile(atPath: image, contents: Data(repeating: 0x42, count: original.count)))
            result = try receive()
            #expect(
                result.status == 1 && result.standardError.contains("does not hold the sender's disk"), "\(result.standardError)")
            #expect(result.standardError.split(separator: "\n").count == 1, "one line: \(result.standardError)")
            #expect(fixture.sockets().isEmpty)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// An image that already exists is kept unless -F; a receive refused or failed removes what it created.
        @Test func anExistingImageIsOverwrittenOnlyWithForce() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try startGuestWithDisk(fixture, "a", size: "16M")
            let stream = fixture.file("a.vms")
            #expect(try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(stream))").status == 0)
            let existing = fixture.file("b-vda.img")
            #expect(FileManager.default.createFile(atPath: existing, contents: Data("keep me".utf8)))
            let refused = try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(stream))")
            #expect(
                refused.status == 1 && refused.standardError.contains("\(existing) exists; use -F to overwrite it"),
                "\(refused.standardError)")
            #expect(contents(existing) == Data("keep me".utf8))
            let dryRun = try runShell("\(fixture.command("vmrecv", ["-n", "b"])) < \(shellQuoted(stream))")
            #expect(dryRun.status == 1 && dryRun.standardError.contains("use -F"), "-n refuses what a receive would")
            // Paused: a running copy would write its disk while the images are compared.
            let forced = try runShell("\(fixture.command("vmrecv", ["-F", "--paused", "b"])) < \(shellQuoted(stream))")
            #expect(forced.status == 0, "\(forced.standardError)")
            let same = contents(existing) == contents(fixture.file("a.img"))
            #expect(same, "the overwritten image holds the sender's disk")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// The destination's file system fills up in the middle of the disk data: one line naming it, the partial image
        /// removed, no machine left; `vmrecv -n` refuses a folder that is too small before anything starts.
        @Test func aFullDiskOnTheDestinationFailsCleanly() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let small = fixture.file("small")
            mkdir(small, 0o700)
            guard getuid() == 0, runShellQuietly("mount -t tmpfs -o size=20m tmpfs \(shellQuoted(small))") else {
                rmdir(small)
                try Test.cancel("needs root to mount a small tmpfs as a full destination file system")
            }
            defer {
                _ = runShellQuietly("umount \(shellQuoted(small))")
                rmdir(small)
            }
            try startGuestWithDisk(fixture, "a", size: "16M", rate: "16M/s")
            try waitUntil("the guest has written its whole 16 MiB disk") { (try fixture.status("a").disk?.writes ?? 0) >= 4096 }
            let stream = fixture.file("a.vms")
            #expect(try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(stream))").status == 0)

            // Room for the disk when BEGIN is checked, gone by the time its blocks arrive: the receive starts, then
            // the file system is filled, then the rest of the stream follows.
            let beginEnd = 32 + 16 + 8 + 8192  // well past the header and BEGIN, before any page
            let receive = fixture.command("vmrecv", ["--disk-dir", small, "b"])
            let feed =
                "(head -c \(beginEnd) \(shellQuoted(stream)); for i in $(seq 400); do [ -S \(shellQuoted(fixture.file("b.sock"))) ] && break; sleep 0.05; done; "
                + "dd if=/dev/zero of=\(shellQuoted(small + "/filler")) bs=64k status=none 2>/dev/null; tail -c +\(beginEnd + 1) \(shellQuoted(stream)))"
            let result = try runShell("\(feed) | \(receive)")
            #expect(result.status == 1, "\(result.standardError)")
            #expect(result.standardError.contains("No space left on device"), "\(result.standardError)")
            #expect(result.standardError.split(separator: "\n").count == 1, "one line: \(result.standardError)")
            #expect(!FileManager.default.fileExists(atPath: small + "/b-vda.img"), "the partial image is removed")
            unlink(small + "/filler")

            // Half the room taken: less than the disk holds, so -n refuses before anything is created.
            #expect(runShellQuietly("dd if=/dev/zero of=\(shellQuoted(small + "/filler")) bs=1M count=10"))
            let tooSmall = try runShell("\(fixture.command("vmrecv", ["-n", "--disk-dir", small, "b"])) < \(shellQuoted(stream))")
            #expect(
                tooSmall.status == 1 && tooSmall.standardError.contains("not enough space for the disks in \(small)"),
                "\(tooSmall.standardError)")
            unlink(small + "/filler")
            #expect(try fixture.status("a").state == .migrated, "the saved source stays migrated whatever the receivers do")
            #expect(!fixture.sockets().contains("b.sock"))
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}

/// Runs a shell command and says whether it succeeded.
func runShellQuietly(_ command: String) -> Bool { (try? runShell(command + " >/dev/null 2>&1"))?.status == 0 }
