import Glibc
import MachineDescription
import SystemPackage
import Testing
import VMControl
import VMStream

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

extension MigrationEndToEndTests {
    /// Streams that are cut, corrupted or incompatible leave nothing behind; a cut send resumes its source.
    @Suite struct BrokenStreamTests {
        /// A small guest saved to `a.vms`; A stays paused. Returns A's vmrun pid.
        func savedGuest(_ fixture: VMFixture) throws -> Int32 {
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            let saved = try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(fixture.file("a.vms")))")
            #expect(saved.status == 0, "\(saved.standardError)")
            return try fixture.status("a").pid
        }

        /// `vmrecv b < file` must fail with one line naming the problem, and leave no VM b behind.
        func expectRefused(
            _ fixture: VMFixture, stream: String, saying words: [String], owner: Int32,
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let result = try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(fixture.file(stream)))")
            fixture.expectOneLineFailure(result, tool: "vmrecv", saying: words, sourceLocation: sourceLocation)
            try? waitUntil("the new VM's vmrun is gone", timeout: .seconds(10)) { fixture.processesInRunDirectory() == [owner] }
            #expect(fixture.processesInRunDirectory() == [owner], "\(stream): processes left", sourceLocation: sourceLocation)
            #expect(fixture.sockets() == ["a.sock"], "\(stream): sockets \(fixture.sockets())", sourceLocation: sourceLocation)
            #expect(try fixture.vmctl(["status", "b"]).status == 1, sourceLocation: sourceLocation)
        }

        @Test func truncatedAndCorruptedStreamsCreateNothing() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let owner = try savedGuest(fixture)
            let stream = try fixture.contents(of: "a.vms")

            try fixture.write(Array(stream[..<(stream.count / 2)]), to: "truncated.vms")
            try expectRefused(fixture, stream: "truncated.vms", saying: ["truncated at byte \(stream.count / 2)"], owner: owner)

            // One flipped byte in the stream header, in BEGIN's record header, and in the middle of a page's data.
            let reader = StreamReader(bytes: stream)
            var pages: RecordInfo?
            while pages == nil, let record = try reader.next(into: DiscardingPageSink()) {
                if case .pages(let batch) = record, batch.zeroPages < batch.count { pages = reader.lastRecord }
            }
            let batch = try #require(pages)
            let flips: [(String, Int, [String])] = [
                ("header.vms", 9, ["checksum mismatch in the stream header"]),
                ("begin.vms", StreamFormat.headerSize + 5, ["checksum mismatch", "record 1"]),
                (
                    "page.vms", Int(batch.offset) + StreamFormat.recordHeaderSize + batch.payloadLength / 2,
                    ["checksum mismatch", "record \(batch.number)"]
                ),
            ]
            for (name, offset, words) in flips {
                var corrupted = stream
                corrupted[offset] ^= 0x10
                try fixture.write(corrupted, to: name)
                try expectRefused(fixture, stream: name, saying: words, owner: owner)
            }
            // The untouched stream still restores: the refusals were about the damage.
            let good = try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(fixture.file("a.vms")))")
            #expect(good.status == 0, "\(good.standardError)")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func incompatibleStreamsAreRefusedBeforeAnythingIsCreated() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let owner = try savedGuest(fixture)
            let stream = try fixture.contents(of: "a.vms")

            try StreamEditor.rewrite(stream, to: fixture.file("arch.vms")) { $0.host.architecture = "aarch64" }
            try expectRefused(fixture, stream: "arch.vms", saying: ["aarch64"], owner: owner)

            try StreamEditor.rewrite(stream, to: fixture.file("device.vms")) { begin in
                begin.machine.devices[0].kind = "frobnicator"
            }
            try expectRefused(fixture, stream: "device.vms", saying: ["frobnicator"], owner: owner)

            try StreamEditor.rewrite(stream, to: fixture.file("hypervisor.vms")) { $0.host.hypervisor = "bhyve" }
            try expectRefused(fixture, stream: "hypervisor.vms", saying: ["bhyve"], owner: owner)

            // The editor itself is sound: an unedited rewrite restores.
            try StreamEditor.rewrite(stream, to: fixture.file("same.vms")) { _ in }
            let same = try runShell("\(fixture.command("vmrecv", ["b"])) < \(shellQuoted(fixture.file("same.vms")))")
            #expect(same.status == 0, "\(same.standardError)")
            try fixture.waitForNewChecks("b")
            #expect(try fixture.status("b").vcpus.allSatisfy { $0.checksFailed == 0 })
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func aNameInUseIsRefusedAndTheRunningVMIsUntouched() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let owner = try savedGuest(fixture)
            let result = try runShell("\(fixture.command("vmrecv", ["a"])) < \(shellQuoted(fixture.file("a.vms")))")
            fixture.expectOneLineFailure(result, tool: "vmrecv", saying: ["a VM named 'a' already exists here (migrated, pid "])
            let status = try fixture.status("a")
            #expect(status.pid == owner)
            #expect(status.state == .migrated)
            #expect(fixture.processesInRunDirectory() == [owner])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// The reader goes away after 100 000 bytes: vmsend fails, says the source was resumed, and it runs again.
        @Test(arguments: [["--warm"], []])
        func aKilledPipeResumesTheSource(mode: [String]) throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", workingSet: "32M")
            let statusFile = shellQuoted(fixture.file("vmsend.status"))
            let result = try runShell(
                "( \(fixture.command("vmsend", mode + ["a"])); echo $? > \(statusFile) ) | head -c 100000 > /dev/null")
            let status = try String(decoding: fixture.contents(of: "vmsend.status"), as: UTF8.self)
            #expect(status == "1\n", "vmsend exited \(status): \(result.standardError)")
            // Live, the cut may come before the pause: then "keeps running" is the news, and it must be told too.
            #expect(
                result.standardError.contains("'a'")
                    && (result.standardError.contains("resumed")
                        || result.standardError.contains("running")),
                "vmsend does not say what became of 'a': \(result.standardError)")
            #expect(
                result.standardError.split(separator: "\n").allSatisfy { $0.hasPrefix("vmsend: ") }, "\(result.standardError)")
            let after = try fixture.status("a")
            #expect(after.state == .running)
            try fixture.waitForNewChecks("a", after: after)
            #expect(try fixture.status("a").vcpus.allSatisfy { $0.checksFailed == 0 })
            #expect(zip(try fixture.status("a").vcpus, after.vcpus).allSatisfy { $0.tick > $1.tick }, "ticks rise again")
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}

