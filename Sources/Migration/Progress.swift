import Synchronization
import SystemSupport

/// Where a transfer stands, on either side of the stream: what the bar, the `-v` lines and `-P` print.
/// A figure a side cannot know is nil and prints as `-`.
public struct TransferProgress: Sendable, Equatable {
    public enum Event: String, Sendable {
        /// A round sent while the guest ran has ended.
        case round
        /// The round sent with the guest paused has ended.
        case final
        /// Mid-round: due (once a second) or asked for (SIGUSR1).
        case progress
    }

    public var event: Event
    public var round: Int
    /// The round under way is the one sent with the guest paused.
    public var isFinal: Bool
    public var pagesDone: UInt64
    public var pagesInRound: UInt64
    public var roundBytes: UInt64
    public var roundSeconds: Double
    /// Stream bytes per second: over every round so far at a round's end, over this round mid-round.
    public var rate: Double
    /// Sender, at a round's end: the pages the guest dirtied while the round was sent.
    public var dirtyPages: UInt64?
    /// Sender: the guest's dirty rate in bytes per second, as last measured.
    public var dirtyRate: Double?
    /// Sender, at the end of a round sent while the guest ran: the pause the rest would take.
    public var expectedDowntime: Double?
    /// Sender: how much the guest's vCPUs are slowed down, percent.
    public var throttlePercent: Int?
    /// Stream bytes so far, header included.
    public var totalBytes: UInt64
    /// Seconds since the transfer started.
    public var elapsed: Double
    /// The stream's expected length, when something tells.
    public var estimatedTotalBytes: UInt64?

    public var pagesLeft: UInt64 { pagesInRound > pagesDone ? pagesInRound - pagesDone : 0 }

    /// The same progress `seconds` later with nothing moved: a write that blocks still counts its time.
    func aged(by seconds: Double) -> TransferProgress {
        var later = self
        later.event = .progress
        later.elapsed += seconds
        later.roundSeconds += seconds
        later.rate = later.roundSeconds > 0 ? Double(roundBytes) / later.roundSeconds : rate
        later.dirtyPages = nil
        later.expectedDowntime = nil
        return later
    }
}

/// What a transfer is, known once it starts: the `-P` size line.
public struct TransferStart: Sendable, Equatable {
    public var mode: String
    public var machine: String
    public var uuid: String
    /// The stream's expected length, when something tells.
    public var estimatedTotalBytes: UInt64?

    public init(mode: String, machine: String, uuid: String, estimatedTotalBytes: UInt64?) {
        self.mode = mode
        self.machine = machine
        self.uuid = uuid
        self.estimatedTotalBytes = estimatedTotalBytes
    }
}

/// The latest progress of a transfer, and what prints it at once when asked (SIGUSR1). The thread that moves
/// the stream publishes; the signal's thread reads: a line appears even while that write is blocked.
public final class ProgressRequest: Sendable {
    private struct Published {
        var progress: TransferProgress
        var at: ContinuousClock.Instant
    }

    private let latest = Mutex<Published?>(nil)
    private let handler = Mutex<(@Sendable (TransferProgress) -> Void)?>(nil)

    public init() {}

    /// What `raise` runs with the latest progress; nothing runs before a transfer has started.
    public func onRaise(_ body: @escaping @Sendable (TransferProgress) -> Void) {
        handler.withLock { $0 = body }
    }

    /// Asks for a progress line now; called from a signal watcher's thread.
    public func raise() {
        guard let progress = current, let body = handler.withLock({ $0 }) else { return }
        body(progress)
    }

    /// The latest progress, its clocks brought up to now.
    public var current: TransferProgress? {
        latest.withLock { $0 }.map { $0.progress.aged(by: HostClock.seconds(since: $0.at)) }
    }

    func publish(_ progress: TransferProgress) {
        latest.withLock { $0 = Published(progress: progress, at: .now) }
    }
}

