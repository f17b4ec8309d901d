import Dispatch
import MachineDescription
import SystemPackage
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Writes a version 1 migration stream (man/vmstream.5) to a file descriptor.
///
/// Memory stays bounded by one page batch whatever the guest's size; raw page batches are
/// written straight from the caller's memory with writev.
public final class StreamWriter {
    private let sink: any ByteSink
    private let compression: Compression
    private var rules = StreamRules()
    private var running: UInt64 = 0
    private var failed: StreamError?
    private let hasher = StreamingChecksum()
    /// Round list as the caller gave it; written in ROUND records of at most `maxRangesPerRound`.
    private var roundNumber: UInt32 = 0
    private var roundList: [PageRange] = []
    private var roundWritten = 0
    /// Per batch being prepared at once: a still copy of its data pages, and their coded form.
    private var lanes: [BatchLane] = []
    /// Batches prepared at once: a codec codes them on every core; raw needs no more than one.
    private let lanesWanted: Int

    public private(set) var statistics = StreamStatistics()
    /// Bytes that went to the output: all of `statistics.bytes`, or for a continuation its header, RESUME and the
    /// records from the resume point on.
    public private(set) var bytesWritten: UInt64 = 0
    /// A continuation's resume point until it is reached: records before it are made and checksummed, not written.
    private var resumeAt: ResumePoint?
    /// Kept for a live stream that may be continued (`keepJournal`).
    public private(set) var journal: StreamJournal?
    /// The journal's round under way: its index, list records so far, and units of its list sent.
    private var journalRound = -1
    private var roundListRecords = 0
    private var roundUnitsDone: UInt64 = 0

    /// Pages written with `mayChange: false` go into a pipe by reference (vmsplice), not copied; the caller
    /// then must keep them unchanged until `waitUntilConsumed` returns. Off by default; no effect on files.
    /// A page changed too early is still caught: its record's checksum was taken before it was lent.
    public var lendsStablePages = false

    /// A writer on `output`; refuses a terminal.
    public convenience init(output: FileDescriptor, compression: Compression = .none) throws {
        guard !output.isTerminal else {
            throw StreamError(.terminal, "stream can not be written to a terminal; redirect standard output")
        }
        output.growPipe()
        self.init(sink: FileSink(output), compression: compression)
    }

    init(sink: any ByteSink, compression: Compression) {
        self.sink = sink
        self.compression = compression
        // 8 batches (8 MiB of guest pages) per core's turn keep two cores busy despite uneven batches.
        lanesWanted = compression.codec == nil ? 1 : 8
    }

    /// Returns once the reader has taken every byte written so far, or has gone; at once for a file.
    public func waitUntilConsumed() { sink.waitUntilConsumed() }

    /// Makes this writer write a continuation (`vmsend -t`): the same calls as for the whole stream, but records before
    /// `point.record` are only made and checksummed; at that record the running checksum and offset must equal the
    /// point's (else the source is not what it was), and the output gets a continuation header, RESUME, and the rest.
    /// Call before `writeBegin`.
    public func continueFrom(_ point: ResumePoint) throws {
        guard rules.begin == nil else { throw StreamError(.misuse, "a continuation is set up before BEGIN") }
        resumeAt = point
    }

    /// Keeps a journal of where the stream stood after each record of its rounds, so that a live stream can be
    /// continued from any of them. Call before `writeBegin` or `continueLive`.
    public func keepJournal() { journal = StreamJournal() }

