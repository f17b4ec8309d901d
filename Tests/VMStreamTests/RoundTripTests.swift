import Glibc
import MachineDescription
import Testing

@testable import VMStream

@Suite struct RoundTripTests {
    @Test(arguments: [Compression.none, .lz4()])
    func everyRecordTypeSurvives(compression: Compression) throws {
        let memorySize: UInt64 = 1 << 20
        let bytes = try Fixture.sample(memorySize: memorySize, compression: compression)
        let begin = SampleStream.begin(memorySize: memorySize, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
        let sink = MemoryPageSink(machine: begin.machine)
        let (records, error) = Fixture.readAll(bytes, sink: sink)
        #expect(error == nil, "\(error?.description ?? "")")

        guard case .begin(let readBegin) = records.first else {
            Issue.record("no BEGIN")
            return
        }
        #expect(readBegin == begin)
        let rounds = records.compactMap { if case .round(let number, let ranges) = $0 { (number, ranges) } else { nil } }
        #expect(rounds.map(\.0) == [1, 2])
        #expect(rounds[0].1 == [PageRange(segment: 0, firstPage: 0, count: 256)])
        let batches = records.compactMap { if case .pages(let batch) = $0 { batch } else { nil } }
        #expect(batches.reduce(0) { $0 + $1.count } == 256 + 16)
        #expect(batches.contains { $0.compressed } == (compression != .none))
        let kernel = records.compactMap { if case .kernelState(let chunk) = $0 { chunk.name } else { nil } }
        #expect(kernel == ["vcpu0/regs", "vcpu1/regs", "vm/pit"])
        let devices = records.compactMap { if case .deviceState(let chunk) = $0 { chunk } else { nil } }
        #expect(
            devices == [
                StateChunk(name: "uart0", version: 1, data: Array("uart16550".utf8)),
                StateChunk(name: "status0", version: 1, data: Array("guest-status".utf8)),
            ])
        guard case .end(let end) = records.last else {
            Issue.record("no END")
            return
        }
        #expect(end.pages == 272)
        #expect(end.sourcePauseTime == Fixture.creationTime + 5_000_000)

        // Every page arrived with the content the writer read.
        let expected = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { expected.deallocate() }
        for page in 0..<256 {
            SampleStream.fill(expected, index: UInt64(page), seed: Fixture.seed)
            #expect(memcmp(expected, sink.segments[0].baseAddress! + page * 4096, 4096) == 0, "page \(page)")
        }
        #expect(sink.zeroed > 100)
    }

    /// Raw pages read straight into a sink that offers a place (huge-page guest memory) arrive as through `store`;
    /// a batch with a run the sink will not land goes through `store` whole, and coded batches always do.
    @Test(arguments: [Compression.none, .lz4()])
    func pagesLandedInPlaceMatchPagesStored(compression: Compression) throws {
        let reference = try StoredSample(compression: compression)
        for limit in [UInt64.max, 100] {
            let landing = LandingPageSink(machine: reference.machine, landingLimit: limit)
            reference.expectSameMemory(reading: landing, into: landing.memory)
            // Everything lands in place when the sink takes every run; nothing does when coded.
            #expect((landing.storedPages == 0) == (compression == .none && limit == .max))
        }
    }

    /// A sink that lends a staging buffer gets each batch's data read (or decoded) into it and stored from it, raw or
    /// coded, and every loan back; the pages arrive as through scratch.
    @Test(arguments: [Compression.none, .lz4()])
    func pagesReadIntoALentBufferMatchPagesStored(compression: Compression) throws {
        let reference = try StoredSample(compression: compression)
        let staging = StagingPageSink(machine: reference.machine)
        reference.expectSameMemory(reading: staging, into: staging.memory)
        #expect(staging.loans > 0 && staging.loans == staging.givenBack)
        #expect(staging.storesFromTheBuffer > 0 && staging.storesFromElsewhere == 0)
    }

