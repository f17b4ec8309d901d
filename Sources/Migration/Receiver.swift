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
    /// Should a resumable stream break (end early, fail a checksum), keep what verified as a partial receive
    /// (`vmrecv -s`).
    public var keepPartial = false

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
    /// Where the downtime went here: END's arrival after the source's pause, the restore, the resume.
    public var switchOver = SwitchOverTimes()
    /// Where a continuation took the stream up, and the stream bytes it carried.
    public var continuedFrom: ResumePoint?
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
/// compatibility checks, resumed only after END verifies, and abandoned on any failure in between. A dry run makes
/// the same checks in the same order (BEGIN, the configuration, every record, the state) with nothing created.
///
/// Reading stops at END: what follows it is not part of the stream, so the machine is resumed at once even if the
/// transport never signals end of input (nc without -N), and bytes already waiting after END are counted in a
/// warning, never waited for.
public final class Receiver {
    private let input: FileDescriptor
    private let options: ReceiveOptions
    private let checkCompatibility: (StreamBegin) throws -> Void
    private let makeDestination: (MachineConfig) throws -> MigrationDestination
    private let makeCheck: (MachineConfig) throws -> IncomingCheck
    /// Called for each record type the reader skipped as ignorable, and for bytes after END.
    public var warn: (String) -> Void = { _ in }
    /// Called once BEGIN passed the checks, before any page.
    public var onStart: ((TransferStart) -> Void)?
    /// Called after each round, and about once a second inside a long round.
    public var onProgress: ((TransferProgress) -> Void)?
    /// Holds the latest progress for a line asked for from another thread (SIGUSR1).
    public var progressRequest = ProgressRequest()
    /// Told where the receive stands, so that an interrupt does the right thing.
    public var phaseObserver: ReceivePhaseObserver?
    /// Takes up the partial receive a continuation continues: the machine holding it and its checkpoint. Throws
    /// when there is none; leaves it as it was when the continuation is refused.
    public var takeUpPartial: ((ResumePoint) throws -> (MigrationDestination, ReaderCheckpoint))?

    public init(
        input: FileDescriptor, options: ReceiveOptions,
        checkCompatibility: @escaping (StreamBegin) throws -> Void,
        makeDestination: @escaping (MachineConfig) throws -> MigrationDestination,
        makeCheck: @escaping (MachineConfig) throws -> IncomingCheck
    ) {
        self.input = input
        self.options = options
        self.checkCompatibility = checkCompatibility
        self.makeDestination = makeDestination
        self.makeCheck = makeCheck
    }