    /// Makes this writer take up a live stream where its receiver stopped: `point` (the receiver's token) must be a
    /// place `old` recorded. Nothing is written yet; the output then gets a continuation header, RESUME, and whatever
    /// the caller writes next. Returns where that is, so the caller knows what the receiver lacks. Where the receiver
    /// holds part of the state, the state records before the point are made again and must match, as in `continueFrom`.
    public func continueLive(from point: ResumePoint, journal old: StreamJournal) throws -> LiveResumePlace {
        guard rules.begin == nil else { throw StreamError(.misuse, "a continuation is set up before BEGIN") }
        let contents = old.snapshot
        let fail = StreamJournal.fail
        let begin = try Payload.decodeBegin(contents.begin, fail: fail)
        guard begin.uuid == point.uuid else {
            throw StreamError(.misuse, "the journal is of stream \(begin.uuidString), not \(point.uuidString)")
        }
        try guarded { () throws(RuleViolation) in try self.rules.accept(begin: begin) }
        let last = point.record - 1
        guard let markIndex = contents.marks.lastIndex(where: { $0.record <= last }) else {
            throw fail("no record before \(point.record)")
        }
        let mark = contents.marks[markIndex]
        if mark.record == last {
            guard mark.bytes == point.offset, mark.running == point.running else {
                throw StreamError(
                    .checksumMismatch,
                    "the token's place (record \(point.record), byte \(point.offset), running checksum \(hex(point.running))) "
                        + "is not where this source's stream stood (byte \(mark.bytes), \(hex(mark.running)))")
            }
        } else if markIndex != contents.marks.count - 1 {
            throw fail("record \(last) is missing")
        }
        statistics = StreamStatistics()
        statistics.records = mark.record
        statistics.bytes = mark.bytes
        running = mark.running
        if mark.round >= 0 {
            let round = contents.rounds[mark.round]
            (roundNumber, roundList, roundWritten) = (round.number, round.list, 0)
            var unitsBefore: UInt64 = 0
            for index in 0..<mark.listRecords {
                if index > 0 {
                    let units = rules.missingUnits
                    unitsBefore += units
                    rules.pass(units: units)
                }
                let (part, disks) = nextRoundPart()
                try guarded { () throws(RuleViolation) in try self.rules.accept(round: round.number, ranges: part, disks: disks) }
                roundWritten += part.count
            }
            guard mark.unitsDone >= unitsBefore, mark.unitsDone - unitsBefore <= rules.missingUnits else {
                throw fail("record \(mark.record) lies outside its round's list")
            }
            rules.pass(units: mark.unitsDone - unitsBefore)
        }
        rules.setTotals(
            pages: mark.pages, zeroPages: mark.zeroPages, diskBlocks: mark.diskBlocks, diskZeroBlocks: mark.diskZeroBlocks)
        // What the receiver lacks besides the rest of its round; this send owes it too, should it break before its
        // first round after the point is listed.
        var later = contents.rounds[(mark.round + 1)...].map(\.list) + contents.pending
        if mark.round < contents.carriedBefore { later.append(contents.carried) }
        if let journal {
            journal.update {
                $0.begin = contents.begin
                $0.pauseTime = contents.pauseTime
                $0.rounds = Array(contents.rounds[...mark.round])
                $0.marks = Array(contents.marks[...markIndex])
                $0.carried = later.flatMap { $0 }
                $0.carriedBefore = mark.round + 1
            }
            (journalRound, roundListRecords, roundUnitsDone) = (mark.round, mark.listRecords, mark.unitsDone)
        }
        resumeAt = point
        let rest = Self.ranges(of: roundList, after: mark.unitsDone)
        if mark.record < last {
            guard mark.round >= 0, rest.isEmpty, later.allSatisfy(\.isEmpty) else {
                throw fail("the state starts while pages are owed")
            }
            return .inState
        }
        guard mark.round >= 0 else { return .beforeRounds }
        return .inRound(number: roundNumber, rest: rest, later: later.filter { !$0.isEmpty })
    }

    /// The part of `list` after its first `units` pages.
    static func ranges(of list: [PageRange], after units: UInt64) -> [PageRange] {
        var skip = units
        var rest: [PageRange] = []
        for range in list {
            if skip >= range.count {
                skip -= range.count
                continue
            }
            rest.append(PageRange(segment: range.segment, firstPage: range.firstPage + skip, count: range.count - skip))
            skip = 0
        }
        return rest
    }