    /// A raw batch whose checksum fails is still refused when its pages were landed in place, and the sink is told
    /// which pages hold unverified bytes.
    @Test func aLandedBatchWithABadChecksumIsRefusedAndUndone() throws {
        var bytes = try Fixture.sample()
        let reader = StreamReader(bytes: bytes)
        var offset: UInt64 = 0
        var damaged: PageBatch?
        while let record = try reader.next(into: DiscardingPageSink()) {
            if case .pages(let batch) = record, !batch.compressed, batch.zeroPages < batch.count {
                damaged = batch
                break
            }
            offset = reader.statistics.bytes
        }
        let batch = try #require(damaged)
        bytes[Int(offset) + 4096] ^= 0x01  // inside the batch's data
        let begin = SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
        /// The batch's pages in `sink` hold what they held before the stream (0xee): the landing was undone.
        func untouched(_ sink: LandingPageSink) -> Bool {
            let pages = sink.memory.segments[batch.segment][
                Int(batch.firstPage) * 4096..<(Int(batch.firstPage) + batch.count) * 4096]
            return pages.allSatisfy { $0 == 0xee }
        }

        let landing = LandingPageSink(machine: begin.machine)
        let (_, error) = Fixture.readAll(bytes, sink: landing)
        #expect(error?.kind == .checksumMismatch, "\(error?.description ?? "no error")")
        #expect(landing.failedPages == batch.count - batch.zeroPages && untouched(landing))

        // The stream cut inside the batch's data: the same.
        let cut = LandingPageSink(machine: begin.machine)
        let (_, truncated) = Fixture.readAll(Array(bytes[..<(Int(offset) + 8192)]), sink: cut)
        #expect(truncated?.kind == .truncated, "\(truncated?.description ?? "no error")")
        #expect(cut.failedPages == batch.count - batch.zeroPages && untouched(cut))
    }

    @Test func compressionShrinksTheSampleAndFallsBackToRawForRandomPages() throws {
        let raw = try Fixture.sample(compression: .none)
        let packed = try Fixture.sample(compression: .lz4())
        #expect(packed.count < raw.count)
        let reader = StreamReader(bytes: packed)
        while try reader.next(into: DiscardingPageSink()) != nil {}
        #expect(reader.statistics.compressedBatches > 0)
        #expect(reader.statistics.compressionRatio > 1)
        #expect(reader.statistics.bytes == UInt64(packed.count))
    }

    @Test func writerAndReaderStatisticsAgree() throws {
        let sink = MemorySink()
        let writer = StreamWriter(sink: sink, compression: .lz4())
        try SampleStream.write(
            to: writer, begin: SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: 1),
            seed: 1, sourcePauseTime: 0)
        let reader = StreamReader(bytes: sink.bytes)
        while try reader.next(into: DiscardingPageSink()) != nil {}
        #expect(reader.statistics == writer.statistics)
        #expect(writer.statistics.bytes == UInt64(sink.bytes.count))
    }

    @Test func longRoundListsContinueInFurtherRoundRecords() throws {
        let sink = MemorySink()
        let writer = StreamWriter(sink: sink, compression: .none)
        let memorySize: UInt64 = 1 << 30
        try writer.writeBegin(SampleStream.begin(memorySize: memorySize, uuid: Fixture.uuid, creationTime: 1))
        // Every other page: more ranges than one ROUND record may hold.
        let ranges = (0..<UInt64(StreamFormat.maxRangesPerRound + 10)).map { PageRange(segment: 0, firstPage: $0 * 2, count: 1) }
        try writer.writeRound(7, pages: ranges)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        page.initializeMemory(as: UInt8.self, repeating: 1, count: 4096)
        for range in ranges { try writer.writePages(segment: 0, firstPage: range.firstPage, count: 1, from: page) }
        try writer.writeEnd(sourcePauseTime: 0)
        let (records, error) = Fixture.readAll(sink.bytes)
        #expect(error == nil)
        let rounds = records.compactMap { if case .round(let number, let ranges) = $0 { (number, ranges.count) } else { nil } }
        #expect(rounds.map(\.0) == [7, 7])
        #expect(rounds.map(\.1) == [StreamFormat.maxRangesPerRound, 10])
    }
}
