import MachineDescription

/// Constants of stream format version 1; man/vmstream.5 is their specification.
public enum StreamFormat {
    /// The first eight bytes of every stream.
    public static let magic: [UInt8] = Array("VMSTREAM".utf8)
    public static let version: UInt32 = Release.streamFormatVersion
    /// Must-understand feature: the machine has disks (BEGIN lists them; DISK EXTENTS and DISK BLOCKS records
    /// carry their data; END counts their blocks).
    public static let disksFeature: UInt32 = 1
    /// Must-understand feature: the stream continues an interrupted one (`vmsend -t`); a RESUME record comes in place
    /// of BEGIN, and only a receiver holding that stream's partial receive can use it.
    public static let continuationFeature: UInt32 = 2
    /// Must-understand features this reader implements.
    public static let knownFeatures: UInt32 = disksFeature | continuationFeature
    public static let headerSize = 32
    public static let recordHeaderSize = 16
    public static let recordTrailerSize = 8
    /// Largest payload a record may carry; a reader refuses larger ones before allocating.
    public static let maxPayloadLength = 4 << 20
    public static let pageSize = 4096
    /// Pages in one PAGES record at most.
    public static let maxPagesPerBatch = 256
    /// Page ranges in one ROUND record at most; longer lists continue in further ROUND records.
    public static let maxRangesPerRound = 65536
    /// Memory segments a machine may have.
    public static let maxSegments = 64
    /// Devices, disks and CPUID leaves BEGIN may list, so decoding it stays small.
    public static let maxDevices = StateLimits.maximumDevices
    public static let maxDisks = 64
    public static let maxCPUIDLeaves = 4096
    /// Distinct state chunks of one kind (kernel or device) a stream may carry.
    public static let maxStateChunks = StateLimits.maximumKernelChunks
    /// Bytes of kernel and device state data in all: a receiver holds the state until END verifies.
    public static let maxStateBytes = StateLimits.maximumDataBytes
    /// Guest memory in all segments (2^48 bytes, 256 TiB): sizes a receiver can add up safely.
    public static let maxMemoryBytes: UInt64 = 1 << 48
    /// Record flag: a reader that does not know the record's type skips it with a warning.
    public static let ignorableFlag: UInt16 = 1
}

/// A record type as it appears on the wire; unknown values are kept so they can be reported.
public struct RecordType: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Comparable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let begin = RecordType(rawValue: 1)
    public static let round = RecordType(rawValue: 2)
    public static let pages = RecordType(rawValue: 3)
    public static let kernelState = RecordType(rawValue: 4)
    public static let deviceState = RecordType(rawValue: 5)
    public static let end = RecordType(rawValue: 6)
    public static let diskExtents = RecordType(rawValue: 7)
    public static let diskBlocks = RecordType(rawValue: 8)
    public static let resume = RecordType(rawValue: 9)

    public static let known: [RecordType] = [
        .begin, .round, .pages, .kernelState, .deviceState, .end, .diskExtents, .diskBlocks, .resume,
    ]

    /// A list of a round (ROUND, DISK EXTENTS) or the data it lists (PAGES, DISK BLOCKS).
    var isRoundPart: Bool { self == .round || self == .pages || self == .diskExtents || self == .diskBlocks }

    public var isKnown: Bool { Self.known.contains(self) }

    public var description: String {
        switch self {
        case .begin: "BEGIN"
        case .round: "ROUND"
        case .pages: "PAGES"
        case .kernelState: "KERNEL STATE"
        case .deviceState: "DEVICE STATE"
        case .end: "END"
        case .diskExtents: "DISK EXTENTS"
        case .diskBlocks: "DISK BLOCKS"
        case .resume: "RESUME"
        default: "type \(rawValue)"
        }
    }

    public static func < (lhs: RecordType, rhs: RecordType) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// How a migration treats the running machine; recorded in BEGIN for the receiver's report.
public enum MigrationMode: String, Sendable, CaseIterable {
    case cold, warm, live

    var wireValue: UInt8 {
        switch self {
        case .cold: 0
        case .warm: 1
        case .live: 2
        }
    }

    init?(wireValue: UInt8) {
        switch wireValue {
        case 0: self = .cold
        case 1: self = .warm
        case 2: self = .live
        default: return nil
        }
    }
}

/// The self-describing metadata a stream opens with: who wrote it, from where, and what machine.
public struct StreamBegin: Sendable, Equatable {
    public var formatVersion: UInt32
    public var tool: String
    public var toolVersion: String
    /// 16 random bytes naming this stream.
    public var uuid: [UInt8]
    /// Nanoseconds since the Unix epoch.
    public var creationTime: UInt64
    public var mode: MigrationMode
    public var host: HostSpec
    public var machine: MachineConfig
    /// Per disk of `machine`, the bytes its image held when the stream began: what a receiver needs room for.
    public var diskAllocation: [UInt64]
    /// Sent with `vmsend -s`: should the stream break, its source keeps what a continuation needs, so a receiver
    /// may keep a partial receive.
    public var resumable = false

    public init(
        formatVersion: UInt32 = StreamFormat.version, tool: String, toolVersion: String, uuid: [UInt8],
        creationTime: UInt64, mode: MigrationMode, host: HostSpec, machine: MachineConfig, diskAllocation: [UInt64]? = nil
    ) {
        self.diskAllocation = diskAllocation ?? machine.disks.map(\.size)
        self.formatVersion = formatVersion
        self.tool = tool
        self.toolVersion = toolVersion
        self.uuid = uuid
        self.creationTime = creationTime
        self.mode = mode
        self.host = host
        self.machine = machine
    }

