import Glibc
import MachineDescription
import SystemSupport
import Testing

@testable import VMStream

/// A guest memory in a test: pages land here, and can be compared with what was sent.
final class MemoryPageSink: PageSink {
    let segments: [UnsafeMutableRawBufferPointer]
    private(set) var zeroed = 0

    init(machine: MachineConfig) {
        segments = machine.segments.map {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int($0.size), alignment: 4096)
            buffer.initializeMemory(as: UInt8.self, repeating: 0xee)
            return buffer
        }
    }

    deinit { for segment in segments { segment.deallocate() } }

    func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? {
        segments[segment].baseAddress! + Int(page) * StreamFormat.pageSize
    }

    func zeroPage(segment: Int, page: UInt64) {
        zeroed += 1
        (segments[segment].baseAddress! + Int(page) * StreamFormat.pageSize)
            .initializeMemory(as: UInt8.self, repeating: 0, count: StreamFormat.pageSize)
    }
}

/// A guest memory that offers to land data pages in place (as one on huge pages does), below `landingLimit` only;
/// the rest come through `store`. Pages whose landing failed are filled with 0xee again, as before the stream.
final class LandingPageSink: PageSink {
    let memory: MemoryPageSink
    let landingLimit: UInt64
    private(set) var storedPages = 0
    private(set) var failedPages = 0

    init(machine: MachineConfig, landingLimit: UInt64 = .max) {
        memory = MemoryPageSink(machine: machine)
        self.landingLimit = landingLimit
    }

    func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? { memory.destination(segment: segment, page: page) }
    func zeroPage(segment: Int, page: UInt64) { memory.zeroPage(segment: segment, page: page) }

    func store(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        storedPages += count
        destination(segment: segment, page: page)!.copyMemory(from: data, byteCount: count * StreamFormat.pageSize)
    }

    func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        guard page + UInt64(count) <= landingLimit else { return nil }
        return destination(segment: segment, page: page)
    }

    func landingFailed(segment: Int, page: UInt64, count: Int) {
        failedPages += count
        destination(segment: segment, page: page)!.initializeMemory(
            as: UInt8.self, repeating: 0xee, count: count * StreamFormat.pageSize)
    }
}

/// A guest memory that lends a staging buffer for each batch's data and checks that every `store` comes from inside
/// the buffer it lent, and that the buffer is given back once per loan, after the batch's stores.
final class StagingPageSink: PageSink {
    let memory: MemoryPageSink
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    private(set) var loans = 0
    private(set) var givenBack = 0
    private(set) var storesFromTheBuffer = 0
    private(set) var storesFromElsewhere = 0

    init(machine: MachineConfig) { memory = MemoryPageSink(machine: machine) }
    deinit { buffer.deallocate() }

    func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? { memory.destination(segment: segment, page: page) }
    func zeroPage(segment: Int, page: UInt64) { memory.zeroPage(segment: segment, page: page) }

    func store(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        let bytes = count * StreamFormat.pageSize
        let lent = loans > givenBack
        if lent && data >= UnsafeRawPointer(buffer.baseAddress!)
            && data + bytes <= UnsafeRawPointer(buffer.baseAddress! + buffer.count)
        {
            storesFromTheBuffer += 1
        } else {
            storesFromElsewhere += 1
        }
        destination(segment: segment, page: page)!.copyMemory(from: data, byteCount: bytes)
    }

    func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer? {
        precondition(loans == givenBack, "lent twice")
        guard bytes <= buffer.count else { return nil }
        loans += 1
        buffer.initializeMemory(as: UInt8.self, repeating: 0xdd)
        return buffer.baseAddress!
    }

    func stagingDone() { givenBack += 1 }
}

/// The 1 MiB sample stream and the memory a plain storing sink ends up with: what any other sink must end up with.
struct StoredSample {
    let bytes: [UInt8]
    let machine: MachineConfig
    let stored: MemoryPageSink

    init(compression: Compression) throws {
        bytes = try Fixture.sample(memorySize: 1 << 20, compression: compression)
        machine = SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime).machine
        stored = MemoryPageSink(machine: machine)
        #expect(Fixture.readAll(bytes, sink: stored).1 == nil)
    }

    /// Reads the sample into `sink`, whose pages end up in `memory`: no error, and the same bytes as `stored`.
    func expectSameMemory(reading sink: some PageSink, into memory: MemoryPageSink) {
        let (_, error) = Fixture.readAll(bytes, sink: sink)
        #expect(error == nil, "\(error?.description ?? "")")
        #expect(memcmp(stored.segments[0].baseAddress!, memory.segments[0].baseAddress!, stored.segments[0].count) == 0)
    }
}

