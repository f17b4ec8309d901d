import MachineDescription
import Synchronization
import SystemPackage
import Testing
import VMStream

@testable import Migration

#if canImport(Glibc)
    import Glibc
#endif

/// What both sides report about a transfer: the same rounds, the same stream bytes, one downtime.
@Suite struct ProgressTests {
    /// Events and the start of one side.
    final class Recorder {
        var start: TransferStart?
        var events: [TransferProgress] = []
        var rounds: [TransferProgress] { events.filter { $0.event != .progress } }
    }

    func send(
        _ source: FakeSource, mode: MigrationMode, convergence: Convergence = Convergence()
    ) throws -> (
        FileDescriptor, SendReport, Recorder
    ) {
        let stream = try makeMemoryFile(size: 0)
        let sender = Sender(
            source: source, output: stream,
            options: SendOptions(mode: mode, compression: .none, keepRunning: false, convergence: convergence))
        let recorder = Recorder()
        sender.onStart = { recorder.start = $0 }
        sender.onProgress = { recorder.events.append($0) }
        let report = try sender.run()
        _ = try stream.seek(offset: 0, from: .start)
        return (stream, report, recorder)
    }

    func receive(_ stream: FileDescriptor, leavePaused: Bool = false) throws -> (ReceiveReport, Recorder) {
        let receiver = Receiver(
            input: stream, options: ReceiveOptions(name: "copy", leavePaused: leavePaused), checkCompatibility: { _ in },
            makeDestination: { try FakeDestination(config: $0) }, makeCheck: { _ in AcceptingCheck() })
        let recorder = Recorder()
        receiver.onStart = { recorder.start = $0 }
        receiver.onProgress = { recorder.events.append($0) }
        return (try receiver.run(), recorder)
    }

    @Test func bothSidesCountTheSameRoundsPagesAndStreamBytes() throws {
        let source = try FakeSource(config: testConfig(memory: 4 << 20), writtenPages: Array(0..<512))
        source.pagesDirtiedPerRound = { round, _ in round < 3 ? 64 : 0 }
        let (stream, sent, sender) = try send(source, mode: .live, convergence: Convergence(maxRounds: 4))
        defer { try? stream.close() }
        let (received, receiver) = try receive(stream)

        #expect(sender.start?.uuid == receiver.start?.uuid)
        #expect(sender.start?.machine == "fake" && receiver.start?.machine == "copy")
        #expect(sender.start?.mode == "live" && receiver.start?.mode == "live")
        // A stream read from a file has a known length; the sender's estimate is every populated page whole.
        #expect(receiver.start?.estimatedTotalBytes == sent.statistics.bytes)
        #expect((sender.start?.estimatedTotalBytes ?? 0) >= 512 * 4096)

        #expect(sender.rounds.map(\.round) == receiver.rounds.map(\.round))
        #expect(sender.rounds.map(\.pagesDone) == receiver.rounds.map(\.pagesDone))
        #expect(sender.rounds.map(\.pagesInRound) == receiver.rounds.map(\.pagesInRound))
        #expect(sender.rounds.map(\.event) == receiver.rounds.map(\.event))
        #expect(receiver.rounds.last?.event == .final && receiver.rounds.dropLast().allSatisfy { $0.event == .round })
        #expect(sent.statistics.bytes == received.statistics.bytes)
        #expect(sent.rounds == received.rounds)
        // The receiver knows nothing of the guest's dirtying or the sender's throttle: '-' in -P.
        #expect(receiver.rounds.allSatisfy { $0.dirtyPages == nil && $0.throttlePercent == nil })
        #expect(sender.rounds.dropLast().allSatisfy { $0.dirtyPages != nil && $0.expectedDowntime != nil })
        #expect(sender.rounds.last?.dirtyPages == nil, "nothing is dirtied after the final round")
        if case .measured = received.downtime {} else { Issue.record("a live receive measures its downtime") }
    }

    @Test func aColdRestoreHasNoDowntimeAndAPausedOneHasNotEnded() throws {
        let source = try FakeSource(writtenPages: [0, 1, 2])
        let (cold, _, _) = try send(source, mode: .cold)
        defer { try? cold.close() }
        #expect(try receive(cold).0.downtime == .coldRestore)
        let (warm, _, _) = try send(try FakeSource(writtenPages: [0, 1, 2]), mode: .warm)
        defer { try? warm.close() }
        let (paused, _) = try receive(warm, leavePaused: true)
        #expect(paused.downtime == .notResumed)
        #expect(paused.parsableSummary.split(separator: "\t")[9] == "-")
        #expect(paused.summary(dryRun: false).contains("left paused"))
    }