    /// Writes the stream header and the BEGIN record; must come first.
    public func writeBegin(_ begin: StreamBegin) throws {
        if let point = resumeAt, point.uuid != begin.uuid {
            throw StreamError(.misuse, "BEGIN's stream \(begin.uuidString) is not the one being continued (\(point.uuidString))")
        }
        try guarded { () throws(RuleViolation) in try self.rules.accept(begin: begin) }
        let payload = Payload.encodeBegin(begin)
        guard payload.count <= StreamFormat.maxPayloadLength else {
            throw StreamError(
                .misuse, "BEGIN has \(payload.count) bytes, above the record limit of \(StreamFormat.maxPayloadLength)")
        }
        var header = ByteWriter()
        header.raw(StreamFormat.magic)
        header.u32(StreamFormat.version)
        header.u32(begin.machine.disks.isEmpty ? 0 : StreamFormat.disksFeature)  // must-understand features
        header.u32(0)  // ignorable flags
        header.u32(0)  // reserved
        running = Checksum.hash(header.bytes)
        header.u64(running)
        journal?.update { $0.begin = payload }
        if resumeAt == nil {
            try emit { try self.sink.write([header.bytes.withUnsafeBytes { $0 }]) }
            bytesWritten += UInt64(header.bytes.count)
        }
        statistics.bytes += UInt64(header.bytes.count)
        try writeRecord(.begin, payload: payload)
    }

    /// Announces round `number` and the pages that follow, in ascending order; `writePages` must then send them in that order.
    /// Ranges name areas (`StreamBegin.areaCount`): memory segments go out in ROUND records, disks in DISK EXTENTS.
    public func writeRound(_ number: UInt32, pages ranges: [PageRange]) throws {
        try checkUsable()
        if roundWritten < roundList.count {
            throw StreamError(.misuse, "ROUND \(number) while round \(roundNumber) still has unwritten listed pages")
        }
        let previous = (roundNumber, roundList, roundWritten)
        (roundNumber, roundList, roundWritten) = (number, ranges, 0)
        let previousJournal = (journalRound, roundListRecords, roundUnitsDone)
        let previousPending = journal?.snapshot.pending ?? []
        if let journal {
            // The list holds what was fetched: nothing is pending any more.
            journal.update {
                $0.rounds.append(StreamJournal.Round(number: number, list: ranges))
                $0.pending = []
            }
            (journalRound, roundListRecords, roundUnitsDone) = (journalRound + 1, 0, 0)
        }
        do {
            try writeRoundPart()
        } catch {
            // A refused list leaves no round pending.
            if roundWritten == 0 {
                (roundNumber, roundList, roundWritten) = previous
                if let journal, previousJournal.0 < journalRound {
                    journal.update {
                        $0.rounds.removeLast()
                        $0.pending = previousPending
                    }
                    (journalRound, roundListRecords, roundUnitsDone) = previousJournal
                }
            }
            throw error
        }
    }

    /// The next part of the round's list: at most `maxRangesPerRound` ranges, all of one kind (memory or disks).
    private func nextRoundPart() -> (part: [PageRange], disks: Bool) {
        let disks = roundWritten < roundList.count && rules.isDisk(roundList[roundWritten].segment)
        var end = min(roundList.count, roundWritten + StreamFormat.maxRangesPerRound)
        if let boundary = roundList[roundWritten..<end].firstIndex(where: { rules.isDisk($0.segment) != disks }) {
            end = boundary
        }
        return (Array(roundList[roundWritten..<end]), disks)
    }

    /// The next ROUND or DISK EXTENTS record of the list.
    private func writeRoundPart() throws {
        let (part, disks) = nextRoundPart()
        roundListRecords += 1
        try guarded { () throws(RuleViolation) in try self.rules.accept(round: self.roundNumber, ranges: part, disks: disks) }
        roundWritten += part.count
        let wire = part.map { PageRange(segment: wireIndex($0.segment), firstPage: $0.firstPage, count: $0.count) }
        try writeRecord(disks ? .diskExtents : .round, payload: Payload.encodeRound(roundNumber, wire[...]))
    }

