#if canImport(Glibc)
import Glibc
#endif
import MachineDescription
import SystemPackage
import VMStream

/// How `vmsend` sends.
public struct SendOptions: Sendable {
    public var mode: MigrationMode
    public var compression: Compression
    /// Resume the source after a successful send (a consistent snapshot, like `bhyvectl --checkpoint`).
    public var keepRunning: Bool
    public var tool: String
    public var toolVersion: String

    public init(mode: MigrationMode, compression: Compression, keepRunning: Bool,
                tool: String = "vmsend", toolVersion: String = MigrationVersion.current) {
        self.mode = mode
        self.compression = compression
        self.keepRunning = keepRunning
        self.tool = tool
        self.toolVersion = toolVersion
    }
}

/// What a send did, for `vmsend -v`.
public struct SendReport: Sendable {
    public var machine: String
    public var guestBytes: UInt64
    public var statistics: StreamStatistics
    public var rounds: Int
    public var seconds: Double
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

/// Drives one send: BEGIN, memory in rounds, kernel and device state, END. The source is paused
/// for the final round and stays paused after success unless `keepRunning`; on any failure before END
/// is written it is resumed, so exactly one copy of the machine ever runs.
public final class Sender {
    private let source: MigrationSource
    private let output: FileDescriptor
    private let options: SendOptions
    /// Told when the source is paused and when END starts, so an interrupt does the right thing.
    public var phaseObserver: InterruptWatcher?

    public init(source: MigrationSource, output: FileDescriptor, options: SendOptions) {
        self.source = source
        self.output = output
        self.options = options
    }

    public func run() throws -> SendReport {
        let started = ContinuousClock.now
        let (config, host) = try source.describe()
        let memory = try source.mapMemory(config)
        let writer = try StreamWriter(output: output, compression: options.compression)
        var paused = false
        do {
            phaseObserver?.enter(.sourcePaused)
            try source.pause()
            paused = true
            let pauseTime = Self.realtimeNanoseconds()
            try writer.writeBegin(StreamBegin(
                tool: options.tool, toolVersion: options.toolVersion, mode: options.mode,
                host: host, machine: config))
            try Self.sendRound(0, pages: try Self.populatedRanges(memory), memory: memory, writer: writer)
            let state = try source.saveState()
            for chunk in state.kernel { try writer.writeKernelState(chunk) }
            for chunk in state.devices { try writer.writeDeviceState(chunk) }
            phaseObserver?.enter(.committed)
            try writer.writeEnd(sourcePauseTime: pauseTime)
        } catch {
            // Resuming is safe even when END failed: a receiver resumes only after reading END whole.
            guard paused else { throw error }
            do {
                try source.resume()
            } catch let resumeError {
                throw MigrationError("\(error); resuming the source VM '\(config.name)' also failed: \(resumeError)")
            }
            throw MigrationError("\(error); the source VM '\(config.name)' was resumed")
        }
        if options.keepRunning { try source.resume() }
        return SendReport(machine: config.name, guestBytes: config.memorySize, statistics: writer.statistics,
                          rounds: 1, seconds: Self.seconds(since: started))
    }

    /// Counts what a send would carry, reading memory while the machine runs.
    public func estimate() throws -> SendEstimate {
        let (config, _) = try source.describe()
        let memory = try source.mapMemory(config)
        var populated: UInt64 = 0
        var zero: UInt64 = 0
        for range in try Self.populatedRanges(memory) {
            populated += range.count
            for page in range.firstPage..<(range.firstPage + range.count) {
                if Self.isZero(memory.address(segment: Int(range.segment), page: page)) { zero += 1 }
            }
        }
        let framing = UInt64(64 << 10)
        return SendEstimate(machine: config.name, guestBytes: config.memorySize, populatedPages: populated,
                            zeroPages: zero, estimatedStreamBytes: (populated - zero) * GuestMemory.pageSize + framing)
    }

    static func populatedRanges(_ memory: GuestMemory) throws -> [PageRange] {
        var ranges: [PageRange] = []
        for segment in memory.segments.indices {
            for range in try memory.populatedPages(segment: segment) {
                ranges.append(PageRange(segment: UInt16(segment), firstPage: range.lowerBound, count: range.upperBound - range.lowerBound))
            }
        }
        return ranges
    }

    static func sendRound(_ number: UInt32, pages: [PageRange], memory: GuestMemory, writer: StreamWriter) throws {
        try writer.writeRound(number, pages: pages)
        for range in pages {
            try writer.writePages(segment: range.segment, firstPage: range.firstPage, count: range.count,
                                  from: UnsafeRawPointer(memory.address(segment: Int(range.segment), page: range.firstPage)))
        }
    }

    static func isZero(_ page: UnsafeRawPointer) -> Bool {
        let words = page.assumingMemoryBound(to: UInt64.self)
        var any: UInt64 = 0
        for index in 0..<Int(GuestMemory.pageSize / 8) { any |= words[index] }
        return any == 0
    }

    static func realtimeNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}

/// The version the tools report and write into BEGIN.
public enum MigrationVersion {
    public static let current = "0.1.0"
}
