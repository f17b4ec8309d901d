import Synchronization
import SystemSupport
import VMStream

/// One round as it went (or, mid-round, as it goes), for progress output.
public struct RoundProgress: Sendable {
    public var round: Int
    /// The round that sends the rest with the guest paused.
    public var isFinal: Bool
    /// A progress line in the middle of a round rather than its summary.
    public var inProgress: Bool
    /// Asked for (SIGUSR1) rather than due.
    public var onDemand: Bool
    public var pagesSent: UInt64
    public var pagesInRound: UInt64
    public var streamBytes: UInt64
    public var seconds: Double
    /// Stream bytes per second over all rounds so far: what stdout really accepts.
    public var bandwidth: Double
    /// Pages the guest dirtied while this round was sent (0 until the round ends).
    public var dirtyPagesFound: UInt64
    public var dirtyRate: Double
    /// The pause the rest would take: its pages at the guest bytes per second sent so far, plus the
    /// switch-over's fixed cost (three requests to the source, timed by the last bitmap fetch).
    public var expectedDowntime: Double
    public var throttlePercent: Int
}

/// What a send did, for `vmsend -v`.
public struct SendReport: Sendable {
    public var machine: String
    public var guestBytes: UInt64
    public var statistics: StreamStatistics
    public var rounds: Int
    public var seconds: Double
    /// Time from the pause to END written.
    public var pausedSeconds: Double
    /// False when the source was already paused before the send; it is then left paused.
    public var sourceWasRunning: Bool
    /// What the pause had to send: memory pages, and disk blocks (0 without disks).
    public var finalRoundPages: UInt64 = 0
    public var finalRoundDiskBlocks: UInt64 = 0
    /// Whether the machine has disks whose data travelled.
    public var disksTravelled = false
    /// The stream's UUID, as text.
    public var stream: String
    /// The source recorded itself as `migrated` (a vmrun of control protocol 1 cannot).
    public var sourceMigrated: Bool
}

/// What a send would write, for `vmsend -n -v`, found without pausing or sending anything.
public struct SendEstimate: Sendable {
    public var machine: String
    public var guestBytes: UInt64
    public var populatedPages: UInt64
    public var zeroPages: UInt64
    /// Stream bytes without compression: every non-zero page, plus framing and state.
    public var estimatedStreamBytes: UInt64
}

/// Measures rounds: stream bytes and time per round, bandwidth over all rounds, progress lines.
struct RoundMeter {
    let writer: StreamWriter
    private(set) var nextRound = 0
    private var round = RoundProgress(
        round: 0, isFinal: false, inProgress: false, onDemand: false, pagesSent: 0, pagesInRound: 0,
        streamBytes: 0, seconds: 0, bandwidth: 0, dirtyPagesFound: 0, dirtyRate: 0,
        expectedDowntime: 0, throttlePercent: 0)
    private var roundStart = ContinuousClock.now
    private var roundStartBytes: UInt64 = 0
    private var lastLine = ContinuousClock.now
    private var sendingSeconds = 0.0
    private var sentBytes: UInt64 = 0
    private var roundStartDataBytes: UInt64 = 0

    init(writer: StreamWriter) { self.writer = writer }

    /// Pages the last finished round sent.
    var lastRoundPages: UInt64 { round.pagesSent }

    /// Stream bytes per second while sending; 0 before anything was measured.
    var bandwidth: Double { sendingSeconds > 0 ? Double(sentBytes) / sendingSeconds : 0 }

    /// Bytes of non-zero guest pages per second in the last round: what the downtime estimate needs,
    /// compressed or not, for rounds like the next one. Zero pages cost a scan, not a transfer.
    private(set) var lastRoundPageBandwidth = 0.0

    mutating func startRound(_ number: Int, pages: UInt64, isFinal: Bool) {
        nextRound = number + 1
        round.round = number
        round.isFinal = isFinal
        round.pagesInRound = pages
        round.pagesSent = 0
        roundStart = .now
        lastLine = roundStart
        roundStartBytes = writer.statistics.bytes
        roundStartDataBytes = writer.statistics.pageDataBytes
    }

    mutating func advance(pages: UInt64, progressRequested: Bool, to sink: ((RoundProgress) -> Void)?) {
        round.pagesSent += pages
        guard let sink, progressRequested || ContinuousClock.now - lastLine >= .seconds(1) else { return }
        lastLine = .now
        var line = current
        line.inProgress = true
        line.onDemand = progressRequested
        sink(line)
    }

    mutating func finishRound() {
        let seconds = HostClock.seconds(since: roundStart)
        let bytes = writer.statistics.bytes - roundStartBytes
        sendingSeconds += seconds
        sentBytes += bytes
        let dataBytes = writer.statistics.pageDataBytes - roundStartDataBytes
        lastRoundPageBandwidth = seconds > 0 ? Double(dataBytes) / seconds : 0
        round.seconds = seconds
        round.streamBytes = bytes
        round.bandwidth = bandwidth
    }

    func reportRoundEnd(
        dirtyPages: UInt64, dirtyRate: Double, expectedDowntime: Double, throttle: Int,
        to sink: ((RoundProgress) -> Void)?
    ) {
        var line = round
        line.dirtyPagesFound = dirtyPages
        line.dirtyRate = dirtyRate
        line.expectedDowntime = expectedDowntime
        line.throttlePercent = throttle
        sink?(line)
    }

    private var current: RoundProgress {
        var line = round
        line.seconds = HostClock.seconds(since: roundStart)
        line.streamBytes = writer.statistics.bytes - roundStartBytes
        line.bandwidth = line.seconds > 0 ? Double(line.streamBytes) / line.seconds : bandwidth
        return line
    }
}

/// A flag another thread raises (on SIGUSR1) and the send loop takes.
public final class ProgressRequest: Sendable {
    private let raised = Atomic<Bool>(false)
    public init() {}
    public func raise() { raised.store(true, ordering: .relaxed) }
    func take() -> Bool { raised.exchange(false, ordering: .relaxed) }
}

/// The version the tools report and write into BEGIN.
public enum MigrationVersion {
    public static let current = "0.1.0"
}
