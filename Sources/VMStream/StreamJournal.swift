import MachineDescription
import Synchronization
import SystemSupport

/// Where a live stream stood after each of its records, kept by the writer so that a continuation can pick up at
/// whatever record its receiver verified last.
///
/// A live stream cannot be made again (the guest wrote on), so a continuation does not repeat it: it takes up the
/// writer's position at that record (records, bytes, running checksum, totals, the round and how far its list went)
/// and sends from there what the receiver lacks. The journal holds one small mark per record of the rounds and each
/// round's list once: tens of bytes per MiB sent. The writer appends under a lock, so an interrupt can take a copy
/// from another thread while a write is blocked.
public final class StreamJournal: Sendable {
    /// The writer's position right after one record.
    public struct Mark: Sendable, Equatable {
        public var record: UInt64
        public var bytes: UInt64
        public var running: UInt64
        public var pages: UInt64
        public var zeroPages: UInt64
        public var diskBlocks: UInt64
        public var diskZeroBlocks: UInt64
        /// Index in `rounds` of the round under way, or -1 before the first.
        public var round: Int
        /// List records (ROUND, DISK EXTENTS) the round has had so far.
        public var listRecords: Int
        /// Pages and blocks of the round's list sent so far.
        public var unitsDone: UInt64
    }

    public struct Round: Sendable, Equatable {
        public var number: UInt32
        public var list: [PageRange]
    }

    public struct Contents: Sendable {
        /// BEGIN's payload, from which a continuation's rules are derived.
        public var begin: [UInt8] = []
        public var rounds: [Round] = []
        public var marks: [Mark] = []
        /// When the send paused the source (ns since the epoch), 0 while it has not; END carries it.
        public var pauseTime: UInt64 = 0
        /// Pages an earlier send of the stream owed the receiver (rounds it never verified, dirty pages fetched),
        /// which the round at index `carriedBefore` lists first: a receiver still before that round lacks them.
        public var carried: [PageRange] = []
        public var carriedBefore = 0
        /// Dirty pages fetched from the source (and so gone from its log) that no round list holds yet.
        public var pending: [[PageRange]] = []
        /// Handed over: no record may follow, since the copy handed over would not know it.
        public var sealed = false

        public init() {}
    }

    private let contents: Mutex<Contents>

    public init(_ contents: Contents = Contents()) { self.contents = Mutex(contents) }

    public var snapshot: Contents { contents.withLock { $0 } }

    func update(_ body: (inout Contents) -> Void) { contents.withLock { body(&$0) } }

    /// Records a record's mark before its bytes go out; refused once the journal was handed over.
    func append(_ mark: Mark) throws {
        try contents.withLock { (contents: inout Contents) throws(StreamError) in
            guard !contents.sealed else { throw StreamError(.misuse, "the stream's journal was handed over: it ends here") }
            contents.marks.append(mark)
        }
    }

    public func notePause(at time: UInt64) { update { $0.pauseTime = time } }

    /// Runs a fetch of dirty pages (which takes them from the source's log) and records what it returned, with the
    /// journal locked throughout: a copy taken meanwhile, by an interrupt, waits and then holds them.
    public func recordFetch(_ fetch: () throws -> [PageRange]) throws {
        try contents.withLock { (contents: inout Contents) throws in
            guard !contents.sealed else { throw StreamError(.misuse, "the stream's journal was handed over: it ends here") }
            let pages = try fetch()
            if !pages.isEmpty { contents.pending.append(pages) }
        }
    }

    /// Ends the journal and returns its byte form, for handing over: from now on no record can be written, so the
    /// copy handed over knows every record the receiver can have verified.
    public func seal() -> [UInt8] {
        update { $0.sealed = true }
        return encode()
    }

    static let magic = Array("VMSJRNL1".utf8)

    /// A self-checking byte form, for the source to keep between sends; only `decode` of this build reads it.
    public func encode() -> [UInt8] {
        let contents = snapshot
        var out = ByteWriter()
        out.raw(Self.magic)
        out.u32(UInt32(contents.begin.count))
        out.raw(contents.begin)
        out.u64(contents.pauseTime)
        out.u32(UInt32(contents.carriedBefore))
        Self.encode(contents.carried, into: &out)
        out.u32(UInt32(contents.pending.count))
        for list in contents.pending { Self.encode(list, into: &out) }
        out.u32(UInt32(contents.rounds.count))
        for round in contents.rounds {
            out.u32(round.number)
            Self.encode(round.list, into: &out)
        }
        out.u32(UInt32(contents.marks.count))
        for mark in contents.marks {
            for value in [
                mark.record, mark.bytes, mark.running, mark.pages, mark.zeroPages, mark.diskBlocks, mark.diskZeroBlocks,
                mark.unitsDone,
            ] { out.u64(value) }
            out.u32(UInt32(bitPattern: Int32(mark.round)))
            out.u32(UInt32(mark.listRecords))
        }
        out.u64(Checksum.hash(out.bytes))
        return out.bytes
    }