/// Rewrites a stream with an edited BEGIN, framing every record anew so that every checksum is valid:
/// what a stream from an incompatible host looks like.
enum StreamEditor {
    static func rewrite(
        _ stream: [UInt8], to path: String, editing edit: (inout StreamBegin) -> Void,
        page editPage: (_ segment: Int, _ page: UInt64, _ bytes: inout [UInt8]) -> Void = { _, _, _ in },
        state editState: (inout MachineState) -> Void = { _ in }
    ) throws {
        let reader = StreamReader(bytes: stream)
        let output = try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        defer { try? output.close() }
        let writer = try StreamWriter(output: output)
        let slots = BatchSlots()
        var state = MachineState(kernel: [], devices: [])
        // Disk records number disks; the writer takes areas (segments, then disks).
        var firstDisk = 0
        func copy(_ batch: PageBatch, area: Int) throws {
            for page in batch.firstPage..<batch.firstPage + UInt64(batch.count) {
                var bytes = Array(UnsafeRawBufferPointer(start: slots.slot(page), count: StreamFormat.pageSize))
                editPage(area, page, &bytes)
                try bytes.withUnsafeBytes {
                    try writer.writePages(segment: area, firstPage: page, count: 1, from: $0.baseAddress!)
                }
            }
        }
        while let record = try reader.next(into: slots) {
            switch record {
            case .begin(var begin):
                edit(&begin)
                firstDisk = begin.machine.segments.count
                try writer.writeBegin(begin)
            case .round(let number, let ranges):
                try writer.writeRound(number, pages: ranges)
            case .pages(let batch):
                try copy(batch, area: batch.segment)
            case .diskExtents(let number, let ranges):
                let areas = ranges.map { PageRange(segment: firstDisk + $0.segment, firstPage: $0.firstPage, count: $0.count) }
                try writer.writeRound(number, pages: areas)
            case .diskBlocks(let batch):
                try copy(batch, area: firstDisk + batch.segment)
            case .kernelState(let chunk):
                state.kernel.append(chunk)
            case .deviceState(let chunk):
                state.devices.append(chunk)
            case .end(let end):
                editState(&state)
                for chunk in state.kernel { try writer.writeKernelState(chunk) }
                for chunk in state.devices { try writer.writeDeviceState(chunk) }
                try writer.writeEnd(sourcePauseTime: end.sourcePauseTime)
            case .resume:
                throw StreamError(.misuse, "a continuation cannot be rewritten")
            }
        }
    }

    /// Holds one batch's pages: a batch is at most 256 consecutive pages, so page % 256 names a unique slot.
    final class BatchSlots: PageSink {
        private let memory = UnsafeMutableRawBufferPointer.allocate(
            byteCount: StreamFormat.maxPagesPerBatch * StreamFormat.pageSize, alignment: 4096)

        deinit { memory.deallocate() }

        func slot(_ page: UInt64) -> UnsafeMutableRawPointer {
            memory.baseAddress! + Int(page % UInt64(StreamFormat.maxPagesPerBatch)) * StreamFormat.pageSize
        }

        func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? { slot(page) }

        func zeroPage(segment: Int, page: UInt64) {
            slot(page).initializeMemory(as: UInt8.self, repeating: 0, count: StreamFormat.pageSize)
        }
    }
}
