import MachineDescription
import SystemSupport

/// A rule of record order or content that a record breaks; the caller adds where the record is.
struct RuleViolation: Error {
    var kind: StreamError.Kind
    var message: String
    init(_ kind: StreamError.Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    init(_ message: String) { self.init(.outOfOrder, message) }
}

/// The sequencing rules of man/vmstream.5 (STREAM RULES), enforced alike by writer and reader,
/// so that a writer never produces a stream its reader refuses.
struct StreamRules {
    private(set) var begin: StreamBegin?
    private(set) var ended = false
    /// 4 KiB units per area: the memory segments' pages, then the disks' blocks (see `StreamBegin.areaCount`).
    private var areaUnits: [UInt64] = []
    private var memoryAreas = 0
    private var deviceNames: Set<String> = []
    private var kernelChunks: Set<String> = []
    private var deviceChunks: Set<String> = []
    private var stateBytes = 0
    private var lastRound: UInt32?
    /// The round's last list record held the most ranges a record may: only then may another of its kind and number
    /// follow.
    private var roundRecordFull = false
    /// The round's last list record was a DISK EXTENTS (its disk part), not a ROUND.
    private var lastListWasDisks = false
    /// The last range the current round listed, so a continuation lists only ranges after it.
    private var lastRangeOfRound: PageRange?
    /// A state chunk came: no ROUND may follow.
    private var stateStarted = false
    /// The current ROUND record's list and how far its pages have arrived.
    private var ranges: [PageRange] = []
    private var rangeIndex = 0
    private var pageInRange: UInt64 = 0
    private(set) var pages: UInt64 = 0
    private(set) var zeroPages: UInt64 = 0
    private(set) var diskBlocks: UInt64 = 0
    private(set) var diskZeroBlocks: UInt64 = 0

    var roundPending: Bool { rangeIndex < ranges.count }

    /// The page the next PAGES record must start with.
    var nextPage: (segment: Int, page: UInt64, left: UInt64)? {
        guard roundPending else { return nil }
        let range = ranges[rangeIndex]
        return (range.segment, range.firstPage + pageInRange, range.count - pageInRange)
    }

    /// The round the last list record named, while the stream is still in its rounds.
    var currentRound: UInt32? { stateStarted ? nil : lastRound }
    /// Pages or blocks the current list still misses.
    var missingUnits: UInt64 { missingPages }

    private var missingPages: UInt64 {
        guard roundPending else { return 0 }
        return ranges[rangeIndex...].reduce(0) { $0 + $1.count } - pageInRange
    }

    /// Checks that any record but BEGIN may come now. An ignorable record of an unknown type may come wherever a
    /// ROUND may: after BEGIN, outside a round that still misses pages, before END.
    func checkStarted(_ type: RecordType) throws(RuleViolation) {
        guard begin != nil else { throw RuleViolation("stream does not start with BEGIN") }
        guard !ended else { throw RuleViolation("record after END") }
        if !type.isRoundPart && roundPending {
            throw RuleViolation("\(type) while round \(lastRound ?? 0) still misses \(missingPages) listed pages")
        }
    }

    mutating func accept(begin newBegin: StreamBegin) throws(RuleViolation) {
        guard begin == nil else { throw RuleViolation("duplicate BEGIN") }
        if let problem = Payload.beginProblem(newBegin) { throw RuleViolation(.malformed, problem) }
        begin = newBegin
        memoryAreas = newBegin.machine.segments.count
        areaUnits =
            newBegin.machine.segments.map { $0.size / UInt64(StreamFormat.pageSize) } + newBegin.machine.disks.map(\.blockCount)
        deviceNames = Set(newBegin.machine.devices.map(\.name))
    }

    /// How a record names an area: `segment 1`, `disk 0`; with `named`, `segment 1 (highmem, 786432 pages)`.
    func areaName(_ area: Int, named: Bool = false) -> String {
        guard let machine = begin?.machine, area >= 0, area < areaUnits.count else { return "area \(area)" }
        let disk = area >= memoryAreas
        let base = disk ? "disk \(area - memoryAreas)" : "segment \(area)"
        guard named else { return base }
        let name = disk ? machine.disks[area - memoryAreas].name : machine.segments[area].name
        return "\(base) (\(UntrustedText.escape(name)), \(areaUnits[area]) \(disk ? "blocks" : "pages"))"
    }

