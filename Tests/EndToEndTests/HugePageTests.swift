import Glibc
import MachineDescription
import SystemPackage
import SystemSupport
import Testing

extension MigrationEndToEndTests {
    /// Guest memory on 2 MiB huge pages (`vmrun --hugepages`, `vmrecv --hugepages`): each side chooses its own, a
    /// migration runs between any two, and a pool too small is a one-line refusal that leaves the source running.
    @Suite struct HugePageTests {
        /// Pages from the host's pool of huge pages of `pageSize` (2 MiB unless said) for one test: grown by `pages` if
        /// this process may (root), and shrunk afterwards by as many as it grew, so that the pool ends as the test
        /// found it.
        final class PoolGrant {
            let pageSize: UInt64
            let setting: String
            private var grown: UInt64 = 0

            init(pages: UInt64, pageSize: UInt64 = HugePagePool.pageSize) throws {
                self.pageSize = pageSize
                setting = HugePagePool.folder(pageSize: pageSize) + "/nr_hugepages"
                if let before = read(), write(before + pages), let after = read() {
                    grown = after > before ? after - before : 0
                }
                guard (HugePagePool.availablePages(pageSize: pageSize) ?? 0) >= pages else {
                    release()
                    let size = HugePagePool.name(pageSize: pageSize)
                    try Test.cancel(
                        "cannot grow the host's pool of \(size) pages by \(pages) (\(setting) needs root and free memory)")
                }
            }

            func release() {
                if grown > 0, let now = read() { _ = write(now > grown ? now - grown : 0) }
                grown = 0
            }

            private func read() -> UInt64? {
                (try? FileDescriptor.readFile(setting, limit: 64)).flatMap {
                    UInt64(String(decoding: $0.filter { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self))
                }
            }

            private func write(_ value: UInt64) -> Bool {
                let fd = open(setting, O_WRONLY)
                guard fd >= 0 else { return false }
                defer { close(fd) }
                let text = Array("\(value)\n".utf8)
                return Glibc.write(fd, text, text.count) == text.count
            }
        }

        /// Bytes of the pool a process has mapped (HugetlbPages in /proc/PID/status).
        func hugePageBytes(pid: Int32) -> UInt64 {
            guard let text = try? FileDescriptor.readFile("/proc/\(pid)/status", limit: 1 << 16) else { return 0 }
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where line.hasPrefix("HugetlbPages:") {
                return (line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) } ?? 0) * 1024
            }
            return 0
        }

        /// A memory file on huge pages: pwrite cannot reach hugetlbfs, so `write` copies through the mapping; the
        /// populator faults in exactly the huge pages listed to it, and never changes a byte.
        @Test func aMemoryFileOnHugePagesIsWrittenAndPopulatedAhead() throws {
            let grant = try PoolGrant(pages: 8)
            defer { grant.release() }
            let file = try MemoryFile.create(name: "huge-test", segmentSizes: [16 << 20], hugePages: true)
            defer { file.release() }
            #expect(file.hugePages)
            let mappedBefore = hugePageBytes(pid: getpid())
            let data = [UInt8](repeating: 0xAB, count: 4096)
            try file.write(segment: 0, page: 1280, count: 1, from: data)  // 5 MiB: in the third huge page
            #expect(file.address(segment: 0, page: 1280).load(as: UInt8.self) == 0xAB)

            let populator = try PopulateAhead(file: file)
            defer { populator.stop() }
            populator.add(segment: 0, pages: 512..<514)  // the second huge page, 2-4 MiB
            populator.add(segment: 0, pages: 1279..<1281)  // the third again, already there
            try waitUntil("the listed huge page is populated") { hugePageBytes(pid: getpid()) >= mappedBefore + (4 << 20) }
            populator.stop()
            #expect(hugePageBytes(pid: getpid()) == mappedBefore + (4 << 20), "only the listed huge pages")
            #expect(file.address(segment: 0, page: 1280).load(as: UInt8.self) == 0xAB, "populating wrote nothing")
            #expect(file.address(segment: 0, page: 1279).load(as: UInt8.self) == 0)
            #expect(try file.populatedPages(segment: 0) == [0..<4096], "hugetlbfs reports no holes")
            file.discard(segment: 0, pages: 1280..<1281)
            #expect(file.address(segment: 0, page: 1280).load(as: UInt8.self) == 0, "a discarded page reads zero")
            #expect(hugePageBytes(pid: getpid()) == mappedBefore + (4 << 20), "and its huge page stays")
        }

