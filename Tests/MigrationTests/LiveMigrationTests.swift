import MachineDescription
import SystemPackage
import Testing
import VMStream

@testable import Migration

#if canImport(Glibc)
    import Glibc
#endif

/// Live rounds over a fake guest that keeps writing pages: whatever it wrote before the pause must arrive.
@Suite struct LiveMigrationTests {
    func liveSend(_ source: FakeSource, convergence: Convergence) throws -> (FileDescriptor, [TransferProgress]) {
        let stream = try makeMemoryFile(size: 0)
        let sender = Sender(
            source: source, output: stream,
            options: SendOptions(mode: .live, compression: .none, keepRunning: false, convergence: convergence))
        var rounds: [TransferProgress] = []
        sender.onProgress = { if $0.event != .progress { rounds.append($0) } }
        _ = try sender.run()
        _ = try stream.seek(offset: 0, from: .start)
        return (stream, rounds)
    }

    func receiveAndCompare(_ stream: FileDescriptor, with source: FakeSource) throws {
        var made: [FakeDestination] = []
        let receiver = Receiver(
            input: stream, options: ReceiveOptions(name: "copy"), checkCompatibility: { _ in },
            makeDestination: { config in
                let destination = try FakeDestination(config: config)
                made.append(destination)
                return destination
            },
            makeCheck: { _ in AcceptingCheck() })
        _ = try receiver.run()
        let destination = try #require(made.first)
        for page in 0..<(source.config.memorySize / 4096) {
            #expect(try destination.bytes(page: page) == source.bytes(page: page), "page \(page) differs")
        }
    }

    @Test func everyPageWrittenBeforeThePauseArrives() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<512))
        source.pagesDirtiedPerRound = { round, _ in max(0, 200 - round * 40) }
        let (stream, rounds) = try liveSend(
            source, convergence: Convergence(downtimeTarget: .zero, maxRounds: 8, switchOverCost: .zero))
        defer { try? stream.close() }
        #expect(source.pauses == 1 && source.paused && !source.dirtyLogging)
        #expect(rounds.last?.isFinal == true)
        #expect(rounds.count >= 3, "dirty pages are sent in rounds after round 0")
        try receiveAndCompare(stream, with: source)
    }

    @Test func aQuietGuestSwitchesOverAtOnce() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<64))
        let (stream, rounds) = try liveSend(source, convergence: Convergence())
        defer { try? stream.close() }
        #expect(rounds.count == 2, "round 0, then the final round: nothing was dirtied")
        #expect(source.throttles.isEmpty)
        try receiveAndCompare(stream, with: source)
    }

    @Test func aGuestThatOutrunsTheStreamIsThrottledAndStillCompletes() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<256))
        source.pagesDirtiedPerRound = { _, throttle in 300 * (100 - throttle) / 100 }
        let (stream, rounds) = try liveSend(
            source, convergence: Convergence(downtimeTarget: .zero, maxRounds: 6, switchOverCost: .zero))
        defer { try? stream.close() }
        #expect(rounds.count == 6, "the round cap switches over")
        #expect(Array(source.throttles.prefix(2)) == [20, 30], "auto-converge steps 20 %, then +10 %")
        #expect(source.throttles.last == 0, "the throttle is lifted after the send")
        try receiveAndCompare(stream, with: source)
    }

    @Test func withoutAutoConvergeNothingIsThrottled() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<256))
        source.pagesDirtiedPerRound = { _, _ in 300 }
        let (stream, rounds) = try liveSend(
            source, convergence: Convergence(downtimeTarget: .zero, maxRounds: 4, autoConverge: false, switchOverCost: .zero))
        defer { try? stream.close() }
        #expect(rounds.count == 4 && source.throttles.isEmpty)
        try receiveAndCompare(stream, with: source)
    }

    @Test func dirtyPagesBecomeRanges() {
        var dirty = DirtyPages(pageCounts: [130, 10])
        dirty.merge(segment: 0, [0b1110, ~0, 0b11])
        dirty.merge(segment: 1, [~0])
        #expect(dirty.count == 3 + 64 + 2 + 10)
        #expect(
            dirty.ranges == [
                PageRange(segment: 0, firstPage: 1, count: 3), PageRange(segment: 0, firstPage: 64, count: 66),
                PageRange(segment: 1, firstPage: 0, count: 10),
            ])
    }
}