    /// `page 8 of segment 0`, `block 8 of disk 0`.
    func unitName(_ unit: UInt64, of area: Int) -> String { "\(isDisk(area) ? "block" : "page") \(unit) of \(areaName(area))" }

    /// The area a record's index names: a segment in memory records, a disk in disk records.
    func area(_ index: Int, disk: Bool) throws(RuleViolation) -> Int {
        let count = disk ? areaUnits.count - memoryAreas : memoryAreas
        guard index >= 0, index < count else {
            throw RuleViolation(.malformed, "\(disk ? "disk" : "segment") \(index) does not exist (BEGIN lists \(count))")
        }
        return disk ? memoryAreas + index : index
    }

    /// Whether `area` is a disk.
    func isDisk(_ area: Int) -> Bool { area >= memoryAreas }

    /// Checks that units [first, first+count) lie inside `area`.
    private func checkInside(area segment: Int, first: UInt64, count: UInt64) throws(RuleViolation) {
        guard segment >= 0, segment < areaUnits.count else {
            throw RuleViolation(.malformed, "\(areaName(segment)) does not exist")
        }
        let (end, overflow) = first.addingReportingOverflow(count)
        guard !overflow, end <= areaUnits[segment] else {
            throw RuleViolation(
                .malformed,
                "\(isDisk(segment) ? "blocks" : "pages") \(first) to \(first &+ count &- 1) lie outside \(areaName(segment, named: true))"
            )
        }
    }

    /// A ROUND (memory areas) or DISK EXTENTS (disk areas) list; `ranges` name areas.
    mutating func accept(round number: UInt32, ranges newRanges: [PageRange], disks: Bool = false) throws(RuleViolation) {
        try checkStarted(.round)
        if let stray = newRanges.first(where: { isDisk($0.segment) != disks }) {
            throw RuleViolation(.malformed, "\(areaName(stray.segment)) listed in a \(disks ? "DISK EXTENTS" : "ROUND") record")
        }
        let kind = disks ? "DISK EXTENTS" : "ROUND"
        if roundPending {
            throw RuleViolation("\(kind) \(number) while round \(lastRound ?? 0) still misses \(missingPages) listed pages")
        }
        if stateStarted { throw RuleViolation("\(kind) \(number) after state chunks: every round comes before the state") }
        var previous: PageRange?
        if let lastRound {
            if number == lastRound {
                // The same number continues the round's list: after a list record of the same kind too full to hold
                // more, or as the round's disk part after its memory part.
                let continues = disks == lastListWasDisks && roundRecordFull
                guard continues || (disks && !lastListWasDisks) else {
                    throw RuleViolation(
                        "\(kind) \(number) again, though round \(number)'s last \(lastListWasDisks ? "DISK EXTENTS" : "ROUND") record "
                            + (disks == lastListWasDisks
                                ? "listed fewer than \(StreamFormat.maxRangesPerRound) ranges" : "came after its disk part"))
                }
                previous = lastRangeOfRound
            } else {
                guard lastRound < UInt32.max, number == lastRound + 1 else {
                    throw RuleViolation("round \(number) follows round \(lastRound): rounds are numbered one after the other")
                }
            }
        }
        guard newRanges.count <= StreamFormat.maxRangesPerRound else {
            throw RuleViolation(
                .malformed, "\(newRanges.count) ranges (at most \(StreamFormat.maxRangesPerRound) per ROUND record)")
        }
        for range in newRanges {
            guard range.count > 0 else { throw RuleViolation(.malformed, "empty page range") }
            try checkInside(area: range.segment, first: range.firstPage, count: range.count)
            if let previous,
                range.segment < previous.segment
                    || (range.segment == previous.segment && range.firstPage < previous.firstPage + previous.count)
            {
                throw RuleViolation(.malformed, "page ranges are not in ascending order without overlap")
            }
            previous = range
        }
        lastRound = number
        lastListWasDisks = disks
        roundRecordFull = newRanges.count == StreamFormat.maxRangesPerRound
        lastRangeOfRound = previous
        ranges = newRanges
        rangeIndex = 0
        pageInRange = 0
    }