    private static func encode(_ list: [PageRange], into out: inout ByteWriter) {
        out.u32(UInt32(list.count))
        for range in list {
            out.u32(UInt32(range.segment))
            out.u64(range.firstPage)
            out.u64(range.count)
        }
    }

    private static func decodeList(_ decoder: inout WireDecoder) throws -> [PageRange] {
        let count = Int(try decoder.u32())
        guard count * 20 <= decoder.remaining else { throw fail("a list of \(count) ranges does not fit") }
        var list: [PageRange] = []
        list.reserveCapacity(count)
        for _ in 0..<count {
            list.append(PageRange(segment: Int(try decoder.u32()), firstPage: try decoder.u64(), count: try decoder.u64()))
        }
        return list
    }

    static let fail: @Sendable (String) -> StreamError = { StreamError(.malformed, "the source's stream journal: \($0)") }

    public static func decode(_ bytes: [UInt8]) throws -> StreamJournal {
        guard bytes.count > magic.count + 8, Array(bytes[..<magic.count]) == magic else { throw fail("not a journal") }
        let body = Array(bytes[..<(bytes.count - 8)])
        var tail = ByteReader(bytes, range: (bytes.count - 8)..<bytes.count)
        guard tail.u64() == Checksum.hash(body) else { throw fail("checksum mismatch") }
        var decoder = WireDecoder(body, fail: fail)
        _ = try decoder.raw(magic.count)
        var contents = Contents()
        let beginLength = Int(try decoder.u32())
        guard beginLength <= decoder.remaining else { throw fail("BEGIN runs past the end") }
        contents.begin = try decoder.raw(beginLength)
        contents.pauseTime = try decoder.u64()
        contents.carriedBefore = Int(try decoder.u32())
        contents.carried = try decodeList(&decoder)
        let pendingCount = Int(try decoder.u32())
        guard pendingCount * 4 <= decoder.remaining else { throw fail("\(pendingCount) fetches do not fit") }
        for _ in 0..<pendingCount { contents.pending.append(try decodeList(&decoder)) }
        let roundCount = Int(try decoder.u32())
        guard roundCount * 8 <= decoder.remaining else { throw fail("\(roundCount) rounds do not fit") }
        for _ in 0..<roundCount {
            let number = try decoder.u32()
            contents.rounds.append(Round(number: number, list: try decodeList(&decoder)))
        }
        let markCount = Int(try decoder.u32())
        guard markCount * 72 <= decoder.remaining else { throw fail("\(markCount) marks do not fit") }
        contents.marks.reserveCapacity(markCount)
        for _ in 0..<markCount {
            let values = try (0..<8).map { _ in try decoder.u64() }
            let round = Int(Int32(bitPattern: try decoder.u32()))
            let listRecords = Int(try decoder.u32())
            guard round >= -1, round < roundCount else { throw fail("a mark names round \(round) of \(roundCount)") }
            contents.marks.append(
                Mark(
                    record: values[0], bytes: values[1], running: values[2], pages: values[3], zeroPages: values[4],
                    diskBlocks: values[5], diskZeroBlocks: values[6], round: round, listRecords: listRecords,
                    unitsDone: values[7]))
        }
        guard decoder.atEnd else { throw fail("trailing bytes") }
        return StreamJournal(contents)
    }
}

/// Where a live continuation takes up its stream, as `StreamWriter.continueLive` found it from the token and journal.
public enum LiveResumePlace: Sendable, Equatable {
    /// The receiver has BEGIN only: every round starts over.
    case beforeRounds
    /// The receiver is inside round `number`: `rest` is what its list still misses, in list order; `later` the pages
    /// it lacks besides: the lists of rounds sent after it, which it never verified, pages an earlier continuation
    /// owed it, and dirty pages fetched from the source that no list held yet.
    case inRound(number: UInt32, rest: [PageRange], later: [[PageRange]])
    /// Every round arrived; the receiver holds part of the state.
    case inState
}