enum Fixture {
    static let uuid: [UInt8] = Array(0x10...0x1f)
    static let creationTime: UInt64 = 1_700_000_000_000_000_000
    static let seed: UInt64 = 42

    /// A small deterministic sample stream: 1 MiB of guest memory, and a disk of `diskSize` bytes when not 0.
    static func sample(memorySize: UInt64 = 1 << 20, compression: Compression = .none, diskSize: UInt64 = 0) throws -> [UInt8] {
        let sink = MemorySink()
        let writer = StreamWriter(sink: sink, compression: compression)
        let begin = SampleStream.begin(memorySize: memorySize, uuid: uuid, creationTime: creationTime, diskSize: diskSize)
        try SampleStream.write(to: writer, begin: begin, seed: seed, sourcePauseTime: creationTime + 5_000_000)
        return sink.bytes
    }

    /// Reads a whole stream, returning its records or the error that stopped it.
    static func readAll(_ bytes: [UInt8], sink: some PageSink = DiscardingPageSink()) -> ([StreamRecord], StreamError?) {
        let reader = StreamReader(bytes: bytes)
        var records: [StreamRecord] = []
        do {
            while let record = try reader.next(into: sink) { records.append(record) }
            return (records, nil)
        } catch let error as StreamError {
            return (records, error)
        } catch {
            return (records, StreamError(.io, "unexpected \(error)"))
        }
    }

    /// Builds a stream record by record, for streams a writer would refuse to produce.
    struct Builder {
        var bytes: [UInt8] = []
        var running: UInt64 = 0
        var records: UInt64 = 0

        init(version: UInt32 = 1, features: UInt32 = 0, flags: UInt32 = 0) {
            var header = ByteWriter()
            header.raw(StreamFormat.magic)
            header.u32(version)
            header.u32(features)
            header.u32(flags)
            header.u32(0)
            running = Checksum.hash(header.bytes)
            header.u64(running)
            bytes = header.bytes
        }

        mutating func record(_ type: UInt16, flags: UInt16 = 0, _ payload: [UInt8], length: UInt32? = nil) {
            let declared = length ?? UInt32(payload.count)
            let headerChecksum = Checksum.header(type: type, flags: flags, length: declared)
            var out = ByteWriter()
            out.u16(type)
            out.u16(flags)
            out.u32(declared)
            out.u64(headerChecksum)
            out.raw(payload)
            let checksum = Checksum.hash(payload, seed: headerChecksum)
            out.u64(checksum)
            bytes += out.bytes
            running = Checksum.chain(running, checksum)
            records += 1
        }

        mutating func begin(memorySize: UInt64 = 1 << 20, diskSize: UInt64 = 0) {
            record(
                RecordType.begin.rawValue,
                Payload.encodeBegin(
                    SampleStream.begin(memorySize: memorySize, uuid: uuid, creationTime: creationTime, diskSize: diskSize)))
        }

        /// A ROUND, or with `disks` a DISK EXTENTS record (ranges then name disks).
        mutating func round(_ number: UInt32, _ ranges: [PageRange], disks: Bool = false) {
            record((disks ? RecordType.diskExtents : .round).rawValue, Payload.encodeRound(number, ranges[...]))
        }

        /// A raw PAGES (or DISK BLOCKS) record; pages from `dataPages` on are zero.
        mutating func pages(segment: UInt16, first: UInt64, count: UInt32, dataPages: Int = 0, disk: Bool = false) {
            var out = ByteWriter()
            out.u16(segment)
            out.u8(0)
            out.u8(0)
            out.u32(count)
            out.u64(first)
            var bitmap = [UInt8](repeating: 0, count: Payload.bitmapSize(Int(count)))
            for index in dataPages..<Int(count) { bitmap[index / 8] |= 1 << UInt8(index % 8) }
            out.raw(bitmap)
            out.raw([UInt8](repeating: 0x5a, count: dataPages * StreamFormat.pageSize))
            record((disk ? RecordType.diskBlocks : .pages).rawValue, out.bytes)
        }

        mutating func chunk(_ type: RecordType, _ name: String) {
            record(type.rawValue, Payload.encodeChunk(StateChunk(name: name, version: 1, data: [1, 2, 3])))
        }

        mutating func end(pages: UInt64, zeroPages: UInt64) {
            let end = StreamEnd(
                pages: pages, zeroPages: zeroPages, bytes: UInt64(bytes.count), records: records,
                sourcePauseTime: 0, streamChecksum: running)
            record(RecordType.end.rawValue, Payload.encodeEnd(end, disks: false))
        }
    }
}