/// Turns a transfer's counts into `TransferProgress` events: a round's end, and a `progress` event once per
/// `interval` in between; every state is published for SIGUSR1. Shared by sender and receiver.
struct ProgressTracker {
    private let sink: ((TransferProgress) -> Void)?
    private let request: ProgressRequest
    private let interval: Duration
    private let started = ContinuousClock.now
    private var roundStart = ContinuousClock.now
    private var lastEvent = ContinuousClock.now
    private var roundStartBytes: UInt64 = 0
    /// Stream bytes and pages before and in the rounds so far, for bytes per page in the estimate.
    private var firstRoundBytes: UInt64?
    private var pagesBefore: UInt64 = 0
    /// Seconds spent in rounds, and their bytes, for the rate over all rounds.
    private var roundsSeconds = 0.0
    private var roundsBytes: UInt64 = 0
    /// The stream's length when known in advance (a file); otherwise estimated as it goes.
    let knownTotalBytes: UInt64?
    private(set) var state = TransferProgress(
        event: .progress, round: 0, isFinal: false, pagesDone: 0, pagesInRound: 0, roundBytes: 0,
        roundSeconds: 0, rate: 0, totalBytes: 0, elapsed: 0)

    init(
        sink: ((TransferProgress) -> Void)?, request: ProgressRequest, knownTotalBytes: UInt64? = nil,
        interval: Duration = .seconds(1)
    ) {
        self.sink = sink
        self.request = request
        self.knownTotalBytes = knownTotalBytes
        self.interval = interval
    }

    mutating func startRound(_ number: Int, pages: UInt64, isFinal: Bool, totalBytes: UInt64) {
        if firstRoundBytes == nil { firstRoundBytes = totalBytes }
        roundStart = .now
        roundStartBytes = totalBytes
        state.event = .progress
        state.round = number
        state.isFinal = isFinal
        state.pagesInRound = pages
        state.pagesDone = 0
        state.dirtyPages = nil
        state.expectedDowntime = nil
        update(totalBytes: totalBytes)
        request.publish(state)
    }

    /// A round's page list continues in another record (the receiver sees long lists in parts).
    mutating func addPagesToRound(_ pages: UInt64) { state.pagesInRound += pages }

    /// The final round turns out to be the one under way (the receiver learns it when state arrives).
    mutating func markFinal() { state.isFinal = true }

    mutating func advance(pages: UInt64, totalBytes: UInt64, throttle: Int? = nil) {
        state.pagesDone += pages
        state.throttlePercent = throttle ?? state.throttlePercent
        update(totalBytes: totalBytes)
        state.event = .progress
        state.rate = state.roundSeconds > 0 ? Double(state.roundBytes) / state.roundSeconds : 0
        request.publish(state)
        guard let sink, ContinuousClock.now - lastEvent >= interval else { return }
        lastEvent = .now
        sink(state)
    }

    /// Ends the round: its figures stop here, and the rate becomes the one over all rounds.
    mutating func finishRound(totalBytes: UInt64) {
        update(totalBytes: totalBytes)
        roundsSeconds += state.roundSeconds
        roundsBytes += state.roundBytes
        pagesBefore += state.pagesDone
        state.event = state.isFinal ? .final : .round
        state.rate = roundsSeconds > 0 ? Double(roundsBytes) / roundsSeconds : 0
        request.publish(state)
    }

    /// Reports the finished round, with what the sender measured after it.
    mutating func reportRound(
        dirtyPages: UInt64? = nil, dirtyRate: Double? = nil, expectedDowntime: Double? = nil, throttle: Int? = nil
    ) {
        state.dirtyPages = dirtyPages
        state.dirtyRate = dirtyRate ?? state.dirtyRate
        state.expectedDowntime = expectedDowntime
        state.throttlePercent = throttle ?? state.throttlePercent
        request.publish(state)
        lastEvent = .now
        sink?(state)
    }

    private mutating func update(totalBytes: UInt64) {
        state.totalBytes = totalBytes
        state.roundBytes = totalBytes - roundStartBytes
        state.roundSeconds = HostClock.seconds(since: roundStart)
        state.elapsed = HostClock.seconds(since: started)
        state.estimatedTotalBytes = knownTotalBytes ?? estimate()
    }

    /// Bytes so far plus the pages left in this round at the bytes per page seen so far (a page before any).
    private func estimate() -> UInt64 {
        let pages = pagesBefore + state.pagesDone
        let pageBytes = state.totalBytes - (firstRoundBytes ?? state.totalBytes)
        let perPage = pages > 0 ? Double(pageBytes) / Double(pages) : 4096
        return state.totalBytes + UInt64(Double(state.pagesLeft) * perPage)
    }
}
