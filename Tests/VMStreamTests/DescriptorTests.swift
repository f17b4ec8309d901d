import Glibc
import MachineDescription
import SystemPackage
import Testing

@testable import VMStream

/// Writer and reader over real descriptors: pipes, terminals, closed readers.
@Suite struct DescriptorTests {
    /// Runs `body` on its own thread (blocking I/O must not hold a Swift concurrency thread).
    final class Thread: @unchecked Sendable {
        private var thread = pthread_t()
        private let body: () -> Void
        init(_ body: @escaping () -> Void) {
            self.body = body
            let box = Unmanaged.passRetained(self).toOpaque()
            pthread_create(
                &thread, nil,
                { box in
                    let me = Unmanaged<Thread>.fromOpaque(box!).takeRetainedValue()
                    me.body()
                    return nil
                }, box)
        }
        func join() { pthread_join(thread, nil) }
    }

    @Test(arguments: [Compression.none, .lz4()])
    func roundTripThroughAPipe(compression: Compression) throws {
        let (readEnd, writeEnd) = try FileDescriptor.pipe()
        let memorySize: UInt64 = 8 << 20
        let begin = SampleStream.begin(memorySize: memorySize, uuid: Fixture.uuid, creationTime: 1)
        nonisolated(unsafe) var writeError: Error?
        let writer = Thread {
            do {
                let writer = try StreamWriter(output: writeEnd, compression: compression)
                try SampleStream.write(to: writer, begin: begin, seed: 3, sourcePauseTime: 2)
            } catch { writeError = error }
            try? writeEnd.close()
        }
        defer { try? readEnd.close() }
        let sink = MemoryPageSink(machine: begin.machine)
        let reader = try StreamReader(input: readEnd)
        var last: StreamRecord?
        while let record = try reader.next(into: sink) { last = record }
        writer.join()
        #expect(writeError == nil)
        guard case .end(let end) = last else {
            Issue.record("no END")
            return
        }
        #expect(end.pages == reader.statistics.pages)
        let expected = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { expected.deallocate() }
        for page in stride(from: 0, to: Int(memorySize / 4096), by: 97) {
            SampleStream.fill(expected, index: UInt64(page), seed: 3)
            #expect(memcmp(expected, sink.segments[0].baseAddress! + page * 4096, 4096) == 0, "page \(page)")
        }
    }

    @Test func closedReaderIsABrokenPipeError() throws {
        signal(SIGPIPE, SIG_IGN)
        let (readEnd, writeEnd) = try FileDescriptor.pipe()
        try readEnd.close()
        defer { try? writeEnd.close() }
        let writer = try StreamWriter(output: writeEnd)
        #expect(throws: StreamError(.io, "cannot write the stream: the reading end was closed (broken pipe)")) {
            try writer.writeBegin(SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: 1))
        }
        // The writer stays failed rather than writing half records later.
        #expect(throws: StreamError.self) { try writer.writeEnd(sourcePauseTime: 0) }
    }

    @Test func terminalsAreRefused() throws {
        // A pseudo-terminal's master side is a terminal too (isatty says so).
        let terminal = try FileDescriptor.open("/dev/ptmx", .readWrite, options: [])
        defer { try? terminal.close() }
        try #require(isatty(terminal.rawValue) == 1, "/dev/ptmx is not a terminal here")
        #expect(throws: StreamError(.terminal, "stream can not be written to a terminal; redirect standard output")) {
            _ = try StreamWriter(output: terminal)
        }
        #expect(throws: StreamError(.terminal, "stream can not be read from a terminal; redirect standard input")) {
            _ = try StreamReader(input: terminal)
        }
    }

    @Test func writerRefusesWhatAReaderWouldReject() throws {
        let writer = StreamWriter(sink: MemorySink(), compression: .none)
        let page = [UInt8](repeating: 1, count: 4096)
        #expect(throws: StreamError.self) { try writer.writeRound(1, pages: []) }
        try writer.writeBegin(SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: 1))
        #expect(throws: StreamError.self) {
            try writer.writeBegin(SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: 1))
        }
        try writer.writeRound(1, pages: [])
        #expect(throws: StreamError.self) { try writer.writeRound(2, pages: [PageRange(segment: 0, firstPage: 255, count: 2)]) }
        try writer.writeRound(2, pages: [PageRange(segment: 0, firstPage: 0, count: 2)])
        try page.withUnsafeBytes { page in
            #expect(throws: StreamError.self) {
                try writer.writePages(segment: 0, firstPage: 1, count: 1, from: page.baseAddress!)
            }
            #expect(throws: StreamError.self) { try writer.writeEnd(sourcePauseTime: 0) }
            try writer.writePages(segment: 0, firstPage: 0, count: 1, from: page.baseAddress!)
            try writer.writePages(segment: 0, firstPage: 1, count: 1, from: page.baseAddress!)
        }
        try writer.writeKernelState(StateChunk(name: "vm/pit", version: 1, data: []))
        #expect(throws: StreamError.self) { try writer.writeKernelState(StateChunk(name: "vm/pit", version: 1, data: [])) }
        #expect(throws: StreamError.self) { try writer.writeDeviceState(StateChunk(name: "nic0", version: 1, data: [])) }
        try writer.writeEnd(sourcePauseTime: 0)
        #expect(throws: StreamError.self) { try writer.writeEnd(sourcePauseTime: 0) }
    }
}

/// The dump's text, which vmstream.1 describes.
@Suite struct DumpTests {
    @Test func dumpPrintsBeginRecordsChecksumsAndSummary() throws {
        var lines: [String] = []
        try StreamDumper(verbosity: 2) { lines.append($0) }.dump(StreamReader(bytes: try Fixture.sample()))
        #expect(lines.first == "BEGIN record")
        #expect(lines.contains("\tuuid = 10111213-1415-1617-1819-1a1b1c1d1e1f"))
        #expect(lines.contains("\tcreation time = 2023-11-14T22:13:20Z (1700000000000000000 ns)"))
        #expect(lines.contains { $0.hasPrefix("record 3 PAGES offset ") && $0.contains(" checksum 0x") })
        #expect(lines.contains("\tPages = 272 (zero pages elided = 146)"))
        #expect(lines.last?.hasPrefix("\tTotal stream length = ") == true)
    }

    @Test func dumpStopsAtTheFirstBadChecksum() throws {
        var bytes = try Fixture.sample()
        bytes[600] ^= 0x10
        var lines: [String] = []
        #expect(throws: StreamError.self) { try StreamDumper(verbosity: 1) { lines.append($0) }.dump(StreamReader(bytes: bytes)) }
        #expect(!lines.contains("SUMMARY:"))
    }
}
