import SystemSupport
import VMStream

/// What a send did, for `vmsend -v`.
public struct SendReport: Sendable {
    public var machine: String
    public var mode: MigrationMode
    public var guestBytes: UInt64
    public var statistics: StreamStatistics
    public var rounds: Int
    public var seconds: Double
    /// Time from the source's pause to END written: the part of the downtime this side sees.
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
    /// Bytes that went out: the whole stream, or a continuation's header, RESUME and the records after its point.
    public var bytesWritten: UInt64 = 0
    /// Where a continuation took the stream up.
    public var continuedFrom: ResumePoint?
    /// Where the source's pause went; empty when the send did not pause it.
    public var switchOver = SwitchOverTimes()
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

/// Measures rounds for the switch-over (the page bandwidth of the last one) and reports them as progress.
struct RoundMeter {
    let writer: StreamWriter
    private(set) var nextRound = 0
    private var progress: ProgressTracker
    private var roundStart = ContinuousClock.now
    private var roundStartDataBytes: UInt64 = 0
    /// The vCPU throttle in force, for progress lines.
    var throttle = 0

    init(writer: StreamWriter, progress: ProgressTracker) {
        self.writer = writer
        self.progress = progress
    }

    /// Pages the last finished round sent.
    var lastRoundPages: UInt64 { progress.state.pagesDone }

    /// Bytes of non-zero guest pages per second in the last round: what the downtime estimate needs,
    /// compressed or not, for rounds like the next one. Zero pages cost a scan, not a transfer.
    private(set) var lastRoundPageBandwidth = 0.0

    mutating func startRound(_ number: Int, pages: UInt64, isFinal: Bool) {
        nextRound = number + 1
        roundStart = .now
        roundStartDataBytes = writer.statistics.pageDataBytes
        progress.startRound(number, pages: pages, isFinal: isFinal, totalBytes: writer.statistics.bytes)
    }

    mutating func advance(pages: UInt64) {
        progress.advance(pages: pages, totalBytes: writer.statistics.bytes, throttle: throttle)
    }

    mutating func finishRound() {
        let seconds = HostClock.seconds(since: roundStart)
        let dataBytes = writer.statistics.pageDataBytes - roundStartDataBytes
        lastRoundPageBandwidth = seconds > 0 ? Double(dataBytes) / seconds : 0
        progress.finishRound(totalBytes: writer.statistics.bytes)
    }

    mutating func reportRoundEnd(dirtyPages: UInt64? = nil, dirtyRate: Double? = nil, expectedDowntime: Double? = nil) {
        progress.reportRound(
            dirtyPages: dirtyPages, dirtyRate: dirtyRate,
            expectedDowntime: expectedDowntime.flatMap { $0.isFinite ? $0 : nil }, throttle: throttle)
    }
}