    /// A segment's index, or a disk's (an area past the segments) as the disk records number it.
    private func wireIndex(_ area: Int) -> Int {
        rules.isDisk(area) ? area - (rules.begin?.machine.segments.count ?? 0) : area
    }

    /// Writes pages [firstPage, firstPage + count) of `segment`; `pages` points at page `firstPage`
    /// in the caller's memory. The pages must be the next ones the current round lists.
    ///
    /// `mayChange` says a running guest may write the pages meanwhile (a live round): each batch is then
    /// copied once before it is checksummed, so the checksum matches the bytes sent. Pages of a paused
    /// guest are written straight from its memory (lent to a pipe with `lendsStablePages`).
    /// With a codec, up to 8 batches are coded at once on all cores, then written in order.
    public func writePages(
        segment: Int, firstPage: UInt64, count: UInt64, from pages: UnsafeRawPointer,
        mayChange: Bool = false
    ) throws {
        try checkUsable()
        var done: UInt64 = 0
        while done < count {
            if !rules.roundPending && roundWritten < roundList.count { try writeRoundPart() }
            guard let next = rules.nextPage else {
                throw StreamError(
                    .misuse,
                    "pages \(firstPage + done) to \(firstPage + count - 1) of segment \(segment) were not listed in a ROUND")
            }
            guard next.segment == segment, next.page == firstPage + done else {
                throw StreamError(
                    .misuse,
                    "page \(firstPage + done) of segment \(segment) is not the next listed page (page \(next.page) of segment \(next.segment))"
                )
            }
            let perBatch = UInt64(StreamFormat.maxPagesPerBatch)
            let span = min(next.left, count - done, perBatch * UInt64(lanesWanted))
            let batches = Int((span + perBatch - 1) / perBatch)
            while lanes.count < batches { lanes.append(BatchLane(codec: compression.codec)) }
            // An address, not a pointer, crosses threads: each lane reads only its own batch of it.
            let source = UInt(bitPattern: pages + Int(done) * StreamFormat.pageSize)
            let prepare = { @Sendable [lanes, compression] (index: Int) in
                let first = UInt64(index) * perBatch
                lanes[index].prepare(
                    from: UnsafeRawPointer(bitPattern: source)! + Int(first) * StreamFormat.pageSize,
                    count: Int(min(perBatch, span - first)), copy: mayChange, codec: compression.codec)
            }
            if batches > 1 {
                DispatchQueue.concurrentPerform(iterations: batches, execute: prepare)
            } else {
                prepare(0)
            }
            for index in 0..<batches {
                try writeBatch(
                    segment: segment, firstPage: firstPage + done + UInt64(index) * perBatch, lanes[index],
                    lend: lendsStablePages && !mayChange)
            }
            done += span
        }
    }

    private func writeBatch(segment: Int, firstPage: UInt64, _ batch: BatchLane, lend: Bool) throws {
        try guarded { () throws(RuleViolation) in
            try self.rules.accept(pages: segment, first: firstPage, count: batch.count, zero: batch.count - batch.dataPages)
        }
        let disk = rules.isDisk(segment)
        var prefix = ByteWriter()
        prefix.u16(UInt16(wireIndex(segment)))
        prefix.u8(batch.encoding)
        prefix.u8(0)
        prefix.u32(UInt32(batch.count))
        prefix.u64(firstPage)
        prefix.raw(batch.bitmap)
        let wireData = batch.data.reduce(0) { $0 + $1.count }
        roundUnitsDone += UInt64(batch.count)
        try writeRecord(
            disk ? .diskBlocks : .pages, prefix: prefix.bytes, data: batch.data, lend: lend && batch.dataInGuestMemory)

        if disk {
            statistics.diskBlocks += UInt64(batch.count)
            statistics.diskZeroBlocks += UInt64(batch.count - batch.dataPages)
            statistics.diskDataBytes += UInt64(batch.dataPages * StreamFormat.pageSize)
        } else {
            statistics.pages += UInt64(batch.count)
            statistics.zeroPages += UInt64(batch.count - batch.dataPages)
        }
        statistics.pageDataBytes += UInt64(batch.dataPages * StreamFormat.pageSize)
        statistics.pageWireBytes += UInt64(wireData)
        if batch.encoding == PageCodecs.rawEncoding { statistics.rawBatches += 1 } else { statistics.compressedBatches += 1 }
    }

