import Glibc
import MachineDescription
import Testing

@testable import VMStream

/// Live continuations (`vmsend -t` of a live stream): a stream cut after any byte is taken up from the writer's
/// journal at the receiver's last verified record, and what the continuation sends (the rest of the round, the
/// lists of later rounds, the pages written since) leaves the receiver's memory exactly the source's.
@Suite struct LiveContinuationTests {
    static let pages = 256
    static let begin = SampleStream.begin(
        memorySize: UInt64(pages * StreamFormat.pageSize), uuid: Fixture.uuid, creationTime: Fixture.creationTime)
    /// Round lists after round 0 (which sends every page); each round's pages change just before it is sent.
    static let laterRounds: [[PageRange]] = [
        [
            PageRange(segment: 0, firstPage: 10, count: 40), PageRange(segment: 0, firstPage: 100, count: 20),
            PageRange(segment: 0, firstPage: 200, count: 1),
        ],
        [PageRange(segment: 0, firstPage: 5, count: 3), PageRange(segment: 0, firstPage: 30, count: 1)],
    ]
    /// Written after the break, before the continuation.
    static let writtenSinceBreak = [
        PageRange(segment: 0, firstPage: 7, count: 2), PageRange(segment: 0, firstPage: 250, count: 6),
    ]

    /// A source memory: page p holds `fill(p, seed: versions[p])`, or zeroes for version 0.
    final class Source {
        var versions = (0..<LiveContinuationTests.pages).map { $0 % 7 == 0 ? 0 : 1 }
        let buffer = UnsafeMutableRawPointer.allocate(
            byteCount: LiveContinuationTests.pages * StreamFormat.pageSize, alignment: 4096)
        deinit { buffer.deallocate() }

        func write(_ ranges: [PageRange], version: Int) {
            for range in ranges {
                for page in range.firstPage..<(range.firstPage + range.count) { versions[Int(page)] = version }
            }
        }

        func send(_ ranges: [PageRange], with writer: StreamWriter) throws {
            for range in ranges {
                for page in range.firstPage..<(range.firstPage + range.count) {
                    let target = buffer + Int(page) * StreamFormat.pageSize
                    if versions[Int(page)] == 0 {
                        target.initializeMemory(as: UInt8.self, repeating: 0, count: StreamFormat.pageSize)
                    } else {
                        SampleStream.fill(target, index: page, seed: UInt64(versions[Int(page)]))
                    }
                }
                // Records of at most 32 pages, so that a cut falls between pages of a round, not only between rounds.
                var page = range.firstPage
                while page < range.firstPage + range.count {
                    let count = min(32, range.firstPage + range.count - page)
                    try writer.writePages(
                        segment: 0, firstPage: page, count: count, from: buffer + Int(page) * StreamFormat.pageSize)
                    page += count
                }
            }
        }

        func writeState(with writer: StreamWriter) throws {
            try writer.writeKernelState(StateChunk(name: "vcpu0/regs", version: 1, data: [UInt8](repeating: 1, count: 144)))
            try writer.writeKernelState(StateChunk(name: "vm/pit", version: 1, data: [UInt8](repeating: 7, count: 112)))
            for device in LiveContinuationTests.begin.machine.devices {
                try writer.writeDeviceState(StateChunk(name: device.name, version: device.version, data: Array(device.kind.utf8)))
            }
        }

        func matches(_ sink: MemoryPageSink) -> Bool {
            let expected = Source()
            expected.versions = versions
            return (0..<LiveContinuationTests.pages).allSatisfy { page in
                let got = sink.segments[0].baseAddress! + page * StreamFormat.pageSize
                let want = UnsafeMutableRawPointer.allocate(byteCount: StreamFormat.pageSize, alignment: 4096)
                defer { want.deallocate() }
                if versions[page] == 0 {
                    want.initializeMemory(as: UInt8.self, repeating: 0, count: StreamFormat.pageSize)
                } else {
                    SampleStream.fill(want, index: UInt64(page), seed: UInt64(versions[page]))
                }
                return memcmp(got, want, StreamFormat.pageSize) == 0
            }
        }
    }

