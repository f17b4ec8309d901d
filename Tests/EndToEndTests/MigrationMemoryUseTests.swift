import Glibc
import MachineDescription
import Testing
import VMControl
import VMStream

extension MigrationEndToEndTests {
    /// vmsend and vmrecv map the whole guest but keep only a slice of it resident, and the
    /// fast paths (vmsplice, pwrite into the destination) still move every byte.
    @Suite struct MemoryUseTests {
        static let imageBytes = 96 << 20

        /// 96 MiB of pseudo-random pages, every fourth MiB zero: all of it is sent, little compresses.
        static func image() -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: imageBytes)
            bytes.withUnsafeMutableBytes { buffer in
                var state: UInt64 = 6
                for word in 0..<(imageBytes / 8) where ((word * 8) >> 20) % 4 != 3 {
                    state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                    buffer.storeBytes(of: state ^ (state >> 29), toByteOffset: word * 8, as: UInt64.self)
                }
            }
            return bytes
        }

        /// Compares every page a stream delivers with the image.
        final class ImageCheck: PageSink {
            let image: [UInt8]
            var dataPages = 0
            var wrongPages: [UInt64] = []
            init(image: [UInt8]) { self.image = image }

            /// Whether `data` (nil: a zero page) is what the image holds at `page`; beyond the image all is zero.
            func matches(segment: Int, page: UInt64, _ data: UnsafeRawPointer?) -> Bool {
                let offset = Int(page) * StreamFormat.pageSize
                let received = data.map { UnsafeRawBufferPointer(start: $0, count: StreamFormat.pageSize) }
                guard segment == 0, offset < image.count else { return received?.allSatisfy { $0 == 0 } ?? true }
                return image.withUnsafeBytes { bytes in
                    let want = bytes[offset..<offset + StreamFormat.pageSize]
                    return received.map { want.elementsEqual($0) } ?? want.allSatisfy { $0 == 0 }
                }
            }

            func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? { nil }

            func store(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
                for index in 0..<count {
                    dataPages += 1
                    if !matches(segment: segment, page: page + UInt64(index), data + index * StreamFormat.pageSize) {
                        wrongPages.append(page + UInt64(index))
                    }
                }
            }

            func zeroPage(segment: Int, page: UInt64) {
                if !matches(segment: segment, page: page, nil) { wrongPages.append(page) }
            }
        }

        /// The prefix that runs a command under /usr/bin/time, its peak RSS going to the fixture's file `rss-NAME`.
        static func timed(_ fixture: VMFixture, _ name: String) -> String {
            "/usr/bin/time -f %M -o \(shellQuoted(fixture.file("rss-" + name)))"
        }

        /// The peak RSS, in KiB, that `timed(fixture, name)` recorded.
        static func peakKiB(_ fixture: VMFixture, _ name: String) throws -> Int {
            let text = String(decoding: try fixture.contents(of: "rss-" + name), as: UTF8.self)
            return Int(text.split(separator: "\n").last.map(String.init) ?? "") ?? .max
        }

        @Test(.enabled(if: access("/usr/bin/time", X_OK) == 0, "needs /usr/bin/time (Debian package time) for peak RSS"))
        func sendAndReceiveStayFarBelowTheGuestsSize() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let image = Self.image()
            try fixture.write(image, to: "image")
            let started = try fixture.vmrun(["--memory", "128M", "--memory-image", fixture.file("image"), "--paused", "a"])
            try #require(started.status == 0, "\(started.standardError)")

            let sent = try runShell(
                "\(Self.timed(fixture, "send")) \(fixture.command("vmsend", ["--warm", "a"])) | "
                    + "\(Self.timed(fixture, "recv")) \(fixture.command("vmrecv", ["--paused", "b"]))")
            #expect(sent.status == 0, "\(sent.standardError)")
            for side in ["send", "recv"] {
                let kib = try Self.peakKiB(fixture, side)
                #expect(kib < 64 << 10, "peak RSS of vm\(side) \(kib) KiB for a guest with 96 MiB of data")
            }

            // What arrived in b is the image, page for page: send b on to a file and compare.
            let saved = try runShell("\(fixture.command("vmsend", ["--warm", "b"])) > \(shellQuoted(fixture.file("b.vms")))")
            #expect(saved.status == 0, "\(saved.standardError)")
            let check = ImageCheck(image: image)
            let reader = StreamReader(bytes: try fixture.contents(of: "b.vms"))
            while try reader.next(into: check) != nil {}
            #expect(check.wrongPages.isEmpty, "pages of b that differ from the image: \(check.wrongPages.prefix(8))")
            #expect(check.dataPages == Self.imageBytes / StreamFormat.pageSize * 3 / 4)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// Live rounds read the pages the guest dirtied where they lie, far apart. vmsend lets go of each once sent,
        /// with the neighbours the kernel mapped along with it, or its RSS would follow the guest's working set.
        @Test(.enabled(if: access("/usr/bin/time", X_OK) == 0, "needs /usr/bin/time (Debian package time) for peak RSS"))
        func aLiveSendOfAGuestDirtyingFlatOutStaysFarBelowItsWorkingSet() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "512M", workingSet: "192M", extra: ["--guest-dirty-rate", "0"])
            let sent = try runShell(
                "\(Self.timed(fixture, "send")) \(fixture.command("vmsend", ["-P", "a"])) | \(fixture.command("vmrecv", ["b"]))")
            #expect(sent.status == 0, "\(sent.standardError)")
            let rounds = sent.standardError.split(separator: "\n").filter { $0.hasPrefix("round\t") }.count
            #expect(rounds >= 2, "pages dirtied while running were sent in rounds of their own:\n\(sent.standardError)")
            let kib = try Self.peakKiB(fixture, "send")
            #expect(kib < 64 << 10, "peak RSS of vmsend \(kib) KiB for a guest writing 192 MiB flat out")
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
