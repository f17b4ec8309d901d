import MachineDescription
import SystemSupport
import Testing

@testable import VMStream

/// Each bad input the issue lists gives one clear error of the right kind.
@Suite struct BadInputTests {
    func error(_ bytes: [UInt8]) -> StreamError? { Fixture.readAll(bytes).1 }

    @Test func wrongMagic() {
        var bytes = (try? Fixture.sample()) ?? []
        bytes[0] = UInt8(ascii: "X")
        #expect(error(bytes) == StreamError(.badMagic, "invalid stream (bad magic number)"))
        #expect(error(Array("hello, world\n".utf8))?.kind == .badMagic)
    }

    @Test func emptyInputIsTruncation() {
        #expect(error([]) == StreamError(.truncated, "stream truncated at byte 0 (inside the stream header)"))
    }

    @Test func unsupportedVersion() {
        var builder = Fixture.Builder(version: 2)
        builder.begin()
        #expect(
            error(builder.bytes)
                == StreamError(.unsupportedVersion, "unsupported stream version 2 (this reader understands version 1)"))
    }

    @Test func unknownRequiredFeatureIsNamed() {
        var builder = Fixture.Builder(features: 0x14)
        builder.begin()
        #expect(
            error(builder.bytes)
                == StreamError(.unsupportedFeature, "stream has unsupported feature, feature flags = 14 (unknown flags = 14)"))
    }

    @Test func unknownIgnorableHeaderFlagsAreAccepted() {
        var builder = Fixture.Builder(flags: 0x8)
        builder.begin()
        builder.round(0, [])
        builder.end(pages: 0, zeroPages: 0)
        #expect(error(builder.bytes) == nil)
    }

    @Test func absurdLengthIsRefusedBeforeAllocating() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.record(RecordType.kernelState.rawValue, [], length: UInt32.max)
        #expect(
            error(builder.bytes)
                == StreamError(
                    .lengthTooLarge,
                    "record 2 (KERNEL STATE) at byte \(builder.bytes.count - 24) has payload length 4294967295, above the limit of 4194304"
                ))
    }

    @Test func roundRangeCountThatOverflowsThePayload() {
        var builder = Fixture.Builder()
        builder.begin()
        var payload = ByteWriter()
        payload.u32(1)
        payload.u32(UInt32.max)
        builder.record(RecordType.round.rawValue, payload.bytes)
        #expect(error(builder.bytes)?.kind == .malformed)
    }

    @Test func pageRangeOutsideSegment() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(1, [PageRange(segment: 0, firstPage: 250, count: 10)])
        #expect(error(builder.bytes)?.message.hasSuffix("pages 250 to 259 lie outside segment 0 (lowmem, 256 pages)") == true)
        var overflow = Fixture.Builder()
        overflow.begin()
        overflow.round(1, [PageRange(segment: 0, firstPage: UInt64.max, count: 2)])
        #expect(error(overflow.bytes)?.kind == .malformed)
        var noSegment = Fixture.Builder()
        noSegment.begin()
        noSegment.round(1, [PageRange(segment: 3, firstPage: 0, count: 1)])
        #expect(error(noSegment.bytes)?.message.hasSuffix("segment 3 does not exist (BEGIN lists 1)") == true)
    }

    @Test func pagesOutsideSegmentOrRound() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(1, [PageRange(segment: 0, firstPage: 0, count: 4)])
        builder.pages(segment: 0, first: 300, count: 4)
        #expect(error(builder.bytes)?.message.hasSuffix("pages 300 to 303 lie outside segment 0 (lowmem, 256 pages)") == true)
        var unlisted = Fixture.Builder()
        unlisted.begin()
        unlisted.round(1, [PageRange(segment: 0, firstPage: 0, count: 4)])
        unlisted.pages(segment: 0, first: 8, count: 4)
        #expect(error(unlisted.bytes)?.message.contains("page 8 of segment 0 is not the next listed page") == true)
        var noRound = Fixture.Builder()
        noRound.begin()
        noRound.pages(segment: 0, first: 0, count: 1)
        #expect(error(noRound.bytes)?.message.contains("PAGES outside a round") == true)
    }

    @Test func diskRecordsOutsideTheirDiskOrRound() {
        // A 64 KiB disk: 16 blocks. The header must announce disks (feature bit 0) when BEGIN lists them.
        var unannounced = Fixture.Builder()
        unannounced.begin(diskSize: 64 << 10)
        #expect(error(unannounced.bytes)?.message.hasSuffix("BEGIN lists disks the stream header does not announce") == true)
        var announcedOnly = Fixture.Builder(features: StreamFormat.disksFeature)
        announcedOnly.begin()
        #expect(error(announcedOnly.bytes)?.message.hasSuffix("the stream header announces disks BEGIN does not list") == true)

        var past = Fixture.Builder(features: StreamFormat.disksFeature)
        past.begin(diskSize: 64 << 10)
        past.round(1, [PageRange(segment: 0, firstPage: 10, count: 8)], disks: true)
        #expect(error(past.bytes)?.message.hasSuffix("blocks 10 to 17 lie outside disk 0 (vda, 16 blocks)") == true)
        var overlapping = Fixture.Builder(features: StreamFormat.disksFeature)
        overlapping.begin(diskSize: 64 << 10)
        overlapping.round(
            1, [PageRange(segment: 0, firstPage: 0, count: 4), PageRange(segment: 0, firstPage: 2, count: 4)], disks: true)
        #expect(error(overlapping.bytes)?.message.hasSuffix("page ranges are not in ascending order without overlap") == true)
        var noDisk = Fixture.Builder(features: StreamFormat.disksFeature)
        noDisk.begin(diskSize: 64 << 10)
        noDisk.round(1, [PageRange(segment: 1, firstPage: 0, count: 1)], disks: true)
        #expect(error(noDisk.bytes)?.message.hasSuffix("disk 1 does not exist (BEGIN lists 1)") == true)
        var unlisted = Fixture.Builder(features: StreamFormat.disksFeature)
        unlisted.begin(diskSize: 64 << 10)
        unlisted.round(1, [PageRange(segment: 0, firstPage: 0, count: 4)], disks: true)
        unlisted.pages(segment: 0, first: 8, count: 2, disk: true)
        #expect(error(unlisted.bytes)?.message.contains("block 8 of disk 0 is not the next listed block") == true)
        // Disk blocks in a PAGES record, and a list cut short by a state chunk, are refused the same way.
        var asPages = Fixture.Builder(features: StreamFormat.disksFeature)
        asPages.begin(diskSize: 64 << 10)
        asPages.round(1, [PageRange(segment: 0, firstPage: 0, count: 2)], disks: true)
        asPages.pages(segment: 0, first: 0, count: 2)
        #expect(
            error(asPages.bytes)?.message.contains("page 0 of segment 0 is not the next listed page (block 0 of disk 0)") == true)
        var missing = Fixture.Builder(features: StreamFormat.disksFeature)
        missing.begin(diskSize: 64 << 10)
        missing.round(1, [PageRange(segment: 0, firstPage: 0, count: 4)], disks: true)
        missing.pages(segment: 0, first: 0, count: 2, disk: true)
        missing.chunk(.deviceState, "uart0")
        #expect(error(missing.bytes)?.message.contains("still misses 2 listed pages") == true)
    }

    @Test func duplicateBegin() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.begin()
        #expect(error(builder.bytes)?.message.hasSuffix("duplicate BEGIN") == true)
    }

    @Test func recordBeforeBegin() {
        var builder = Fixture.Builder()
        builder.chunk(.kernelState, "vcpu0/regs")
        #expect(error(builder.bytes)?.message == "record 1 (KERNEL STATE) at byte 32: stream does not start with BEGIN")
    }

    /// Reading stops at END: bytes after it are not read, only counted, whatever they hold (even a record).
    @Test func bytesAfterEndAreCountedNotRead() throws {
        let bytes = try Fixture.sample()
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(0, [])
        builder.end(pages: 0, zeroPages: 0)
        let ended = builder.bytes.count
        builder.chunk(.kernelState, "vcpu0/regs")
        for (stream, extra) in [(bytes, 0), (bytes + [0], 1), (builder.bytes, builder.bytes.count - ended)] {
            let reader = StreamReader(bytes: stream)
            #expect(reader.bytesWaitingAfterEnd() == nil)
            #expect(throws: Never.self) { while try reader.next(into: DiscardingPageSink()) != nil {} }
            #expect(reader.bytesWaitingAfterEnd() == UInt64(extra))
            #expect(try reader.next(into: DiscardingPageSink()) == nil)
        }
    }

    @Test func missingEnd() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(0, [])
        builder.chunk(.kernelState, "vcpu0/regs")
        #expect(error(builder.bytes) == StreamError(.truncated, "stream truncated at byte \(builder.bytes.count) (before END)"))
    }

    @Test(arguments: [RecordType.kernelState, .deviceState])
    func repeatedChunkName(type: RecordType) {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(0, [])
        builder.chunk(type, "uart0")
        builder.chunk(type, "uart0")
        #expect(error(builder.bytes)?.message.hasSuffix("state chunk 'uart0' repeated") == true)
    }

    @Test func deviceStateForAnUnlistedDevice() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(0, [])
        builder.chunk(.deviceState, "virtio-net0")
        #expect(error(builder.bytes)?.message.hasSuffix("device state for 'virtio-net0', a device BEGIN does not list") == true)
    }

    @Test func endTotalsAndRunningChecksumAreChecked() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(1, [PageRange(segment: 0, firstPage: 0, count: 4)])
        builder.pages(segment: 0, first: 0, count: 4, dataPages: 1)
        builder.end(pages: 5, zeroPages: 3)
        #expect(error(builder.bytes)?.message.hasSuffix("END totals disagree: pages 5 (counted 4)") == true)
        var chain = Fixture.Builder()
        chain.begin()
        chain.round(0, [])
        chain.running ^= 1
        chain.end(pages: 0, zeroPages: 0)
        #expect(error(chain.bytes)?.kind == .checksumMismatch)
    }

    @Test func roundMissingPagesBeforeState() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(1, [PageRange(segment: 0, firstPage: 0, count: 4)])
        builder.pages(segment: 0, first: 0, count: 2)
        builder.chunk(.kernelState, "vcpu0/regs")
        #expect(error(builder.bytes)?.message.hasSuffix("KERNEL STATE while round 1 still misses 2 listed pages") == true)
    }

    @Test func unknownRecordTypes() {
        var ignorable = Fixture.Builder()
        ignorable.begin()
        ignorable.round(0, [])
        ignorable.record(0x7000, flags: StreamFormat.ignorableFlag, [1, 2, 3])
        ignorable.end(pages: 0, zeroPages: 0)
        let reader = StreamReader(bytes: ignorable.bytes)
        var warnings: [String] = []
        reader.warningHandler = { warnings.append($0) }
        #expect(throws: Never.self) { while try reader.next(into: DiscardingPageSink()) != nil {} }
        let endRecord = 16 + Payload.endSize + 8
        let skippedRecord = 16 + 3 + 8
        #expect(
            warnings == [
                "skipped record 3 (type 28672) at byte \(ignorable.bytes.count - endRecord - skippedRecord): unknown ignorable record type, 3 bytes"
            ])

        var required = Fixture.Builder()
        required.begin()
        required.record(0x7000, [1, 2, 3])
        #expect(error(required.bytes)?.kind == .unknownRecord)
    }

    @Test func malformedBeginFields() {
        var builder = Fixture.Builder()
        var payload = ByteWriter()
        payload.u16(BeginTag.tool.rawValue)
        payload.u32(3)
        payload.raw([0xff, 0xfe, 0xfd])
        builder.record(RecordType.begin.rawValue, payload.bytes)
        #expect(error(builder.bytes)?.kind == .malformed)
        var missing = Fixture.Builder()
        missing.record(RecordType.begin.rawValue, [])
        #expect(error(missing.bytes)?.message.hasSuffix("field formatVersion is missing") == true)
    }

    /// Segment sizes that add up past 2^64 (each one fine) would trap a receiver summing them.
    @Test func segmentsThatOverflowOrOverlap() {
        var begin = SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
        begin.machine.segments = [
            MemorySegment(name: "a", guestPhysicalBase: 0, size: 1 << 63),
            MemorySegment(name: "b", guestPhysicalBase: 1 << 63, size: 1 << 63 - 4096),
        ]
        var huge = Fixture.Builder()
        huge.record(RecordType.begin.rawValue, Payload.encodeBegin(begin))
        #expect(error(huge.bytes)?.message.hasSuffix("the segments hold more than 2^48 bytes of memory") == true)
        begin.machine.segments = [
            MemorySegment(name: "a", guestPhysicalBase: 0, size: 8192),
            MemorySegment(name: "b", guestPhysicalBase: 4096, size: 4096),
        ]
        var overlapping = Fixture.Builder()
        overlapping.record(RecordType.begin.rawValue, Payload.encodeBegin(begin))
        #expect(error(overlapping.bytes)?.message.hasSuffix("segments 'a' and 'b' overlap") == true)
    }

    /// A receiver keeps state until END verifies: the stream may not make it keep more than the limit.
    @Test func stateBeyondItsTotalLimit() {
        var builder = Fixture.Builder()
        builder.begin()
        builder.round(0, [])
        let big = [UInt8](repeating: 7, count: StreamFormat.maxPayloadLength - 4096)
        for index in 0...(StreamFormat.maxStateBytes / big.count) {
            builder.record(
                RecordType.kernelState.rawValue, Payload.encodeChunk(StateChunk(name: "chunk\(index)", version: 1, data: big)))
        }
        #expect(
            error(builder.bytes)?.message.hasSuffix("state chunks hold more than \(StreamFormat.maxStateBytes) bytes in all")
                == true)
    }
}