    mutating func accept(pages segment: Int, first: UInt64, count: Int, zero: Int) throws(RuleViolation) {
        try checkStarted(.pages)
        guard count > 0, count <= StreamFormat.maxPagesPerBatch else {
            throw RuleViolation(.malformed, "batch of \(count) pages (1 to \(StreamFormat.maxPagesPerBatch) allowed)")
        }
        try checkInside(area: segment, first: first, count: UInt64(count))
        guard let next = nextPage else { throw RuleViolation("PAGES outside a round: no listed pages are pending") }
        guard next.segment == segment, next.page == first else {
            throw RuleViolation(
                "\(unitName(first, of: segment)) is not the next listed \(isDisk(segment) ? "block" : "page") (\(unitName(next.page, of: next.segment)))"
            )
        }
        guard UInt64(count) <= next.left else {
            throw RuleViolation("batch of \(count) pages from page \(first) runs past its listed range")
        }
        pageInRange += UInt64(count)
        if pageInRange == ranges[rangeIndex].count {
            rangeIndex += 1
            pageInRange = 0
        }
        if isDisk(segment) {
            diskBlocks += UInt64(count)
            diskZeroBlocks += UInt64(zero)
        } else {
            pages += UInt64(count)
            zeroPages += UInt64(zero)
        }
    }

    mutating func accept(chunk: StateChunk, device: Bool) throws(RuleViolation) {
        try checkStarted(device ? .deviceState : .kernelState)
        guard lastRound != nil else {
            throw RuleViolation(
                "\(device ? RecordType.deviceState : .kernelState) before any ROUND: the state follows the rounds")
        }
        stateStarted = true
        if let problem = Payload.chunkProblem(chunk) { throw RuleViolation(.malformed, problem) }
        stateBytes += chunk.data.count
        guard stateBytes <= StreamFormat.maxStateBytes else {
            throw RuleViolation(.malformed, "state chunks hold more than \(StreamFormat.maxStateBytes) bytes in all")
        }
        if device {
            guard deviceNames.contains(chunk.name) else {
                throw RuleViolation(
                    .malformed, "device state for \(UntrustedText.quote(chunk.name)), a device BEGIN does not list")
            }
            guard deviceChunks.insert(chunk.name).inserted else {
                throw RuleViolation("device state chunk \(UntrustedText.quote(chunk.name)) repeated")
            }
        } else {
            guard kernelChunks.count < StreamFormat.maxStateChunks else {
                throw RuleViolation(.malformed, "too many kernel state chunks")
            }
            guard kernelChunks.insert(chunk.name).inserted else {
                throw RuleViolation("kernel state chunk \(UntrustedText.quote(chunk.name)) repeated")
            }
        }
    }

    /// Checks END against what was counted; `records` and `bytes` count what came before END.
    mutating func accept(end: StreamEnd, records: UInt64, bytes: UInt64, running: UInt64) throws(RuleViolation) {
        try checkStarted(.end)
        guard lastRound != nil else { throw RuleViolation("END before any ROUND: a stream has at least one round") }
        var wrong: [String] = []
        if end.pages != pages { wrong.append("pages \(end.pages) (counted \(pages))") }
        if end.zeroPages != zeroPages { wrong.append("zero pages \(end.zeroPages) (counted \(zeroPages))") }
        if end.diskBlocks != diskBlocks { wrong.append("disk blocks \(end.diskBlocks) (counted \(diskBlocks))") }
        if end.diskZeroBlocks != diskZeroBlocks {
            wrong.append("zero disk blocks \(end.diskZeroBlocks) (counted \(diskZeroBlocks))")
        }
        if end.records != records { wrong.append("records \(end.records) (counted \(records))") }
        if end.bytes != bytes { wrong.append("bytes \(end.bytes) (counted \(bytes))") }
        if !wrong.isEmpty { throw RuleViolation(.malformed, "END totals disagree: " + wrong.joined(separator: ", ")) }
        if end.streamChecksum != running {
            throw RuleViolation(
                .checksumMismatch, "stream checksum mismatch: END says \(hex(end.streamChecksum)), records give \(hex(running))")
        }
        ended = true
    }
}

extension StreamRules {
    /// A continuation read without its BEGIN reached a verified END.
    mutating func markEnded() { ended = true }