        /// Live from huge pages to huge pages, then warm from huge pages to small ones: the guest's checks pass on
        /// every copy, and each vmrun holds huge pages exactly when it was asked to.
        @Test func liveAndWarmBetweenHugeAndSmallPages() throws {
            try VMFixture.requireMachine()
            let grant = try PoolGrant(pages: 2 * 32 + 8)
            defer { grant.release() }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let started = try fixture.startGuest("a", memory: "64M", workingSet: "16M", extra: ["--hugepages"])
            #expect(hugePageBytes(pid: started.pid) > 0, "vmrun --hugepages maps the pool")
            #expect(started.hugePages == true && started.hugePageSize == 2 << 20, "vmctl status says so")

            let live = try runShell("\(fixture.command("vmsend", ["a"])) | \(fixture.command("vmrecv", ["--hugepages", "b"]))")
            #expect(live.status == 0, "\(live.standardError)")
            let source = try fixture.status("a")
            #expect(source.state == .migrated)
            let copy = try fixture.expectContinues("b", from: source)
            #expect(hugePageBytes(pid: copy.pid) > 0 && copy.hugePages == true, "vmrecv --hugepages puts the copy on huge pages")

            #expect(try fixture.vmctl(["pause", "b"]).status == 0)
            let paused = try fixture.status("b")
            let warm = try runShell("\(fixture.command("vmsend", ["--warm", "b"])) | \(fixture.command("vmrecv", ["c"]))")
            #expect(warm.status == 0, "\(warm.standardError)")
            let small = try fixture.expectContinues("c", from: paused)
            #expect(
                hugePageBytes(pid: small.pid) == 0 && small.hugePages == false && small.hugePageSize == nil,
                "without --hugepages the copy is on small pages")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A pool too small: vmrun refuses in one line and leaves nothing; a receive refuses in one line, creates
        /// nothing, and the warm source runs again.
        @Test func aShortPoolIsRefusedAndTheSourceRunsOn() throws {
            try VMFixture.requireMachine()
            let free = HugePagePool.availablePages() ?? 0
            let memory = (free + 1) * HugePagePool.pageSize
            guard memory <= 512 << 20 else {
                try Test.cancel("the host's pool has \(free) free huge pages: too many to ask for more than it holds")
            }
            // A working set many times the pipe's 1 MiB: vmsend cannot have written the whole stream before vmrecv
            // refuses it (a stream written whole leaves the source paused, as vmsend cannot tell it was not restored).
            let memoryFlag = "\(max(memory, 32 << 20) >> 20)M"
            let fixture = VMFixture()
            defer { fixture.cleanUp() }

            let refused = try fixture.vmrun(["--hugepages", "--memory", memoryFlag, "x"])
            #expect(refused.status == 1)
            #expect(refused.standardError.contains("huge pages"), "\(refused.standardError)")
            #expect(refused.standardError.split(separator: "\n").count == 1, "\(refused.standardError)")
            #expect(!fixture.exists("x.sock"))

            try fixture.startGuest("a", memory: memoryFlag, workingSet: "16M")
            let send = try runShell(
                "\(fixture.command("vmsend", ["--warm", "a"])) | \(fixture.command("vmrecv", ["--hugepages", "b"]))")
            #expect(send.status != 0)
            let receiveErrors = send.standardError.split(separator: "\n").filter { $0.hasPrefix("vmrecv:") }
            #expect(receiveErrors.count == 1 && receiveErrors[0].contains("huge pages"), "\(send.standardError)")
            #expect(!fixture.exists("b.sock"), "no copy was created")
            let before = try fixture.status("a")
            #expect(before.state == .running, "the source runs again: the copy never started")
            try fixture.waitForNewChecks("a", after: before)
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
