import MachineDescription
import SystemPackage
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Where received pages land, once their record's checksum has verified (or, where `landing` offers a place, as
/// they are read).
public protocol PageSink {
    /// The 4 KiB a page's data is copied to, or nil to discard it; used by the default `store`.
    func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer?
    /// The page is all zeroes (no data was sent for it).
    func zeroPage(segment: Int, page: UInt64) throws
    /// Takes `count` consecutive data pages from `page` on; `data` is valid only during the call.
    func store(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws
    /// Where `count` consecutive data pages from `page` on may be read straight from the stream, saving the copy
    /// `store` makes; nil to take them through `store`. Pages read there land before their record's checksum is
    /// checked; should it fail (or the stream end inside them), `landingFailed` is told.
    func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer?
    /// Pages read into `landing`'s place did not verify: their bytes may be anything, and the sink puts back what a
    /// later copy of their record expects to find there.
    func landingFailed(segment: Int, page: UInt64, count: Int) throws
    /// A buffer of at least `bytes` to read (or decode) a batch's data pages into, back to back, saving the copy
    /// `store` makes: `store` calls from inside it may keep the data there until it lands. nil to use the reader's
    /// own. The reader calls `stagingDone` once it has made every `store` call from it, or has given it up.
    func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer?
    func stagingDone()
}

extension PageSink {
    public func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer? { nil }
    public func landingFailed(segment: Int, page: UInt64, count: Int) throws {}
    public func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer? { nil }
    public func stagingDone() {}

    public func store(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        for index in 0..<count {
            guard let target = destination(segment: segment, page: page + UInt64(index)) else { continue }
            target.copyMemory(from: data + index * StreamFormat.pageSize, byteCount: StreamFormat.pageSize)
        }
    }
}

/// A sink that keeps nothing: for dumping and verifying a stream.
public struct DiscardingPageSink: PageSink {
    public init() {}
    public func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? { nil }
    public func zeroPage(segment: Int, page: UInt64) {}
}

/// Reads and verifies a version 1 migration stream (man/vmstream.5), one record at a time.
///
/// Memory is bounded by one record's payload (at most `StreamFormat.maxPayloadLength`). A batch's pages
/// are read into one buffer with one read (the sink's, where it lends one), hashed there while cache-hot, and
/// handed to the sink only after the record's checksum verified; still, nothing should run from them before `next`
/// has returned END.
public final class StreamReader {
    private let source: any ByteSource
    private var rules = StreamRules()
    private var headerRead = false
    private var offset: UInt64 = 0
    private var recordNumber: UInt64 = 0
    private var running: UInt64 = 0
    private let hasher = StreamingChecksum()
    /// One batch's data pages (read or decompressed), and skipped payload bytes.
    private let scratch = UnsafeMutableRawBufferPointer.allocate(
        byteCount: StreamFormat.maxPagesPerBatch * StreamFormat.pageSize, alignment: 64)
    /// Coded batches, allocated on first use.
    private var coded: UnsafeMutableRawBufferPointer?

    /// Called for each ignorable record of an unknown type that is skipped.
    public var warningHandler: (String) -> Void = { _ in }
    public private(set) var statistics = StreamStatistics()
    /// The record `next` returned last.
    public private(set) var lastRecord: RecordInfo?
    /// Ignorable flag bits from the stream header.
    public private(set) var headerFlags: UInt32 = 0
    /// Must-understand feature bits from the stream header.
    private var headerFeatures: UInt32 = 0
    private var hasDisks: Bool { headerFeatures & StreamFormat.disksFeature != 0 }
    private var isContinuation: Bool { headerFeatures & StreamFormat.continuationFeature != 0 }
    /// A continuation's RESUME, once read; `adopt` then gives the reader the partial receive it continues.
    public private(set) var resumePoint: ResumePoint?
    private var adopted = false
    /// The reader as it stood after the last verified record: what a partial receive keeps.
    private var lastGood: ReaderCheckpoint?
    /// Sends of this stream seen: 1, or the continuation's attempt.
    private var attempt: UInt32 = 1
    /// The stream's BEGIN, once read.
    public var begin: StreamBegin? { rules.begin }