    /// Moves past `units` listed pages as if they had arrived: a continuation's writer taking up its place.
    mutating func pass(units: UInt64) {
        var left = units
        while left > 0, roundPending {
            let step = min(left, ranges[rangeIndex].count - pageInRange)
            pageInRange += step
            left -= step
            if pageInRange == ranges[rangeIndex].count {
                rangeIndex += 1
                pageInRange = 0
            }
        }
    }

    /// The totals a continuation's END must carry, from where its stream stood.
    mutating func setTotals(pages: UInt64, zeroPages: UInt64, diskBlocks: UInt64, diskZeroBlocks: UInt64) {
        (self.pages, self.zeroPages, self.diskBlocks, self.diskZeroBlocks) = (pages, zeroPages, diskBlocks, diskZeroBlocks)
    }

    /// Everything but BEGIN (from which the rest is derived): where a reader stands, for a partial receive.
    func encodeProgress(into out: inout ByteWriter) {
        out.u32(lastRound ?? 0)
        out.bool(lastRound != nil)
        out.bool(roundRecordFull)
        out.bool(lastListWasDisks)
        out.bool(stateStarted)
        out.bool(lastRangeOfRound != nil)
        let last = lastRangeOfRound ?? PageRange(segment: 0, firstPage: 0, count: 0)
        out.u32(UInt32(ranges.count))
        for range in [last] + ranges {
            out.u32(UInt32(range.segment))
            out.u64(range.firstPage)
            out.u64(range.count)
        }
        out.u32(UInt32(rangeIndex))
        for value in [pageInRange, pages, zeroPages, diskBlocks, diskZeroBlocks, UInt64(stateBytes)] { out.u64(value) }
        for names in [kernelChunks, deviceChunks] {
            out.u32(UInt32(names.count))
            for name in names.sorted() { out.string16(name) }
        }
    }

    mutating func decodeProgress(from decoder: inout WireDecoder) throws {
        let round = try decoder.u32()
        lastRound = try decoder.u8() != 0 ? round : nil
        roundRecordFull = try decoder.u8() != 0
        lastListWasDisks = try decoder.u8() != 0
        stateStarted = try decoder.u8() != 0
        let hasLast = try decoder.u8() != 0
        func range() throws -> PageRange {
            let area = Int(try decoder.u32())
            guard area < areaUnits.count else { throw decoder.fail("area \(area) does not exist") }
            return PageRange(segment: area, firstPage: try decoder.u64(), count: try decoder.u64())
        }
        let count = Int(try decoder.u32())
        guard count <= StreamFormat.maxRangesPerRound, count * 20 <= decoder.remaining else {
            throw decoder.fail("range count \(count) does not fit")
        }
        let last = try range()
        lastRangeOfRound = hasLast ? last : nil
        var list: [PageRange] = []
        list.reserveCapacity(count)
        for _ in 0..<count { list.append(try range()) }
        ranges = list
        rangeIndex = Int(try decoder.u32())
        guard rangeIndex <= ranges.count else { throw decoder.fail("range index past the list") }
        pageInRange = try decoder.u64()
        pages = try decoder.u64()
        zeroPages = try decoder.u64()
        diskBlocks = try decoder.u64()
        diskZeroBlocks = try decoder.u64()
        stateBytes = Int(clamping: try decoder.u64())
        guard rangeIndex == ranges.count || pageInRange < ranges[rangeIndex].count else {
            throw decoder.fail("position past its range")
        }
        for device in [false, true] {
            let count = Int(try decoder.u32())
            guard count <= StreamFormat.maxStateChunks else { throw decoder.fail("too many chunk names") }
            var names = Set<String>()
            for _ in 0..<count { names.insert(try decoder.string16(what: "chunk name")) }
            if device { deviceChunks = names } else { kernelChunks = names }
        }
    }
}

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16).leftPadded(to: 16) }
