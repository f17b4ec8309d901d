import MachineDescription
import SystemPackage
import SystemSupport
import VMStream

#if canImport(Glibc)
    import Glibc
#endif

/// How `vmrecv` receives.
public struct ReceiveOptions: Sendable {
    /// The name the machine gets here.
    public var name: String
    /// Restore but do not resume.
    public var leavePaused: Bool
    /// Read and verify the whole stream, create nothing (`zfs recv -n`).
    public var dryRun: Bool

    public init(name: String, leavePaused: Bool = false, dryRun: Bool = false) {
        self.name = name
        self.leavePaused = leavePaused
        self.dryRun = dryRun
    }
}

/// What a receive did, for `vmrecv -v`.
public struct ReceiveReport: Sendable {
    public var begin: StreamBegin
    public var end: StreamEnd
    public var name: String
    public var rounds: Int
    /// What came through the reader: stream bytes, pages, compression.
    public var statistics: StreamStatistics
    public var streamBytes: UInt64 { statistics.bytes }
    public var seconds: Double
    public var downtime: Downtime
    /// The downtime in seconds, when there was one to measure.
    public var downtimeSeconds: Double? {
        if case .measured(let seconds) = downtime { seconds } else { nil }
    }
}

/// The downtime: from the source's pause to the resume here, the one definition both tools use.
public enum Downtime: Sendable, Equatable {
    case measured(Double)
    /// A cold stream is a saved machine: how long it was kept is not downtime.
    case coldRestore
    /// Not resumed here (`--paused`, `-n`): the downtime goes on until someone resumes the copy.
    case notResumed
    /// The source never paused (it was paused before the send), or the clocks disagree beyond reason.
    case unknown
}

/// Reads one stream and restores its machine. The machine is created only after BEGIN passes the
/// compatibility checks, resumed only after END verifies, and abandoned on any failure in between.
public final class Receiver {
    private let input: FileDescriptor
    private let options: ReceiveOptions
    private let checkCompatibility: (StreamBegin) throws -> Void
    private let makeDestination: (MachineConfig) throws -> MigrationDestination
    /// Called for each record type the reader skipped as ignorable.
    public var warn: (String) -> Void = { _ in }
    /// Called once BEGIN passed the checks, before any page.
    public var onStart: ((TransferStart) -> Void)?
    /// Called after each round, and about once a second inside a long round.
    public var onProgress: ((TransferProgress) -> Void)?
    /// Holds the latest progress for a line asked for from another thread (SIGUSR1).
    public var progressRequest = ProgressRequest()

    public init(
        input: FileDescriptor, options: ReceiveOptions,
        checkCompatibility: @escaping (StreamBegin) throws -> Void,
        makeDestination: @escaping (MachineConfig) throws -> MigrationDestination
    ) {
        self.input = input
        self.options = options
        self.checkCompatibility = checkCompatibility
        self.makeDestination = makeDestination
    }

    public func run() throws -> ReceiveReport {
        let started = ContinuousClock.now
        // From a file the stream's length is known; from a pipe it is estimated from the rounds' page lists.
        let fileLength = input.bytesLeftInFile
        let reader = try StreamReader(input: input)
        reader.warningHandler = warn
        let discard = DiscardingPageSink()
        guard case .begin(let begin)? = try reader.next(into: discard) else {
            throw MigrationError("stream does not start with a BEGIN record")
        }
        try checkCompatibility(begin)
        onStart?(
            TransferStart(
                mode: begin.mode.rawValue, machine: options.name, uuid: begin.uuidString, estimatedTotalBytes: fileLength))
        var progress = ProgressTracker(sink: onProgress, request: progressRequest, knownTotalBytes: fileLength)
        var config = begin.machine
        config.name = options.name
        let destination = options.dryRun ? nil : try makeDestination(config)
        do {
            let memorySink = destination.map { GuestMemoryPageSink(memory: $0.memory) }
            let sink: PageSink = memorySink ?? discard
            var rounds = 0
            var lastRound: UInt32?
            var kernel: [StateChunk] = []
            var devices: [StateChunk] = []
            var end: StreamEnd?
            /// Reports the round under way as ended; the one ended by state or END was sent with the source paused.
            func endRound(final: Bool) {
                guard lastRound != nil else { return }
                if final { progress.markFinal() }
                progress.finishRound(totalBytes: reader.statistics.bytes)
                progress.reportRound()
                lastRound = final ? nil : lastRound
            }
            while let record = try reader.next(into: sink) {
                switch record {
                case .begin:
                    throw MigrationError("stream has a second BEGIN record")
                case .round(let number, let ranges), .diskExtents(let number, let ranges):
                    let pages = ranges.reduce(UInt64(0)) { $0 + $1.count }
                    // A round spans its ROUND records (several for a long list) and its DISK EXTENTS records; its
                    // progress counts pages and disk blocks alike.
                    if number != lastRound {
                        endRound(final: false)
                        rounds += 1
                        progress.startRound(Int(number), pages: pages, isFinal: false, totalBytes: reader.statistics.bytes)
                    } else {
                        progress.addPagesToRound(pages)
                    }
                    lastRound = number
                    memorySink?.freshMemory = rounds == 1
                case .pages(let batch), .diskBlocks(let batch):
                    progress.advance(pages: UInt64(batch.count), totalBytes: reader.statistics.bytes)
                case .kernelState(let chunk):
                    endRound(final: true)
                    kernel.append(chunk)
                case .deviceState(let chunk):
                    endRound(final: true)
                    devices.append(chunk)
                case .end(let closing):
                    endRound(final: true)
                    end = closing
                }
            }
            guard let end else { throw MigrationError("stream ended before its END record") }
            var downtime = begin.mode == .cold ? Downtime.coldRestore : .notResumed
            if let destination {
                try destination.restore(MachineState(kernel: kernel, devices: devices))
                if !options.leavePaused {
                    try destination.resume()
                    if begin.mode != .cold {
                        downtime = Self.downtime(since: end.sourcePauseTime).map { .measured($0) } ?? .unknown
                    }
                }
            }
            return ReceiveReport(
                begin: begin, end: end, name: options.name, rounds: rounds, statistics: reader.statistics,
                seconds: HostClock.seconds(since: started), downtime: downtime)
        } catch {
            destination?.abandon()
            throw error
        }
    }

    /// Seconds from the source's pause (ns since the epoch, from END) to now; nil when the source never
    /// paused or the figure is absurd (the stream's word, or clocks of hosts far apart).
    static func downtime(since sourcePauseTime: UInt64) -> Double? {
        guard sourcePauseTime != 0 else { return nil }
        let seconds = (Double(HostClock.realtimeNanoseconds()) - Double(sourcePauseTime)) / 1e9
        return (-3600...86400).contains(seconds) ? seconds : nil
    }
}

/// Lands pages straight in guest memory. Zero pages need nothing while memory is still fresh (round 0);
/// in later rounds they overwrite an older copy and are discarded.
final class GuestMemoryPageSink: PageSink {
    let memory: any GuestMemory
    var freshMemory = true

    init(memory: any GuestMemory) { self.memory = memory }

    private func inside(_ segment: Int, _ page: UInt64, _ count: UInt64) -> Bool {
        segment < memory.segments.count && page + count <= memory.pageCount(segment: segment)
    }

    func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? { nil }

    func store(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        guard inside(segment, page, UInt64(count)) else { return }
        try memory.write(segment: segment, page: page, count: count, from: data)
    }

    func zeroPage(segment: Int, page: UInt64) throws {
        guard !freshMemory, inside(segment, page, 1) else { return }
        try memory.discard(segment: segment, pages: page..<(page + 1))
    }
}