    /// Memory segments, then disks: the areas ROUND/PAGES and DISK EXTENTS/DISK BLOCKS records fill. Inside the
    /// library and its users an area index names both: segment `i` is area `i`, disk `d` is area `segments + d`.
    public var areaCount: Int { machine.segments.count + machine.disks.count }

    /// The UUID in its usual 8-4-4-4-12 text form.
    public var uuidString: String { Self.uuidString(uuid) }

    /// A UUID's 16 bytes in the usual text form.
    public static func uuidString(_ uuid: [UInt8]) -> String {
        let hex = uuid.map { byte in String(byte, radix: 16).leftPadded(to: 2) }
        guard hex.count == 16 else { return hex.joined() }
        return [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]].map { $0.joined() }.joined(separator: "-")
    }

    /// A fresh random version-4 UUID.
    public static func randomUUID() -> [UInt8] {
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255) }
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        return bytes
    }
}

/// A run of 4 KiB units in one area: pages [firstPage, firstPage + count).
public struct PageRange: Sendable, Equatable, Hashable {
    /// The area: a segment of BEGIN's list, or a disk after them (see `StreamBegin.areaCount`). In records returned
    /// by the reader, a ROUND's ranges name segments and a DISK EXTENTS record's name disks.
    public var segment: Int
    public var firstPage: UInt64
    public var count: UInt64

    public init(segment: Int, firstPage: UInt64, count: UInt64) {
        self.segment = segment
        self.firstPage = firstPage
        self.count = count
    }
}

/// One PAGES or DISK BLOCKS batch as the reader delivered it.
public struct PageBatch: Sendable, Equatable {
    /// The segment (PAGES) or the disk (DISK BLOCKS).
    public var segment: Int
    public var firstPage: UInt64
    public var count: Int
    public var zeroPages: Int
    /// The PAGES encoding byte: raw or a codec's (`PageCodecs.name(of:)`).
    public var encoding: UInt8
    public var compressed: Bool { encoding != PageCodecs.rawEncoding }
}

/// The END record: the writer's totals and the closing running checksum.
public struct StreamEnd: Sendable, Equatable {
    /// Pages delivered (zero and data) over all rounds.
    public var pages: UInt64
    public var zeroPages: UInt64
    /// Stream bytes before the END record.
    public var bytes: UInt64
    /// Records before the END record.
    public var records: UInt64
    /// When the source paused the machine, ns since the Unix epoch; 0 if it never did.
    public var sourcePauseTime: UInt64
    /// The running checksum over every record before END.
    public var streamChecksum: UInt64
    /// Disk blocks delivered (zero and data), and those that were zero; in END only with the disks feature.
    public var diskBlocks: UInt64 = 0
    public var diskZeroBlocks: UInt64 = 0
}

/// One record as `StreamReader.next(into:)` returns it.
public enum StreamRecord: Sendable, Equatable {
    case begin(StreamBegin)
    /// A ROUND record; a round whose list is too long continues in further ROUND records with the same number.
    case round(number: UInt32, ranges: [PageRange])
    /// Pages already delivered into the sink.
    case pages(PageBatch)
    case kernelState(StateChunk)
    case deviceState(StateChunk)
    case end(StreamEnd)
    /// A DISK EXTENTS record: the disk blocks of round `number`; its ranges name disks.
    case diskExtents(number: UInt32, ranges: [PageRange])
    /// Disk blocks already delivered into the sink (at area `segments + disk`).
    case diskBlocks(PageBatch)
    /// A continuation's RESUME record, in place of BEGIN: where the stream it continues broke off.
    case resume(ResumePoint)
}

/// Where a record sits in the stream, for `vmstream dump`.
public struct RecordInfo: Sendable, Equatable {
    /// 1 for the first record after the stream header.
    public var number: UInt64
    /// Byte offset of the record's header from the start of the stream.
    public var offset: UInt64
    public var type: RecordType
    public var flags: UInt16
    public var payloadLength: Int
    public var headerChecksum: UInt64
    public var checksum: UInt64
    /// The running checksum after this record.
    public var runningChecksum: UInt64

    /// Bytes the record takes on the wire.
    public var totalLength: Int { StreamFormat.recordHeaderSize + payloadLength + StreamFormat.recordTrailerSize }
}

/// Count and bytes of one record type.
public struct RecordTotals: Sendable, Equatable {
    public var count: UInt64 = 0
    public var bytes: UInt64 = 0
}

/// What went through a writer or reader.
public struct StreamStatistics: Sendable, Equatable {
    /// Stream bytes, header included.
    public var bytes: UInt64 = 0
    public var records: UInt64 = 0
    /// Memory pages (zero and data), and those that were zero.
    public var pages: UInt64 = 0
    public var zeroPages: UInt64 = 0
    /// Disk blocks (zero and data), those that were zero, and the data blocks' bytes before coding.
    public var diskBlocks: UInt64 = 0
    public var diskZeroBlocks: UInt64 = 0
    public var diskDataBytes: UInt64 = 0
    /// Data pages and blocks times 4 KiB: what the data would take uncoded.
    public var pageDataBytes: UInt64 = 0
    /// What that page data took on the wire, after compression where it paid.
    public var pageWireBytes: UInt64 = 0
    public var compressedBatches: UInt64 = 0
    public var rawBatches: UInt64 = 0
    public var byType: [RecordType: RecordTotals] = [:]

    public init() {}

    /// Uncompressed page data over its wire size (1 when nothing was compressed).
    public var compressionRatio: Double {
        pageWireBytes == 0 ? 1 : Double(pageDataBytes) / Double(pageWireBytes)
    }

    mutating func count(_ type: RecordType, bytes recordBytes: Int) {
        records += 1
        bytes += UInt64(recordBytes)
        byType[type, default: RecordTotals()].count += 1
        byType[type, default: RecordTotals()].bytes += UInt64(recordBytes)
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