    /// Writes one per-vCPU or per-VM hypervisor state chunk; names must not repeat.
    public func writeKernelState(_ chunk: StateChunk) throws {
        try writeChunk(chunk, type: .kernelState)
    }

    /// Writes one device's state; the name must be a device BEGIN lists, and must not repeat.
    public func writeDeviceState(_ chunk: StateChunk) throws {
        try writeChunk(chunk, type: .deviceState)
    }

    private func writeChunk(_ chunk: StateChunk, type: RecordType) throws {
        try checkRoundComplete(type)
        // Before encoding: a name too long for its 16-bit length would trap there.
        if let problem = Payload.chunkProblem(chunk) { throw StreamError(.misuse, "state chunk: \(problem)") }
        let payload = Payload.encodeChunk(chunk)
        guard payload.count <= StreamFormat.maxPayloadLength else {
            throw StreamError(
                .misuse,
                "state chunk \(chunk.name) has \(chunk.data.count) bytes, above the record limit of \(StreamFormat.maxPayloadLength)"
            )
        }
        try guarded { () throws(RuleViolation) in try self.rules.accept(chunk: chunk, device: type == .deviceState) }
        try writeRecord(type, payload: payload)
    }

    /// Writes END with the totals and closing checksum; `sourcePauseTime` is ns since the epoch, 0 if never paused.
    public func writeEnd(sourcePauseTime: UInt64) throws {
        try checkRoundComplete(.end)
        let end = StreamEnd(
            pages: rules.pages, zeroPages: rules.zeroPages, bytes: statistics.bytes,
            records: statistics.records, sourcePauseTime: sourcePauseTime, streamChecksum: running,
            diskBlocks: rules.diskBlocks, diskZeroBlocks: rules.diskZeroBlocks)
        let (records, bytes, checksum) = (statistics.records, statistics.bytes, running)
        try guarded { () throws(RuleViolation) in
            try self.rules.accept(end: end, records: records, bytes: bytes, running: checksum)
        }
        try writeRecord(.end, payload: Payload.encodeEnd(end, disks: rules.begin?.machine.disks.isEmpty == false))
        if let point = resumeAt {
            throw StreamError(
                .misuse, "the resume point, record \(point.record), lies past this stream's END (record \(statistics.records))")
        }
    }

    /// At a continuation's resume point: checks the stream made so far is the one the receiver verified, then writes
    /// the continuation's header and RESUME record.
    private func startContinuation(_ point: ResumePoint) throws {
        guard statistics.bytes == point.offset, running == point.running else {
            throw StreamError(
                .checksumMismatch,
                "the stream made again differs from the one sent before at record \(point.record): running checksum "
                    + "\(hex(running)) at byte \(statistics.bytes), where the receiver verified \(hex(point.running)) at byte "
                    + "\(point.offset); the source changed since")
        }
        var header = ByteWriter()
        header.raw(StreamFormat.magic)
        header.u32(StreamFormat.version)
        let disks = rules.begin?.machine.disks.isEmpty == false
        header.u32((disks ? StreamFormat.disksFeature : 0) | StreamFormat.continuationFeature)
        header.u32(0)
        header.u32(0)
        header.u64(Checksum.hash(header.bytes))
        let payload = point.encode()
        let headerChecksum = Checksum.header(type: RecordType.resume.rawValue, flags: 0, length: UInt32(payload.count))
        var record = ByteWriter()
        record.u16(RecordType.resume.rawValue)
        record.u16(0)
        record.u32(UInt32(payload.count))
        record.u64(headerChecksum)
        record.raw(payload)
        record.u64(Checksum.hash(payload, seed: headerChecksum))
        let bytes = header.bytes + record.bytes
        try emit { try bytes.withUnsafeBytes { try self.sink.write([$0]) } }
        bytesWritten += UInt64(bytes.count)
        resumeAt = nil
    }