    /// A reader on `input`; refuses a terminal.
    public convenience init(input: FileDescriptor) throws {
        guard !input.isTerminal else {
            throw StreamError(.terminal, "stream can not be read from a terminal; redirect standard input")
        }
        input.growPipe()
        self.init(source: FileSource(input))
    }

    /// A reader of a stream held in memory.
    public convenience init(bytes: [UInt8]) {
        self.init(source: MemorySource(bytes))
    }

    init(source: any ByteSource) {
        self.source = source
    }

    deinit {
        scratch.deallocate()
        coded?.deallocate()
    }

    /// The first error; the stream is not read past it.
    private var failure: StreamError?

    /// After END: how many bytes follow it that could be read now (all of the rest, for a file), without reading
    /// or waiting for them; nil when that cannot be told. A reader warns about them and ignores them.
    public func bytesWaitingAfterEnd() -> UInt64? {
        guard rules.ended else { return nil }
        return source.bytesWaiting()
    }

    /// The next record, with its pages already delivered into `sink`; nil after a verified END and end of input.
    public func next(into sink: some PageSink) throws -> StreamRecord? {
        if let failure { throw failure }
        do {
            return try readNext(into: sink)
        } catch let error as StreamError {
            failure = error
            throw error
        }
    }

    /// Bytes after END are not the stream's: once END has verified, `next` returns nil without reading on, so a
    /// transport that never signals end of input cannot hold a reader up. See `bytesWaitingAfterEnd`.
    private func readNext(into sink: some PageSink) throws -> StreamRecord? {
        if !headerRead {
            try readHeader()
            if isContinuation { return .resume(try readResume()) }
        }
        if isContinuation && !adopted {
            throw StreamError(.misuse, "a continuation is read on only after `adopt` gave it the partial receive it continues")
        }
        if rules.ended { return nil }
        while true {
            if let record = try readRecord(into: sink) { return record }
        }
    }

    private func readHeader() throws {
        var header = [UInt8](repeating: 0, count: StreamFormat.headerSize)
        let count = try header.withUnsafeMutableBytes { try source.read([$0]) }
        let magic = StreamFormat.magic
        if header[0..<min(count, magic.count)].elementsEqual(magic[0..<min(count, magic.count)]) == false {
            throw StreamError(.badMagic, "invalid stream (bad magic number)")
        }
        guard count == StreamFormat.headerSize else {
            throw StreamError(.truncated, "stream truncated at byte \(count) (inside the stream header)")
        }
        var decoder = WireDecoder(header) { StreamError(.malformed, $0) }
        _ = try decoder.raw(magic.count)
        let version = try decoder.u32()
        let features = try decoder.u32()
        let flags = try decoder.u32()
        let reserved = try decoder.u32()
        let checksum = try decoder.u64()
        let expected = Checksum.hash(Array(header[0..<24]))
        guard checksum == expected else {
            throw StreamError(.checksumMismatch, "checksum mismatch in the stream header at byte 0")
        }
        guard version == StreamFormat.version else {
            throw StreamError(
                .unsupportedVersion,
                "unsupported stream version \(version) (this reader understands version \(StreamFormat.version))")
        }
        let unknown = features & ~StreamFormat.knownFeatures
        guard unknown == 0 else {
            throw StreamError(
                .unsupportedFeature,
                "stream has unsupported feature, feature flags = \(String(features, radix: 16)) (unknown flags = \(String(unknown, radix: 16)))"
            )
        }
        guard reserved == 0 else { throw StreamError(.malformed, "stream header has a non-zero reserved field") }
        headerFlags = flags
        headerFeatures = features
        running = checksum
        offset = UInt64(StreamFormat.headerSize)
        statistics.bytes = offset
        headerRead = true
    }

    /// Reads exactly the bytes of `buffers`; running out is truncation inside the current record.
    private func readExactly(_ buffers: [UnsafeMutableRawBufferPointer]) throws {
        let wanted = buffers.reduce(0) { $0 + $1.count }
        let count = try source.read(buffers)
        offset += UInt64(count)
        guard count == wanted else {
            throw StreamError(.truncated, "stream truncated at byte \(offset) (inside record \(recordNumber))")
        }
    }

    private func readU64() throws -> UInt64 {
        var value: UInt64 = 0
        try withUnsafeMutableBytes(of: &value) { try readExactly([$0]) }
        return UInt64(littleEndian: value)
    }

