import Glibc
import MachineDescription
import SystemPackage
import Testing

@testable import VMStream

/// The send and receive fast paths through a real pipe: pages lent with vmsplice, LZ4 batches compressed on
/// several threads, live batches copied; every page must arrive exact and in order.
@Suite struct PipeTransferTests {
    /// 16 MiB: 16 batches, so LZ4 prepares two groups of 8 at once, with zero pages in most batches.
    static let memorySize: UInt64 = 16 << 20
    static let begin = SampleStream.begin(memorySize: memorySize, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
    static var pageCount: Int { Int(memorySize) / StreamFormat.pageSize }
    /// Round 1 resends these pages with new content, as a live round would.
    static let resent = PageRange(segment: 0, firstPage: 700, count: 1500)

    /// Guest memory as a sender sees it: round 0's content, or round 1's for the pages it resends.
    static func fillGuest(_ memory: UnsafeMutableRawPointer, seed: UInt64) {
        for page in 0..<pageCount {
            SampleStream.fill(memory + page * StreamFormat.pageSize, index: UInt64(page), seed: seed)
        }
    }

    /// Writes round 0 lent (paused) and round 1 copied (live) into `descriptor`, then END.
    static func writeStream(to descriptor: Int32, compression: Compression) throws {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: Int(memorySize), alignment: 4096)
        defer { memory.deallocate() }
        let writer = try StreamWriter(output: FileDescriptor(rawValue: descriptor), compression: compression)
        writer.lendsStablePages = true
        try writer.writeBegin(begin)
        fillGuest(memory, seed: 1)
        try writer.writeRound(0, pages: [PageRange(segment: 0, firstPage: 0, count: UInt64(pageCount))])
        // Uneven calls, as a sender's slices cross batch and lane boundaries.
        var page = 0
        for size in [3, 1000, 2048, 45, pageCount - 3096] {
            try writer.writePages(
                segment: 0, firstPage: UInt64(page), count: UInt64(size),
                from: memory + page * StreamFormat.pageSize)
            page += size
        }
        // The lent pages must stay until the reader has them.
        writer.waitUntilConsumed()
        fillGuest(memory, seed: 2)
        try writer.writeRound(1, pages: [resent])
        try writer.writePages(
            segment: 0, firstPage: resent.firstPage, count: resent.count,
            from: memory + Int(resent.firstPage) * StreamFormat.pageSize, mayChange: true)
        try writer.writeEnd(sourcePauseTime: 0)
        writer.waitUntilConsumed()
    }

    @Test(arguments: [Compression.none, .lz4()])
    func everyPageArrivesExactThroughAPipe(compression: Compression) throws {
        signal(SIGPIPE, SIG_IGN)
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        let (readEnd, writeEnd) = (ends[0], ends[1])
        let writing = WriterThread {
            defer { close(writeEnd) }
            do { try Self.writeStream(to: writeEnd, compression: compression) } catch { return "\(error)" }
            return nil
        }
        let sink = MemoryPageSink(machine: Self.begin.machine)
        do {
            defer { close(readEnd) }  // a failed read must not leave the writer blocked
            let reader = try StreamReader(input: FileDescriptor(rawValue: readEnd))
            while try reader.next(into: sink) != nil {}
            #expect(reader.statistics.pages == UInt64(Self.pageCount) + Self.resent.count)
            #expect((reader.statistics.compressedBatches > 0) == (compression != .none))
        }
        #expect(writing.join() == nil)

        let expected = UnsafeMutableRawPointer.allocate(byteCount: StreamFormat.pageSize, alignment: 4096)
        defer { expected.deallocate() }
        var wrong: [Int] = []
        for page in 0..<Self.pageCount {
            let seed: UInt64 = Self.resent.firstPage <= page && page < Self.resent.firstPage + Self.resent.count ? 2 : 1
            SampleStream.fill(expected, index: UInt64(page), seed: seed)
            if memcmp(expected, sink.segments[0].baseAddress! + page * StreamFormat.pageSize, StreamFormat.pageSize) != 0 {
                wrong.append(page)
            }
        }
        #expect(wrong.isEmpty, "pages that arrived wrong: \(wrong.prefix(10))")
    }

    /// Lent pages are references: one changed before the reader took it fails its record's checksum
    /// instead of arriving silently changed; copied pages are unaffected.
    @Test(arguments: [true, false])
    func aLentPageChangedTooEarlyFailsItsChecksum(lend: Bool) throws {
        signal(SIGPIPE, SIG_IGN)
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]) }
        let pages = UnsafeMutableRawPointer.allocate(byteCount: 8 * StreamFormat.pageSize, alignment: 4096)
        defer { pages.deallocate() }
        pages.initializeMemory(as: UInt8.self, repeating: 0x5a, count: 8 * StreamFormat.pageSize)
        do {
            defer { close(ends[1]) }
            // The whole stream fits in the pipe, so it is written before anything is read.
            let writer = try StreamWriter(output: FileDescriptor(rawValue: ends[1]), compression: .none)
            writer.lendsStablePages = lend
            try writer.writeBegin(SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: 1))
            try writer.writeRound(0, pages: [PageRange(segment: 0, firstPage: 0, count: 8)])
            try writer.writePages(segment: 0, firstPage: 0, count: 8, from: pages)
            try writer.writeEnd(sourcePauseTime: 0)
        }
        (pages + 3 * StreamFormat.pageSize).storeBytes(of: 0xff, as: UInt8.self)
        let reader = try StreamReader(input: FileDescriptor(rawValue: ends[0]))
        var failure: StreamError?
        do {
            while try reader.next(into: DiscardingPageSink()) != nil {}
        } catch let error as StreamError {
            failure = error
        }
        #expect(failure?.kind == (lend ? .checksumMismatch : nil), "\(failure?.description ?? "no error")")
    }
}

/// Runs a writer on a thread of its own: blocking pipe I/O on the tests' cooperative threads can starve it.
final class WriterThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> String?
    private var result: String?

    init(_ body: @escaping () -> String?) {
        self.body = body
        let context = Unmanaged.passRetained(self).toOpaque()
        pthread_create(
            &thread, nil,
            { context in
                let writer = Unmanaged<WriterThread>.fromOpaque(context!).takeRetainedValue()
                writer.result = writer.body()
                return nil
            }, context)
    }

    /// Waits for the writer; its error, or nil.
    func join() -> String? {
        pthread_join(thread, nil)
        return result
    }
}