@Suite struct SwitchOverTests {
    /// A pause that costs more than the target by itself: rounds that can no longer shorten it are not worth sending.
    @Test func aSwitchOverCostAboveTheTargetEndsTheRoundsOnceThePagesAreASmallPart() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<256))
        source.pagesDirtiedPerRound = { _, _ in 2 }
        let stream = try makeMemoryFile(size: 0)
        defer { try? stream.close() }
        let convergence = Convergence(downtimeTarget: .milliseconds(1), maxRounds: 30, switchOverCost: .seconds(10))
        let sender = Sender(
            source: source, output: stream,
            options: SendOptions(mode: .live, compression: .none, keepRunning: false, convergence: convergence))
        var rounds: [TransferProgress] = []
        sender.onProgress = { if $0.event != .progress { rounds.append($0) } }
        _ = try sender.run()
        #expect(rounds.count == 2, "round 0, then the final round")
        #expect(source.throttles.isEmpty)
        #expect((rounds.first?.expectedDowntime ?? 0) >= 10, "the fixed cost is part of the expected downtime")
    }
}

/// Manual dirty-log clearing: bits persist until the sender clears a page just before copying it.
@Suite struct ManualClearingTests {
    let live = LiveMigrationTests()
    let convergence = Convergence(downtimeTarget: .zero, maxRounds: 8, switchOverCost: .zero)

    func manualSource() throws -> FakeSource {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<512))
        source.manualClear = true
        source.pagesDirtiedPerRound = { round, _ in max(0, 300 - round * 40) }
        return source
    }

    /// Each round's page ranges, read back from the stream.
    func roundPages(_ stream: FileDescriptor) throws -> [Int: Set<PageRange>] {
        _ = try stream.seek(offset: 0, from: .start)
        let reader = try StreamReader(input: stream)
        var rounds: [Int: Set<PageRange>] = [:]
        while let record = try reader.next(into: DiscardingPageSink()) {
            if case .round(let number, let ranges) = record { rounds[Int(number), default: []].formUnion(ranges) }
        }
        _ = try stream.seek(offset: 0, from: .start)
        return rounds
    }

    @Test func everyPageWrittenBeforeThePauseArrives() throws {
        let source = try manualSource()
        source.pagesDirtiedPerClear = 5
        let (stream, rounds) = try live.liveSend(source, convergence: convergence)
        defer { try? stream.close() }
        #expect(rounds.count >= 3 && rounds.last?.isFinal == true)
        #expect(!source.clears.isEmpty, "rounds after round 0 clear their pages")
        try live.receiveAndCompare(stream, with: source)
    }

    @Test func aPageWrittenBetweenFetchAndClearIsStillSent() throws {
        let source = try manualSource()
        var rewritten: [UInt64] = []
        // The guest writes the first page of every clear once more: after the fetch that named it, before its clear.
        source.writesBeforeClear = { _, clearing in
            guard let first = clearing.first else { return [] }
            rewritten.append(first)
            return [first]
        }
        let (stream, _) = try live.liveSend(source, convergence: convergence)
        defer { try? stream.close() }
        #expect(!rewritten.isEmpty)
        try live.receiveAndCompare(stream, with: source)
    }

    @Test func pagesNeverSentAreNeverCleared() throws {
        let source = try manualSource()
        source.pagesDirtiedPerClear = 20
        let (stream, rounds) = try live.liveSend(source, convergence: convergence)
        defer { try? stream.close() }
        let sent = try roundPages(stream)
        #expect(!source.clears.isEmpty)
        let finalRound = rounds.count - 1
        var clearedInRound: [Int: Set<UInt64>] = [:]
        for clear in source.clears {
            // Round n is sent after fetch n: round 0 and the final round, sent with the guest paused, never clear.
            #expect(clear.fetches >= 1 && clear.fetches < finalRound, "clear in round \(clear.fetches)")
            let ranges = sent[clear.fetches] ?? []
            for page in clear.pages {
                #expect(
                    ranges.contains { $0.segment == clear.segment && ($0.firstPage..<$0.firstPage + $0.count).contains(page) },
                    "page \(page) cleared in round \(clear.fetches) but not sent in it")
                #expect(clearedInRound[clear.fetches, default: []].insert(page).inserted, "page \(page) cleared twice in a round")
            }
        }
        // Every page a live round after round 0 sent was cleared first.
        for round in 1..<finalRound {
            let pages = Set((sent[round] ?? []).flatMap { $0.firstPage..<$0.firstPage + $0.count })
            #expect(pages == clearedInRound[round] ?? [], "round \(round)")
        }
        try live.receiveAndCompare(stream, with: source)
    }

    @Test func withoutManualClearingNothingIsCleared() throws {
        let source = try manualSource()
        source.manualClear = false
        let (stream, _) = try live.liveSend(source, convergence: convergence)
        defer { try? stream.close() }
        #expect(source.clears.isEmpty)
        try live.receiveAndCompare(stream, with: source)
    }
}