    /// Reads `count` payload bytes nobody needs, adding them to the checksum.
    private func skip(_ count: Int) throws {
        var left = count
        while left > 0 {
            let piece = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<min(left, scratch.count)])
            try readExactly([piece])
            hasher.update(UnsafeRawBufferPointer(piece))
            left -= piece.count
        }
    }

    private struct Framing {
        var start: UInt64
        var type: RecordType
        var flags: UInt16
        var length: Int
        var headerChecksum: UInt64
    }

    /// Where this reader stands after its last verified record, once BEGIN has verified: what a partial receive keeps
    /// when the stream breaks. The caller adds the state chunks and rounds it collected.
    public func checkpoint() -> ReaderCheckpoint? {
        if failure == nil, rules.begin != nil {
            return ReaderCheckpoint(
                rules: rules, features: headerFeatures & ~StreamFormat.continuationFeature, offset: offset,
                recordNumber: recordNumber, running: running, statistics: statistics, attempt: attempt)
        }
        return lastGood
    }

    /// The RESUME record that opens a continuation, in place of BEGIN. Its own checksum verifies it; it is not part of
    /// the stream it continues, so it neither counts nor chains.
    private func readResume() throws -> ResumePoint {
        var header = [UInt8](repeating: 0, count: StreamFormat.recordHeaderSize)
        try header.withUnsafeMutableBytes { try readExactly([$0]) }
        var decoder = WireDecoder(header) { StreamError(.malformed, $0) }
        let rawType = try decoder.u16()
        let flags = try decoder.u16()
        let length = try decoder.u32()
        let headerChecksum = try decoder.u64()
        guard Checksum.header(type: rawType, flags: flags, length: length) == headerChecksum else {
            throw StreamError.checksum(record: 1, what: "header", offset: UInt64(StreamFormat.headerSize))
        }
        let framing = Framing(
            start: UInt64(StreamFormat.headerSize), type: RecordType(rawValue: rawType), flags: flags, length: Int(length),
            headerChecksum: headerChecksum)
        guard framing.type == .resume, flags == 0, framing.length == ResumePoint.payloadSize else {
            throw StreamError(
                .outOfOrder, "record 1 (\(framing.type)) at byte \(StreamFormat.headerSize): a continuation starts with RESUME")
        }
        hasher.reset(seed: headerChecksum)
        var payload = [UInt8](repeating: 0, count: framing.length)
        try payload.withUnsafeMutableBytes { try readExactly([$0]) }
        payload.withUnsafeBytes { hasher.update($0) }
        _ = try verify(framing)
        let point = try ResumePoint.decode(payload) {
            StreamError.malformed(.resume, record: 1, offset: UInt64(StreamFormat.headerSize), $0)
        }
        resumePoint = point
        return point
    }

    /// Takes up a continuation from the partial receive it continues: refuses, before reading any record of it, a
    /// continuation of another stream or from another place than where `checkpoint` stands.
    public func adopt(_ checkpoint: ReaderCheckpoint) throws {
        guard let point = resumePoint, !adopted else {
            throw StreamError(.misuse, "only a continuation, after its RESUME, takes up a partial receive")
        }
        let held = checkpoint.point
        guard point.uuid == held.uuid else {
            throw StreamError(
                .outOfOrder,
                "this stream continues stream \(point.uuidString), but the partial receive here is of stream \(held.uuidString)")
        }
        guard point.record == held.record, point.offset == held.offset, point.running == held.running else {
            throw StreamError(
                .outOfOrder,
                "this continuation starts at record \(point.record) (byte \(point.offset), running checksum \(hex(point.running))), "
                    + "but the partial receive here continues from record \(held.record) (byte \(held.offset), running checksum "
                    + "\(hex(held.running))): it was made from another token")
        }
        guard checkpoint.features & ~StreamFormat.disksFeature == 0,
            checkpoint.features == headerFeatures & ~StreamFormat.continuationFeature
        else {
            throw StreamError(.outOfOrder, "the continuation's header features do not match the stream it continues")
        }
        rules = checkpoint.rules
        offset = checkpoint.offset
        recordNumber = checkpoint.recordNumber
        running = checkpoint.running
        statistics = checkpoint.statistics
        attempt = max(point.attempt, checkpoint.attempt)
        adopted = true
    }

    /// A continuation read without the partial receive it continues (`vmstream dump`): each record's framing and
    /// checksum verify and chain from RESUME's running checksum, and END's totals and checksum are checked; their
    /// contents are not, since the stream's BEGIN and rules are elsewhere. Nil after END.
    public func nextUnanchored() throws -> RecordInfo? {
        if let failure { throw failure }
        do {
            if !headerRead { try readHeader() }
            guard let point = try resumePoint ?? (isContinuation ? readResume() : nil), !adopted else {
                throw StreamError(.misuse, "only a continuation is read without its BEGIN")
            }
            if rules.ended { return nil }
            if recordNumber == 0 {
                recordNumber = point.record - 1
                offset = point.offset
                running = point.running
            }
            let framing = try readFraming()
            let start = framing.start
            guard framing.length <= StreamFormat.maxPayloadLength else {
                throw StreamError(
                    .lengthTooLarge, "record \(recordNumber) at byte \(start) has payload length \(framing.length)")
            }
            hasher.reset(seed: framing.headerChecksum)
            var endPayload: [UInt8] = []
            if framing.type == .end, framing.length <= Payload.endSizeWithDisks {
                endPayload = [UInt8](repeating: 0, count: framing.length)
                try endPayload.withUnsafeMutableBytes { try readExactly([$0]) }
                endPayload.withUnsafeBytes { hasher.update($0) }
            } else {
                try skip(framing.length)
            }
            let checksum = try verify(framing)
            let before = running
            running = Checksum.chain(running, checksum)
            statistics.count(framing.type, bytes: Int(offset - start))
            if framing.type == .end {
                let fail: @Sendable (String) -> StreamError = { [recordNumber] in
                    StreamError.malformed(.end, record: recordNumber, offset: start, $0)
                }
                let end = try Payload.decodeEnd(endPayload, disks: hasDisks, fail: fail)
                guard end.records == recordNumber - 1, end.bytes == start, end.streamChecksum == before else {
                    throw fail("END's totals or checksum disagree with the records before it")
                }
                rules.markEnded()
            }
            lastRecord = RecordInfo(
                number: recordNumber, offset: start, type: framing.type, flags: framing.flags, payloadLength: framing.length,
                headerChecksum: framing.headerChecksum, checksum: checksum,
                runningChecksum: framing.type == .end ? before : running)
            return lastRecord
        } catch let error as StreamError {
            failure = error
            throw error
        }
    }

    /// Reads the trailer and compares it with the hasher's digest.
    ///
    /// A PAGES record whose checksum fails shortly before a pipe ends without END is what a sender interrupted in
    /// its final round leaves: it lends paused pages to the pipe and resumes its source, which changes them in
    /// flight. The message says so then; damage in a stream that goes on to its END is reported plainly.
    private func verify(_ framing: Framing) throws -> UInt64 {
        let stored = try readU64()
        let computed = hasher.digest
        guard stored == computed else {
            var error = StreamError.checksum(record: recordNumber, what: framing.type.description, offset: framing.start)
            if framing.type == .pages, let rest = source.rest(upTo: Self.inFlightLimit, patience: .milliseconds(300)),
                !StreamTail.endsWithEnd(rest)
            {
                error.message +=
                    "; the stream ends soon after it, without END: its sender was probably interrupted and "
                    + "its source resumed while these pages were in flight"
            }
            throw error
        }
        return computed
    }

    /// What a pipe and the pipes and sockets behind it may hold: 16 MiB.
    static let inFlightLimit = 16 << 20

    /// Reads the next record's header and checks its checksum; the record is counted from here on.
    private func readFraming() throws -> Framing {
        let start = offset
        var header = [UInt8](repeating: 0, count: StreamFormat.recordHeaderSize)
        let count = try header.withUnsafeMutableBytes { try source.read([$0]) }
        offset += UInt64(count)
        if count == 0 { throw StreamError(.truncated, "stream truncated at byte \(offset) (before END)") }
        recordNumber += 1
        if count < header.count {
            throw StreamError(.truncated, "stream truncated at byte \(offset) (inside record \(recordNumber))")
        }
        var decoder = WireDecoder(header) { StreamError(.malformed, $0) }
        let rawType = try decoder.u16()
        let flags = try decoder.u16()
        let length = try decoder.u32()
        let headerChecksum = try decoder.u64()
        guard Checksum.header(type: rawType, flags: flags, length: length) == headerChecksum else {
            throw StreamError.checksum(record: recordNumber, what: "header", offset: start)
        }
        return Framing(
            start: start, type: RecordType(rawValue: rawType), flags: flags, length: Int(length),
            headerChecksum: headerChecksum)
    }

    /// Reads one record; nil when it was an ignorable unknown record that was skipped.
    private func readRecord(into sink: some PageSink) throws -> StreamRecord? {
        if rules.begin != nil {
            lastGood = ReaderCheckpoint(
                rules: rules, features: headerFeatures & ~StreamFormat.continuationFeature, offset: offset,
                recordNumber: recordNumber, running: running, statistics: statistics, attempt: attempt)
        }
        let framing = try readFraming()
        let (start, flags, length) = (framing.start, framing.flags, framing.length)
        let place = "record \(recordNumber) (\(framing.type)) at byte \(start)"
        guard flags & ~StreamFormat.ignorableFlag == 0 else {
            throw StreamError(.malformed, "\(place) has unknown flags 0x\(String(flags, radix: 16))")
        }
        guard framing.length <= StreamFormat.maxPayloadLength else {
            throw StreamError(
                .lengthTooLarge, "\(place) has payload length \(length), above the limit of \(StreamFormat.maxPayloadLength)")
        }
        hasher.reset(seed: framing.headerChecksum)
        let record: StreamRecord?
        let checksum: UInt64
        if framing.type == .pages || framing.type == .diskBlocks {
            (record, checksum) = try readPages(framing, place: place, into: sink)
        } else if !framing.type.isKnown {
            guard flags & StreamFormat.ignorableFlag != 0 else {
                throw StreamError(.unknownRecord, "\(place) has an unknown type that is not ignorable")
            }
            try skip(framing.length)
            checksum = try verify(framing)
            try rule(place) { () throws(RuleViolation) in try rules.checkStarted(framing.type) }
            warningHandler("skipped \(place): unknown ignorable record type, \(length) bytes")
            record = nil
        } else {
            var payload = [UInt8](repeating: 0, count: framing.length)
            try payload.withUnsafeMutableBytes { try readExactly([$0]) }
            payload.withUnsafeBytes { hasher.update($0) }
            checksum = try verify(framing)
            record = try interpret(payload, framing, place: place)
        }
        let before = running
        running = Checksum.chain(running, checksum)
        statistics.count(framing.type, bytes: Int(offset - start))
        lastRecord = RecordInfo(
            number: recordNumber, offset: start, type: framing.type, flags: flags,
            payloadLength: framing.length, headerChecksum: framing.headerChecksum, checksum: checksum,
            runningChecksum: framing.type == .end ? before : running)
        return record
    }

    /// Applies a rule, naming the record that broke it.
    private func rule(_ place: String, _ body: () throws(RuleViolation) -> Void) throws {
        do { try body() } catch { throw StreamError(error.kind, "\(place): \(error.message)") }
    }

    private func interpret(_ payload: [UInt8], _ framing: Framing, place: String) throws -> StreamRecord {
        let number = recordNumber
        let type = framing.type
        let start = framing.start
        let fail: @Sendable (String) -> StreamError = { StreamError.malformed(type, record: number, offset: start, $0) }
        switch type {
        case .begin:
            let begin = try Payload.decodeBegin(payload, fail: fail)
            try rule(place) { () throws(RuleViolation) in try rules.accept(begin: begin) }
            guard begin.machine.disks.isEmpty != hasDisks else {
                throw fail(
                    hasDisks
                        ? "the stream header announces disks BEGIN does not list"
                        : "BEGIN lists disks the stream header does not announce")
            }
            return .begin(begin)
        case .round, .diskExtents:
            let disks = type == .diskExtents
            try rule(place) { () throws(RuleViolation) in try rules.checkStarted(type) }
            let (round, ranges) = try Payload.decodeRound(payload, fail: fail)
            try rule(place) { () throws(RuleViolation) in
                let areas = try ranges.map { range throws(RuleViolation) in
                    PageRange(segment: try rules.area(range.segment, disk: disks), firstPage: range.firstPage, count: range.count)
                }
                try rules.accept(round: round, ranges: areas, disks: disks)
            }
            return disks ? .diskExtents(number: round, ranges: ranges) : .round(number: round, ranges: ranges)
        case .kernelState, .deviceState:
            try rule(place) { () throws(RuleViolation) in try rules.checkStarted(type) }
            let chunk = try Payload.decodeChunk(payload, fail: fail)
            try rule(place) { () throws(RuleViolation) in try rules.accept(chunk: chunk, device: type == .deviceState) }
            return type == .deviceState ? .deviceState(chunk) : .kernelState(chunk)
        case .end:
            try rule(place) { () throws(RuleViolation) in try rules.checkStarted(.end) }
            let end = try Payload.decodeEnd(payload, disks: hasDisks, fail: fail)
            let (records, bytes, checksum) = (recordNumber - 1, start, running)
            try rule(place) { () throws(RuleViolation) in
                try rules.accept(end: end, records: records, bytes: bytes, running: checksum)
            }
            return .end(end)
        case .resume:
            throw StreamError(.outOfOrder, "\(place): RESUME comes only first, in place of BEGIN, in a continuation")
        default:
            // `readRecord` skips ignorable unknown types before this; an unknown type never reads as END.
            throw StreamError(.unknownRecord, "\(place) has an unknown type that is not ignorable")
        }
    }

    /// Reads a PAGES record, landing data pages in the sink. A content error found before the
    /// checksum is known waits for the checksum, so a corrupted record reports the mismatch.
    /// Reads a PAGES or DISK BLOCKS record (the same payload; a disk's index names the area after the segments).
    private func readPages(_ framing: Framing, place: String, into sink: some PageSink) throws -> (StreamRecord?, UInt64) {
        let disk = framing.type == .diskBlocks
        let prefixSize = Payload.pagesPrefixSize
        let pageSize = StreamFormat.pageSize
        var consumed = 0
        func deferred(_ error: StreamError) throws -> Never {
            try skip(framing.length - consumed)
            _ = try verify(framing)
            throw error
        }
        func malformed(_ reason: String) -> StreamError {
            StreamError.malformed(framing.type, record: recordNumber, offset: framing.start, reason)
        }
        guard framing.length >= prefixSize else { try deferred(malformed("payload shorter than its \(prefixSize)-byte prefix")) }
        var prefix = [UInt8](repeating: 0, count: prefixSize)
        try prefix.withUnsafeMutableBytes { try readExactly([$0]) }
        prefix.withUnsafeBytes { hasher.update($0) }
        consumed = prefixSize
        var decoder = WireDecoder(prefix) { StreamError(.malformed, $0) }
        let segment = Int(try decoder.u16())
        let encodingValue = try decoder.u8()
        let reserved = try decoder.u8()
        let count = Int(try decoder.u32())
        let firstPage = try decoder.u64()
        let codec = PageCodecs.codec(encoding: encodingValue)
        guard encodingValue == PageCodecs.rawEncoding || codec != nil else {
            try deferred(malformed("unknown encoding \(encodingValue)"))
        }
        guard reserved == 0 else { try deferred(malformed("reserved byte is not zero")) }
        guard count >= 1, count <= StreamFormat.maxPagesPerBatch else {
            try deferred(malformed("batch of \(count) pages (1 to \(StreamFormat.maxPagesPerBatch) allowed)"))
        }
        let bitmapSize = Payload.bitmapSize(count)
        guard framing.length >= prefixSize + bitmapSize else {
            try deferred(malformed("payload too short for its zero-page bitmap"))
        }
        var bitmap = [UInt8](repeating: 0, count: bitmapSize)
        try bitmap.withUnsafeMutableBytes { try readExactly([$0]) }
        bitmap.withUnsafeBytes { hasher.update($0) }
        consumed += bitmapSize
        let isZero = { (index: Int) in bitmap[index / 8] & (1 << UInt8(index % 8)) != 0 }
        // Runs of adjacent data pages: each goes to the sink in one piece.
        var dataRuns: [Range<Int>] = []
        var index = 0
        while index < count {
            if isZero(index) {
                index += 1
                continue
            }
            var end = index + 1
            while end < count && !isZero(end) { end += 1 }
            dataRuns.append(index..<end)
            index = end
        }
        let zeroCount = bitmap.reduce(0) { $0 + $1.nonzeroBitCount }
        if count % 8 != 0, bitmap[bitmapSize - 1] >> UInt8(count % 8) != 0 {
            try deferred(malformed("bits set beyond the batch in the zero-page bitmap"))
        }
        let dataBytes = (count - zeroCount) * pageSize
        let wireBytes = framing.length - consumed
        if let codec {
            // A coded batch is smaller than its data, or the writer would have sent it raw.
            guard dataBytes > 0, wireBytes > 0, wireBytes < dataBytes else {
                try deferred(malformed("\(wireBytes) \(codec.name) bytes for \(count - zeroCount) data pages"))
            }
        } else {
            guard wireBytes == dataBytes else {
                try deferred(malformed("\(wireBytes) data bytes for \(count - zeroCount) data pages"))
            }
        }
        let area: Int
        do {
            area = try rules.area(segment, disk: disk)
            try rules.accept(pages: area, first: firstPage, count: count, zero: zeroCount)
        } catch {
            try deferred(StreamError(error.kind, "\(place): \(error.message)"))
        }

        // Raw data pages are read where the sink offers to land them, else (and when coded) they end up back to
        // back in the sink's staging buffer or in scratch: read there, or decoded there.
        let checksum: UInt64
        var places: [UnsafeMutableRawBufferPointer] = []
        var data = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<dataBytes])
        if codec == nil {
            for run in dataRuns {
                guard let place = sink.landing(segment: area, page: firstPage + UInt64(run.lowerBound), count: run.count)
                else { break }
                places.append(UnsafeMutableRawBufferPointer(start: place, count: run.count * pageSize))
            }
        }
        let landed = !dataRuns.isEmpty && places.count == dataRuns.count
        let staged = landed || dataRuns.isEmpty ? nil : sink.staging(segment: area, bytes: dataBytes)
        defer { if staged != nil { sink.stagingDone() } }
        if let staged { data = UnsafeMutableRawBufferPointer(start: staged, count: dataBytes) }
        if landed {
            do {
                try readExactly(places)
                for place in places { hasher.update(UnsafeRawBufferPointer(place)) }
                checksum = try verify(framing)
            } catch {
                // Should the sink fail to put them back, its error goes up instead: no stream error, so nothing of the
                // receive is kept.
                for run in dataRuns {
                    try sink.landingFailed(segment: area, page: firstPage + UInt64(run.lowerBound), count: run.count)
                }
                throw error
            }
        } else if let codec {
            if coded == nil { coded = .allocate(byteCount: StreamFormat.maxPayloadLength, alignment: 64) }
            let wire = UnsafeMutableRawBufferPointer(rebasing: coded![0..<wireBytes])
            try readExactly([wire])
            hasher.update(UnsafeRawBufferPointer(wire))
            checksum = try verify(framing)
            guard codec.decode(UnsafeRawBufferPointer(wire), into: data) else {
                throw malformed("\(codec.name) data does not decode to \(count - zeroCount) pages")
            }
        } else {
            try readExactly([data])
            hasher.update(UnsafeRawBufferPointer(data))
            checksum = try verify(framing)
        }
        var delivered = 0
        for run in dataRuns where !landed {
            try sink.store(
                segment: area, page: firstPage + UInt64(run.lowerBound), count: run.count,
                from: data.baseAddress! + delivered * pageSize)
            delivered += run.count
        }
        for index in 0..<count where isZero(index) {
            try sink.zeroPage(segment: area, page: firstPage + UInt64(index))
        }
        if disk {
            statistics.diskBlocks += UInt64(count)
            statistics.diskZeroBlocks += UInt64(zeroCount)
            statistics.diskDataBytes += UInt64(dataBytes)
        } else {
            statistics.pages += UInt64(count)
            statistics.zeroPages += UInt64(zeroCount)
        }
        statistics.pageDataBytes += UInt64(dataBytes)
        statistics.pageWireBytes += UInt64(wireBytes)
        if codec == nil { statistics.rawBatches += 1 } else { statistics.compressedBatches += 1 }
        let batch = PageBatch(segment: segment, firstPage: firstPage, count: count, zeroPages: zeroCount, encoding: encodingValue)
        return (disk ? .diskBlocks(batch) : .pages(batch), checksum)
    }
}