    public func run() throws -> ReceiveReport {
        let started = ContinuousClock.now
        // From a file the stream's length is known; from a pipe it is estimated from the rounds' page lists.
        let fileLength = input.bytesLeftInFile
        let reader = try StreamReader(input: input)
        reader.warningHandler = warn
        let discard = DiscardingPageSink()
        let begin: StreamBegin
        var takenUp: (destination: MigrationDestination, checkpoint: ReaderCheckpoint)?
        switch try reader.next(into: discard) {
        case .begin(let first)?:
            begin = first
        case .resume(let point)?:
            guard let takeUpPartial, !options.dryRun else {
                throw MigrationError(
                    "this stream continues stream \(point.uuidString) from record \(point.record) (vmsend -t): only the "
                        + "partial receive it continues can take it (vmrecv -s NAME)")
            }
            let (machine, checkpoint) = try takeUpPartial(point)
            // Refused before a single record of it is read; the partial receive stays as it was.
            try reader.adopt(checkpoint)
            takenUp = (machine, checkpoint)
            begin = checkpoint.begin
        default:
            throw MigrationError("stream does not start with a BEGIN record")
        }
        if takenUp == nil { try checkCompatibility(begin) }
        onStart?(
            TransferStart(
                mode: begin.mode.rawValue, machine: options.name, uuid: begin.uuidString, estimatedTotalBytes: fileLength))
        var progress = ProgressTracker(sink: onProgress, request: progressRequest, knownTotalBytes: fileLength)
        var config = begin.machine
        config.name = options.name
        /// Made with interrupts held off, so that an interrupt undoes all of it and nothing is left.
        func created<Made>(_ make: () throws -> Made, undo: @escaping (Made) -> String) throws -> Made {
            try phaseObserver?.creating(make, undo: undo) ?? make()
        }
        let check =
            options.dryRun
            ? try created(
                { try makeCheck(config) },
                undo: { check in
                    check.finish()
                    return "nothing was created"
                }) : nil
        defer { check?.finish() }
        try check?.checkConfiguration(config)
        let destination =
            try options.dryRun
            ? nil
            : created(
                { try takenUp?.destination ?? makeDestination(config) },
                undo: { [name = options.name] machine in
                    machine.abandon()
                    return "the incoming VM '\(name)' was destroyed"
                })
        var rounds = takenUp?.checkpoint.rounds ?? 0
        var kernel: [StateChunk] = takenUp?.checkpoint.kernel ?? []
        var devices: [StateChunk] = takenUp?.checkpoint.devices ?? []
        var resumed = false
        do {
            let memorySink = destination.map { GuestMemoryPageSink(memory: $0.memory) }
            let samples: DiskSampleSink? = check == nil ? nil : DiskSampleSink(config: config)
            let sink: any PageSink
            if let memorySink {
                sink = memorySink
            } else if let samples {
                sink = samples
            } else {
                sink = discard
            }
            var lastRound = takenUp?.checkpoint.round
            memorySink?.freshMemory = rounds <= 1
            var end: StreamEnd?
            /// Reports the round under way as ended, once its pages have landed; the one ended by state or END was
            /// sent with the source paused.
            func endRound(final: Bool) throws {
                guard lastRound != nil else { return }
                try memorySink?.memory.finishWrites()
                memorySink?.memory.writesEnded()
                if final { progress.markFinal() }
                progress.finishRound(totalBytes: reader.statistics.bytes)
                progress.reportRound()
                lastRound = final ? nil : lastRound
            }
            while end == nil, let record = try reader.next(into: sink) {
                phaseObserver?.streamPosition(reader.statistics.bytes)
                switch record {
                case .begin, .resume:
                    throw MigrationError("stream has a second BEGIN record")
                case .round(let number, let ranges), .diskExtents(let number, let ranges):
                    let pages = ranges.reduce(UInt64(0)) { $0 + $1.count }
                    // A round spans its ROUND records (several for a long list) and its DISK EXTENTS records; its
                    // progress counts pages and disk blocks alike.
                    if number != lastRound {
                        try endRound(final: false)
                        rounds += 1
                        progress.startRound(Int(number), pages: pages, isFinal: false, totalBytes: reader.statistics.bytes)
                    } else {
                        progress.addPagesToRound(pages)
                    }
                    lastRound = number
                    memorySink?.freshMemory = rounds == 1
                    // Listed before their data: the memory may prepare them meanwhile.
                    if case .round = record, let memorySink {
                        for range in ranges {
                            memorySink.memory.willWrite(
                                segment: range.segment, pages: range.firstPage..<(range.firstPage + range.count))
                        }
                    }
                case .pages(let batch), .diskBlocks(let batch):
                    progress.advance(pages: UInt64(batch.count), totalBytes: reader.statistics.bytes)
                case .kernelState(let chunk):
                    try endRound(final: true)
                    kernel.append(chunk)
                case .deviceState(let chunk):
                    try endRound(final: true)
                    devices.append(chunk)
                case .end(let closing):
                    try endRound(final: true)
                    end = closing
                }
            }
            guard let end else { throw MigrationError("stream ended before its END record") }
            let state = MachineState(kernel: kernel, devices: devices)
            var downtime = begin.mode == .cold ? Downtime.coldRestore : .notResumed
            var switchOver = SwitchOverTimes()
            if begin.mode != .cold, let arrival = Self.downtime(since: end.sourcePauseTime) {
                switchOver.record(.arrival, arrival)
            }
            if let destination {
                try destination.memory.finishWrites()  // done at the last round's end; said here, where it counts
                let finish = {
                    switchOver.start()
                    try destination.restore(state)
                    switchOver.lap(.restore)
                    if !self.options.leavePaused {
                        // The downtime ends where the copy's vCPUs were let go, not once this process hears of it: a
                        // guest dirtying flat out can keep the reply off the cores for milliseconds.
                        let requested = HostClock.realtimeNanoseconds()
                        // A stamp from before the request (the clock stepped back) is not believed.
                        let resumedAt = try destination.resume().flatMap { $0 >= requested ? $0 : nil }
                        resumed = true
                        if let resumedAt {
                            switchOver.record(.resume, Double(resumedAt - requested) / 1e9)
                        } else {
                            switchOver.lap(.resume)
                        }
                        if begin.mode != .cold {
                            downtime =
                                Self.downtime(since: end.sourcePauseTime, until: resumedAt).map { .measured($0) } ?? .unknown
                        }
                    }
                }
                try finishing(finish)
                if !options.leavePaused { try destination.confirmRunning() }
            } else {
                try check?.checkState(state, diskSamples: samples?.samples ?? [:])
            }
            if let extra = reader.bytesWaitingAfterEnd(), extra > 0 {
                warn("\(extra) byte\(extra == 1 ? "" : "s") after END ignored")
            }
            return ReceiveReport(
                begin: begin, end: end, name: options.name, rounds: rounds, statistics: reader.statistics,
                seconds: HostClock.seconds(since: started), downtime: downtime,
                switchOver: downtime == .coldRestore ? SwitchOverTimes() : switchOver, continuedFrom: reader.resumePoint)
        } catch {
            // A copy that was resumed has run: it is never destroyed here, whatever failed after.
            guard let destination, !resumed, !(error is MachineStoppedError) else { throw error }
            try finishing {
                try self.settle(
                    error, destination: destination, begin: begin, reader: reader, rounds: rounds, kernel: kernel,
                    devices: devices)
            }
            throw error
        }
    }

    /// Runs `work` with interrupts held off, when something watches them.
    private func finishing(_ work: () throws -> Void) throws {
        if let phaseObserver { try phaseObserver.finishing(work) } else { try work() }
    }