    /// The whole first send, with its journal: round 0, the later rounds (each after its pages changed), the state.
    static func firstSend(
        _ compression: Compression, source: Source, pauseTime: UInt64
    ) throws -> (bytes: [UInt8], journal: StreamJournal) {
        let sink = MemorySink()
        let writer = StreamWriter(sink: sink, compression: compression)
        writer.keepJournal()
        try writer.writeBegin(begin)
        let everything = [PageRange(segment: 0, firstPage: 0, count: UInt64(pages))]
        try writer.writeRound(0, pages: everything)
        try source.send(everything, with: writer)
        for (index, list) in laterRounds.enumerated() {
            source.write(list, version: index + 2)
            try writer.writeRound(UInt32(index + 1), pages: list)
            try source.send(list, with: writer)
        }
        writer.journal!.notePause(at: pauseTime)
        try source.writeState(with: writer)
        try writer.writeEnd(sourcePauseTime: pauseTime)
        return (sink.bytes, try StreamJournal.decode(writer.journal!.encode()))
    }

    /// Reads `bytes` into `memory` until they end; returns the checkpoint when they broke off.
    static func read(
        _ bytes: [UInt8], into memory: MemoryPageSink, adopting held: ReaderCheckpoint? = nil
    ) throws -> ReaderCheckpoint? {
        let reader = StreamReader(bytes: bytes)
        var kernel = held?.kernel ?? []
        var devices = held?.devices ?? []
        do {
            while let record = try reader.next(into: memory) {
                switch record {
                case .resume: try reader.adopt(held!)
                case .kernelState(let chunk): kernel.append(chunk)
                case .deviceState(let chunk): devices.append(chunk)
                case .end: return nil
                default: break
                }
            }
            return nil
        } catch let error as StreamError where error.kind == .truncated {
            var point = reader.checkpoint()
            point?.kernel = kernel
            point?.devices = devices
            return point
        }
    }

    @Test(arguments: [Compression.none, .lz4()], [false, true])
    func aLiveStreamCutAnywhereEndsWithTheSourcesMemory(compression: Compression, pausedSinceBreak: Bool) throws {
        let pauseTime: UInt64 = pausedSinceBreak ? Fixture.creationTime + 9 : 0
        let (whole, journal) = try Self.firstSend(compression, source: Source(), pauseTime: pauseTime)
        var cuts = Array(stride(from: 3000, to: whole.count, by: 12_289))
        cuts += [whole.count - 1, whole.count - 60]
        for cut in cuts {
            let source = Source()
            _ = try Self.firstSend(compression, source: source, pauseTime: pauseTime)
            let memory = MemoryPageSink(machine: Self.begin.machine)
            guard let held = try Self.read(Array(whole[..<cut]), into: memory) else {
                Issue.record("cut at \(cut) of \(whole.count) kept nothing")
                continue
            }
            if !pausedSinceBreak { source.write(Self.writtenSinceBreak, version: 9) }
            let sink = MemorySink()
            let writer = StreamWriter(sink: sink, compression: compression)
            var point = held.point
            point.attempt += 1
            let place: LiveResumePlace
            do {
                place = try writer.continueLive(from: point, journal: journal)
            } catch {
                Issue.record("cut at \(cut): \(error)")
                continue
            }
            switch place {
            case .beforeRounds:
                let everything = [PageRange(segment: 0, firstPage: 0, count: UInt64(Self.pages))]
                try writer.writeRound(0, pages: everything)
                try source.send(everything, with: writer)
            case .inRound(let number, let rest, let later):
                try source.send(rest, with: writer)
                var next = later.flatMap { $0 }
                if !pausedSinceBreak { next += Self.writtenSinceBreak }
                let list = Self.merged(next)
                if !list.isEmpty {
                    try writer.writeRound(number + 1, pages: list)
                    try source.send(list, with: writer)
                }
            case .inState:
                // A source that ran since cannot give the state the receiver holds part of: the sender refuses.
                #expect(cut > whole.count - 500, "cut at \(cut)")
                if !pausedSinceBreak { continue }
            }
            try source.writeState(with: writer)
            try writer.writeEnd(sourcePauseTime: pauseTime)
            #expect(try Self.read(sink.bytes, into: memory, adopting: held) == nil, "cut at \(cut): the continuation ends")
            #expect(source.matches(memory), "cut at \(cut) (\(place)): the receiver holds the source's memory")
            // Nothing verified travels again: the continuation is its header, RESUME and what follows the point.
            #expect(sink.bytes.count < whole.count - Int(held.point.offset) + 104 + 16 * 4096 + 4096)
        }
    }

