#if canImport(Glibc)
import Glibc
#endif
import MachineDescription
import Migration
import SystemPackage
import Testing
import VMStream

/// Live rounds over a fake guest that keeps writing pages: whatever it wrote before the pause must arrive.
@Suite struct LiveMigrationTests {
    func liveSend(_ source: FakeSource, convergence: Convergence) throws -> (FileDescriptor, [RoundProgress]) {
        let stream = try makeMemoryFile(size: 0)
        let sender = Sender(source: source, output: stream,
                            options: SendOptions(mode: .live, compression: .none, keepRunning: false, convergence: convergence))
        var rounds: [RoundProgress] = []
        sender.onProgress = { if !$0.inProgress { rounds.append($0) } }
        _ = try sender.run()
        _ = try stream.seek(offset: 0, from: .start)
        return (stream, rounds)
    }

    func receiveAndCompare(_ stream: FileDescriptor, with source: FakeSource) throws {
        var made: [FakeDestination] = []
        let receiver = Receiver(input: stream, options: ReceiveOptions(name: "copy"), checkCompatibility: { _ in },
                                makeDestination: { config in
                                    let destination = try FakeDestination(config: config)
                                    made.append(destination)
                                    return destination
                                })
        _ = try receiver.run()
        let destination = try #require(made.first)
        for page in 0..<(source.config.memorySize / 4096) {
            #expect(try destination.bytes(page: page) == source.bytes(page: page), "page \(page) differs")
        }
    }

    @Test func everyPageWrittenBeforeThePauseArrives() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<512))
        source.pagesDirtiedPerRound = { round, _ in max(0, 200 - round * 40) }
        let (stream, rounds) = try liveSend(source, convergence: Convergence(downtimeTarget: .zero, maxRounds: 8, switchOverCost: .zero))
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
        let (stream, rounds) = try liveSend(source, convergence: Convergence(downtimeTarget: .zero, maxRounds: 6, switchOverCost: .zero))
        defer { try? stream.close() }
        #expect(rounds.count == 6, "the round cap switches over")
        #expect(Array(source.throttles.prefix(2)) == [20, 30], "auto-converge steps 20 %, then +10 %")
        #expect(source.throttles.last == 0, "the throttle is lifted after the send")
        try receiveAndCompare(stream, with: source)
    }

    @Test func withoutAutoConvergeNothingIsThrottled() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<256))
        source.pagesDirtiedPerRound = { _, _ in 300 }
        let (stream, rounds) = try liveSend(source, convergence: Convergence(downtimeTarget: .zero, maxRounds: 4, autoConverge: false, switchOverCost: .zero))
        defer { try? stream.close() }
        #expect(rounds.count == 4 && source.throttles.isEmpty)
        try receiveAndCompare(stream, with: source)
    }

    @Test func dirtyPagesBecomeRanges() {
        var dirty = DirtyPages(pageCounts: [130, 10])
        dirty.merge(segment: 0, [0b1110, ~0, 0b11])
        dirty.merge(segment: 1, [~0])
        #expect(dirty.count == 3 + 64 + 2 + 10)
        #expect(dirty.ranges == [PageRange(segment: 0, firstPage: 1, count: 3), PageRange(segment: 0, firstPage: 64, count: 66),
                                 PageRange(segment: 1, firstPage: 0, count: 10)])
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
        let sender = Sender(source: source, output: stream,
                            options: SendOptions(mode: .live, compression: .none, keepRunning: false, convergence: convergence))
        var rounds: [RoundProgress] = []
        sender.onProgress = { if !$0.inProgress { rounds.append($0) } }
        _ = try sender.run()
        #expect(rounds.count == 2, "round 0, then the final round")
        #expect(source.throttles.isEmpty)
        #expect(rounds.first.map { $0.expectedDowntime >= 10 } == true, "the fixed cost is part of the expected downtime")
    }
}