    /// After a failure: keeps the partial receive (`-s`, and a break a continuation can repair) or abandons the
    /// machine; throws what the receive then reports.
    private func settle(
        _ error: any Error, destination: MigrationDestination, begin: StreamBegin, reader: StreamReader, rounds: Int,
        kernel: [StateChunk], devices: [StateChunk]
    ) throws -> Never {
        guard options.keepPartial, Self.isBreak(error), var checkpoint = reader.checkpoint() else {
            destination.abandon()
            throw error
        }
        guard begin.resumable else {
            destination.abandon()
            throw MigrationError("\(error); nothing was kept: the stream was not sent with vmsend -s")
        }
        // What is kept holds every page of the records verified, or nothing is kept.
        do { try destination.memory.finishWrites() } catch let storeError {
            destination.abandon()
            throw MigrationError("\(error); nothing was kept: \(storeError)")
        }
        checkpoint.kernel = kernel
        checkpoint.devices = devices
        checkpoint.rounds = rounds
        let token = checkpoint.token
        let partial = PartialReceive(
            stream: begin.uuidString, sourceMachine: begin.machine.name, token: token.text,
            records: checkpoint.recordsVerified, bytes: checkpoint.point.offset, round: checkpoint.round,
            unitsExpected: checkpoint.unitsExpected, kept: HostClock.realtimeNanoseconds())
        do {
            try destination.keepPartial(partial, checkpoint: checkpoint.encode())
        } catch let keepError {
            destination.abandon()
            throw MigrationError("\(error); keeping the partial receive failed (\(keepError)), so nothing was kept")
        }
        throw PartialReceiveKept(partial: partial, cause: "\(error)", name: options.name)
    }

    /// A transport that ended or garbled what it carried: what a continuation can repair. Anything else (a stream
    /// that breaks the rules, a host that cannot run the machine) would break again the same way.
    static func isBreak(_ error: any Error) -> Bool {
        guard let error = error as? StreamError else { return false }
        return error.kind == .truncated || error.kind == .checksumMismatch || error.kind == .io
    }

    /// Seconds from the source's pause (ns since the epoch, from END) to `end` (now when nil); nil when the source
    /// never paused or the figure is absurd (the stream's word, or clocks of hosts far apart).
    static func downtime(since sourcePauseTime: UInt64, until end: UInt64? = nil) -> Double? {
        guard sourcePauseTime != 0 else { return nil }
        let seconds = (Double(end ?? HostClock.realtimeNanoseconds()) - Double(sourcePauseTime)) / 1e9
        return (-3600...86400).contains(seconds) ? seconds : nil
    }
}

/// A receive broke off and was kept as a partial receive (`vmrecv -s`): says how to continue it, in one line.
public struct PartialReceiveKept: Error, CustomStringConvertible, Sendable {
    public let partial: PartialReceive
    public let cause: String
    public let name: String

    public var description: String {
        "stream interrupted after \(partial.records) records (\(ByteSize.format(partial.bytes))): \(cause); resume with: "
            + "vmsend -t \(partial.token) \(UntrustedText.escape(partial.sourceMachine)) | ... vmrecv -s \(name)"
    }
}

/// A restored machine that stopped by itself right after it was resumed; it is kept, stopped, for inspection.
public struct MachineStoppedError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Told by the receiver where it stands: what an interrupt must undo, and when it must wait.
public protocol ReceivePhaseObserver: AnyObject {
    /// Makes what the receive lands in (the incoming machine, a dry run's check) with interrupts held off; an
    /// interrupt from then on calls `undo` with it (and with what was made before), which says what it undid.
    func creating<Made>(_ make: () throws -> Made, undo: @escaping (Made) -> String) throws -> Made
    /// The stream has been read up to byte `bytes`.
    func streamPosition(_ bytes: UInt64)
    /// Ends the receive (restore and resume, or undoing a failure) with interrupts held off: an interrupt then comes
    /// too late to undo anything.
    func finishing(_ work: () throws -> Void) throws
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

    /// Any place the memory offers: bytes that land there before their checksum fails are zeroed again (below), and
    /// a failed receive destroys the incoming machine anyway.
    func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        guard inside(segment, page, UInt64(count)) else { return nil }
        return memory.landing(segment: segment, page: page, count: count)
    }

    /// A partial receive (`-s`) keeps memory up to the last verified record, and its continuation sends the failed
    /// record again. In round 1 that copy lands only its data pages (zero pages need nothing in fresh memory), so a
    /// page a damaged zero-page bitmap took for data must be zero again; in later rounds the copy rewrites or
    /// discards every page of the record anyway.
    func landingFailed(segment: Int, page: UInt64, count: Int) throws {
        try memory.discard(segment: segment, pages: page..<(page + UInt64(count)))
    }

    func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer? {
        segment < memory.segments.count ? memory.staging(segment: segment, bytes: bytes) : nil
    }

    func stagingDone() { memory.stagingDone() }

    func zeroPage(segment: Int, page: UInt64) throws {
        guard !freshMemory, inside(segment, page, 1) else { return }
        try memory.discard(segment: segment, pages: page..<(page + 1))
    }
}