/// How a round's pages are cleared in batches.
@Suite struct DirtyLogClearerTests {
    /// Slices a round as the sender does and collects the clears made before each slice.
    func clears(_ dirty: DirtyPages, slice: UInt64) -> [(segment: Int, firstPage: UInt64, bitmap: [UInt64])] {
        var clearer = DirtyLogClearer(pages: dirty, pagesPerRequest: slice)
        var cleared = DirtyPages(pageCounts: dirty.pageCounts)
        var requests: [(Int, UInt64, [UInt64])] = []
        for range in dirty.ranges {
            var page = range.firstPage
            while page < range.firstPage + range.count {
                let count = min(slice, range.firstPage + range.count - page)
                if let clear = clearer.request(segment: range.segment, firstPage: page, count: count) {
                    #expect(clear.firstPage % 64 == 0)
                    var words = [UInt64](repeating: 0, count: Int(clear.firstPage / 64))
                    words += clear.bitmap
                    var overlap = cleared
                    overlap.merge(segment: range.segment, words)
                    #expect(
                        overlap.count == cleared.count + UInt64(clear.bitmap.reduce(0) { $0 + $1.nonzeroBitCount }),
                        "no page is cleared twice")
                    cleared = overlap
                    requests.append((range.segment, clear.firstPage, clear.bitmap))
                }
                // The slice's pages are cleared before it is copied.
                for page in page..<page + count {
                    #expect(
                        cleared.bitmaps[range.segment][Int(page / 64)] & (1 << (page % 64)) != 0,
                        "page \(page) copied before its clear")
                }
                page += count
            }
        }
        #expect(cleared == dirty, "exactly the round's pages are cleared")
        return requests
    }

    @Test func aContiguousRoundClearsSliceBySlice() {
        var dirty = DirtyPages(pageCounts: [10_000])
        dirty.merge(segment: 0, [UInt64](repeating: ~0, count: 157))
        let requests = clears(dirty, slice: 2048)
        #expect(requests.map(\.firstPage) == [0, 2048, 4096, 6144, 8192])
        #expect(requests.last?.bitmap.count == 29, "the last request reaches the segment's end")
    }

    @Test func scatteredPagesAreClearedInBatchesNotOneRequestPerRun() {
        var dirty = DirtyPages(pageCounts: [1 << 20, 1000])
        var words = [UInt64](repeating: 0, count: (1 << 20) / 64)
        for index in stride(from: 0, to: words.count, by: 3) { words[index] = 0b1010_0101 << UInt64(index % 50) }
        dirty.merge(segment: 0, words)
        dirty.merge(segment: 1, [1, 0, 0, 1 << 63, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        let requests = clears(dirty, slice: 2048)
        #expect(dirty.ranges.count > 20_000)
        #expect(requests.count < 60, "\(requests.count) requests")
        #expect(requests.allSatisfy { $0.bitmap.count <= DirtyLogClearer.maximumWords })
        #expect(requests.filter { $0.segment == 1 }.count == 1)
    }
}