    @Test func aTokenFromAnotherPlaceIsRefused() throws {
        let (whole, journal) = try Self.firstSend(.none, source: Source(), pauseTime: 0)
        let memory = MemoryPageSink(machine: Self.begin.machine)
        var point = try #require(try Self.read(Array(whole[..<50_000]), into: memory)).point
        point.running ^= 1
        #expect(throws: StreamError.self) {
            try StreamWriter(sink: MemorySink(), compression: .none).continueLive(from: point, journal: journal)
        }
        var damaged = journal.encode()
        damaged[20] ^= 1
        #expect(throws: StreamError.self) { try StreamJournal.decode(damaged) }
    }

    /// Sorted, overlapping ranges joined: a round's list.
    static func merged(_ ranges: [PageRange]) -> [PageRange] {
        var out: [PageRange] = []
        for range in ranges.sorted(by: { $0.firstPage < $1.firstPage }) {
            if let last = out.last, range.firstPage <= last.firstPage + last.count {
                out[out.count - 1].count = max(last.count, range.firstPage + range.count - last.firstPage)
            } else {
                out.append(range)
            }
        }
        return out
    }

    /// A continuation that breaks again right after finishing its round, before listing the later rounds' pages it
    /// owes: the journal it hands over still owes them, so the next continuation sends them.
    @Test(arguments: [false, true])
    func aContinuationThatBreaksBeforeListingWhatItOwesHandsItOn(pausedSinceBreak: Bool) throws {
        let pauseTime: UInt64 = pausedSinceBreak ? Fixture.creationTime + 9 : 0
        let (whole, journal) = try Self.firstSend(.none, source: Source(), pauseTime: pauseTime)
        for cut in [3000, whole.count / 4, whole.count * 2 / 3] {
            let source = Source()
            _ = try Self.firstSend(.none, source: source, pauseTime: pauseTime)
            let memory = MemoryPageSink(machine: Self.begin.machine)
            let held = try #require(try Self.read(Array(whole[..<cut]), into: memory))
            if !pausedSinceBreak { source.write(Self.writtenSinceBreak, version: 9) }
            // The first continuation: the rest of its round, then the guest writes and the send fetches (and so
            // takes from the log) what it wrote, and breaks.
            let firstSink = MemorySink()
            let first = StreamWriter(sink: firstSink, compression: .none)
            first.keepJournal()
            var point = held.point
            point.attempt += 1
            guard case .inRound(_, let rest, let later) = try first.continueLive(from: point, journal: journal) else {
                Issue.record("cut at \(cut) is not in a round")
                continue
            }
            #expect(!later.isEmpty, "cut at \(cut): the later rounds are owed")
            try source.send(rest, with: first)
            let fetched = [PageRange(segment: 0, firstPage: 60, count: 4)]
            if !pausedSinceBreak {
                source.write(fetched, version: 11)
                try first.journal!.recordFetch { fetched }
            }
            let handed = try StreamJournal.decode(first.journal!.seal())
            #expect(throws: StreamError.self) { try first.writeRound(9, pages: fetched) }
            let again = try #require(
                try Self.read(Array(firstSink.bytes[..<(firstSink.bytes.count - 100)]), into: memory, adopting: held))
            // The second continuation, from the handed-over journal.
            let sink = MemorySink()
            let writer = StreamWriter(sink: sink, compression: .none)
            point = again.point
            point.attempt += 1
            guard case .inRound(let number, let rest2, let owed) = try writer.continueLive(from: point, journal: handed) else {
                Issue.record("cut at \(cut): the second continuation is not in a round")
                continue
            }
            try source.send(rest2, with: writer)
            // What the guest wrote since the first break and no fetch took is still in the source's log.
            let list = Self.merged(owed.flatMap { $0 } + (pausedSinceBreak ? [] : Self.writtenSinceBreak))
            try writer.writeRound(number + 1, pages: list)
            try source.send(list, with: writer)
            try source.writeState(with: writer)
            try writer.writeEnd(sourcePauseTime: pauseTime)
            #expect(try Self.read(sink.bytes, into: memory, adopting: again) == nil)
            #expect(source.matches(memory), "cut at \(cut): the receiver holds the source's memory")
        }
    }
}