    private func checkRoundComplete(_ type: RecordType) throws {
        try checkUsable()
        if rules.roundPending || roundWritten < roundList.count {
            throw StreamError(.misuse, "\(type) while round \(roundNumber) still has unwritten listed pages")
        }
    }

    private func writeRecord(_ type: RecordType, payload: [UInt8]) throws {
        try payload.withUnsafeBytes { try writeRecord(type, prefix: [], data: [$0]) }
    }

    /// Frames and writes one record: header, `prefix` and `data` as the payload, trailer; `lend` lends `data`.
    private func writeRecord(_ type: RecordType, prefix: [UInt8], data: [UnsafeRawBufferPointer], lend: Bool = false) throws {
        let length = prefix.count + data.reduce(0) { $0 + $1.count }
        let headerChecksum = Checksum.header(type: type.rawValue, flags: 0, length: UInt32(length))
        var header = ByteWriter()
        header.u16(type.rawValue)
        header.u16(0)
        header.u32(UInt32(length))
        header.u64(headerChecksum)
        hasher.reset(seed: headerChecksum)
        prefix.withUnsafeBytes { hasher.update($0) }
        for buffer in data { hasher.update(buffer) }
        var trailer = ByteWriter()
        let checksum = hasher.digest
        trailer.u64(checksum)
        if let point = resumeAt, statistics.records + 1 >= point.record { try startContinuation(point) }
        let recordBytes = header.bytes.count + length + trailer.bytes.count
        // Marked before the bytes go out: a journal copied while they are being written then already knows the record.
        if let journal, [.begin, .round, .diskExtents, .pages, .diskBlocks].contains(type) {
            let mark = StreamJournal.Mark(
                record: statistics.records + 1, bytes: statistics.bytes + UInt64(recordBytes),
                running: Checksum.chain(running, checksum), pages: rules.pages, zeroPages: rules.zeroPages,
                diskBlocks: rules.diskBlocks, diskZeroBlocks: rules.diskZeroBlocks, round: journalRound,
                listRecords: roundListRecords, unitsDone: roundUnitsDone)
            try journal.append(mark)
        }
        if resumeAt == nil {
            try emitRecord(header: header.bytes, prefix: prefix, data: data, trailer: trailer.bytes, lend: lend)
            bytesWritten += UInt64(recordBytes)
        }
        running = Checksum.chain(running, checksum)
        statistics.count(type, bytes: recordBytes)
    }

    private func emitRecord(
        header: [UInt8], prefix: [UInt8], data: [UnsafeRawBufferPointer], trailer: [UInt8], lend: Bool
    ) throws {
        try header.withUnsafeBytes { head in
            try prefix.withUnsafeBytes { prefixBytes in
                try trailer.withUnsafeBytes { tail in
                    try emit {
                        if lend && !data.isEmpty {
                            try self.sink.write([head, prefixBytes])
                            try self.sink.lend(data)
                            try self.sink.write([tail])
                        } else {
                            try self.sink.write([head, prefixBytes] + data + [tail])
                        }
                    }
                }
            }
        }
    }

    private func checkUsable() throws {
        if let failed { throw failed }
        guard rules.begin != nil else { throw StreamError(.misuse, "BEGIN must be written first") }
        guard !rules.ended else { throw StreamError(.misuse, "nothing may be written after END") }
    }

