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
    public var streamBytes: UInt64
    public var seconds: Double
    /// From the source's pause to this resume; nil when the source never paused or we did not resume.
    public var downtimeSeconds: Double?
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
        let reader = try StreamReader(input: input)
        reader.warningHandler = warn
        let discard = DiscardingPageSink()
        guard case .begin(let begin)? = try reader.next(into: discard) else {
            throw MigrationError("stream does not start with a BEGIN record")
        }
        try checkCompatibility(begin)
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
            while let record = try reader.next(into: sink) {
                switch record {
                case .begin:
                    throw MigrationError("stream has a second BEGIN record")
                case .round(let number, _), .diskExtents(let number, _):
                    // A round spans its ROUND records (several for a long list) and its DISK EXTENTS records.
                    if number != lastRound { rounds += 1 }
                    lastRound = number
                    memorySink?.freshMemory = rounds == 1
                case .pages, .diskBlocks:
                    break
                case .kernelState(let chunk):
                    kernel.append(chunk)
                case .deviceState(let chunk):
                    devices.append(chunk)
                case .end(let closing):
                    end = closing
                }
            }
            guard let end else { throw MigrationError("stream ended before its END record") }
            var downtime: Double?
            if let destination {
                try destination.restore(MachineState(kernel: kernel, devices: devices))
                if !options.leavePaused {
                    try destination.resume()
                    downtime = Self.downtime(since: end.sourcePauseTime)
                }
            }
            return ReceiveReport(
                begin: begin, end: end, name: options.name, rounds: rounds,
                streamBytes: reader.statistics.bytes, seconds: HostClock.seconds(since: started),
                downtimeSeconds: downtime)
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