    @Test func aMissedDowntimeTargetNamesBothFigures() throws {
        let report = SendReport(
            machine: "a", mode: .live, guestBytes: 1 << 20, statistics: StreamStatistics(), rounds: 3, seconds: 1,
            pausedSeconds: 0.2, sourceWasRunning: true, stream: "5c3e7a52-0d6f-4c1a-9a43-2f1e0b7d9c11", sourceMigrated: true)
        let missed = try #require(report.missedDowntimeTarget(.milliseconds(50)))
        #expect(missed.contains("target of 50 ms") && missed.contains("paused 200 ms"))
        #expect(report.missedDowntimeTarget(.milliseconds(300)) == nil)
        var warm = report
        warm.mode = .warm
        #expect(warm.missedDowntimeTarget(.milliseconds(50)) == nil, "only a live send has a target")
    }

    @Test func parsableLinesPrintADashForWhatIsUnknown() {
        let progress = TransferProgress(
            event: .progress, round: 2, isFinal: false, pagesDone: 10, pagesInRound: 40, roundBytes: 40960,
            roundSeconds: 0.5, rate: 81920, totalBytes: 1_000_000, elapsed: 2)
        let fields = progress.parsable.split(separator: "\t", omittingEmptySubsequences: false)
        #expect(fields.count == 14)
        #expect(Array(fields[0..<7]) == ["progress", "2", "10", "40", "40960", "500000", "81920"])
        #expect(Array(fields[7...]) == ["-", "-", "-", "-", "1000000", "2000000", "-"])
        let start = TransferStart(mode: "warm", machine: "a", uuid: "u", estimatedTotalBytes: nil)
        #expect(start.parsable == "size\t-\twarm\ta\tu")
    }

    @Test(arguments: [20, 40, 80, 132, 300])
    func theBarFitsTheTerminal(columns: Int) {
        var progress = TransferProgress(
            event: .progress, round: 12, isFinal: false, pagesDone: 123_456, pagesInRound: 523_456,
            roundBytes: 500 << 20, roundSeconds: 3, rate: Double(170 << 20), dirtyRate: Double(12 << 20), throttlePercent: 20,
            totalBytes: 1 << 30, elapsed: 3723, estimatedTotalBytes: 3 << 30)
        for _ in 0..<2 {
            let bar = progress.bar(columns: columns)
            #expect(bar.count <= columns - 1, "\(bar)")
            #expect(bar.hasPrefix(progress.isFinal ? "final round 12 [" : "round 12 ["), "\(bar)")
            #expect(!bar.contains("\n") && !bar.hasSuffix(" "))
            if columns >= 80 { #expect(bar.contains(" 33%  1 GiB/~3 GiB") && bar.contains("170 MiB/s"), "\(bar)") }
            if columns >= 132 { #expect(bar.contains("1:02:03 ETA 2:04:06") && bar.contains("400000 pages left"), "\(bar)") }
            if columns >= 132 && !progress.isFinal { #expect(bar.contains("dirtying 12 MiB/s"), "\(bar)") }
            progress.isFinal = true
        }
    }

    @Test func aRequestPrintsTheLatestProgressAgedToNow() throws {
        let request = ProgressRequest()
        let printed = Printed()
        request.onRaise { printed.add($0) }
        request.raise()
        #expect(printed.all.isEmpty, "nothing before a transfer started")
        var tracker = ProgressTracker(sink: nil, request: request)
        tracker.startRound(0, pages: 100, isFinal: false, totalBytes: 4096)
        tracker.advance(pages: 10, totalBytes: 4096 + 10 * 4096)
        usleep(20_000)
        request.raise()
        let line = try #require(printed.all.first)
        #expect(line.event == .progress && line.pagesDone == 10 && line.pagesLeft == 90)
        #expect(line.elapsed >= 0.02, "a blocked write still counts its time")
    }
}

/// Lines a request printed, from whichever thread.
final class Printed: Sendable {
    private let lines = Mutex<[TransferProgress]>([])
    func add(_ line: TransferProgress) { lines.withLock { $0.append(line) } }
    var all: [TransferProgress] { lines.withLock { $0 } }
}