    /// Runs a rule check, reporting a violation as misuse of the writer.
    private func guarded(_ body: () throws(RuleViolation) -> Void) throws {
        do { try body() } catch { throw StreamError(.misuse, "cannot write: \(error.message)") }
    }

    /// Runs a write; after a failed write the stream is broken and every later call reports the same error.
    private func emit(_ body: () throws -> Void) throws {
        if let failed { throw failed }
        do { try body() } catch let error as StreamError {
            failed = error
            throw error
        }
    }
}

/// One batch made ready to write: its zero-page bitmap and its payload data, with the buffers that needs.
/// Lanes are prepared in parallel, each by one thread, and written in order by the writer's thread.
private final class BatchLane: @unchecked Sendable {
    private static let batchBytes = StreamFormat.maxPagesPerBatch * StreamFormat.pageSize
    /// Data pages back to back: a still copy of a live round's pages, or the codec's input.
    private let gather = UnsafeMutableRawBufferPointer.allocate(byteCount: batchBytes, alignment: 4096)
    private let coded: UnsafeMutableRawBufferPointer?

    private(set) var count = 0
    private(set) var dataPages = 0
    private(set) var bitmap: [UInt8] = []
    private(set) var encoding = PageCodecs.rawEncoding
    /// The payload after the bitmap: runs of data pages, or one coded block.
    private(set) var data: [UnsafeRawBufferPointer] = []
    /// `data` points into the caller's pages (not a copy here), so it may be lent to a pipe.
    private(set) var dataInGuestMemory = false

    init(codec: (any PageCodec)?) {
        coded = codec.map { .allocate(byteCount: $0.maximumEncodedSize(Self.batchBytes), alignment: 64) }
    }

    deinit {
        gather.deallocate()
        coded?.deallocate()
    }

    /// Finds the zero pages of `count` pages at `pages`, copies the rest when `copy` (or to code them
    /// together), and codes them when that makes them smaller.
    func prepare(from pages: UnsafeRawPointer, count: Int, copy: Bool, codec: (any PageCodec)?) {
        let pageSize = StreamFormat.pageSize
        self.count = count
        bitmap = [UInt8](repeating: 0, count: Payload.bitmapSize(count))
        var source = pages
        if copy {
            // A running guest may write a page between the zero test and the send: test the copy.
            gather.baseAddress!.copyMemory(from: pages, byteCount: count * pageSize)
            source = UnsafeRawPointer(gather.baseAddress!)
        }
        data = []
        dataPages = 0
        var runStart: Int?
        for index in 0...count {
            let isZero = index < count && isZeroPage(source + index * pageSize)
            if index < count && !isZero {
                if runStart == nil { runStart = index }
                dataPages += 1
                continue
            }
            if isZero { bitmap[index / 8] |= 1 << UInt8(index % 8) }
            if let start = runStart {
                data.append(UnsafeRawBufferPointer(start: source + start * pageSize, count: (index - start) * pageSize))
                runStart = nil
            }
        }
        dataInGuestMemory = !copy
        encoding = PageCodecs.rawEncoding
        guard let codec, dataPages > 0, let coded else { return }
        var input = source
        if data.count > 1 || data[0].baseAddress != source {
            // Coded as one block: gather the runs. A copy's runs move down over zero pages, in order.
            var position = 0
            for run in data {
                (gather.baseAddress! + position).copyMemory(from: run.baseAddress!, byteCount: run.count)
                position += run.count
            }
            input = UnsafeRawPointer(gather.baseAddress!)
        }
        if let size = codec.encode(UnsafeRawBufferPointer(start: input, count: dataPages * pageSize), into: coded) {
            encoding = codec.encoding
            data = [UnsafeRawBufferPointer(start: coded.baseAddress!, count: size)]
            dataInGuestMemory = false
        }
    }
}
