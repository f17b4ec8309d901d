import MachineDescription
import SystemSupport

/// Where an interrupted stream broke off, as a receiver verified it: what a continuation's RESUME record carries and
/// a resume token names.
public struct ResumePoint: Sendable, Equatable {
    /// The stream's UUID (BEGIN's).
    public var uuid: [UInt8]
    /// The number of the first record the continuation carries: every record before it verified.
    public var record: UInt64
    /// The byte offset of that record in the stream as if it had never broken.
    public var offset: UInt64
    /// The running checksum over every record before it.
    public var running: UInt64
    /// Which send of the stream this is: 1 the first, each continuation one more.
    public var attempt: UInt32

    public init(uuid: [UInt8], record: UInt64, offset: UInt64, running: UInt64, attempt: UInt32) {
        self.uuid = uuid
        self.record = record
        self.offset = offset
        self.running = running
        self.attempt = attempt
    }

    public var uuidString: String { StreamBegin.uuidString(uuid) }

    /// RESUME's payload: uuid, u64 record, u64 offset, u64 running checksum, u32 attempt, u32 reserved.
    static let payloadSize = 48

    func encode() -> [UInt8] {
        var out = ByteWriter()
        out.raw(uuid)
        out.u64(record)
        out.u64(offset)
        out.u64(running)
        out.u32(attempt)
        out.u32(0)
        return out.bytes
    }

    static func decode(_ bytes: [UInt8], fail: @escaping @Sendable (String) -> StreamError) throws -> ResumePoint {
        guard bytes.count == payloadSize else { throw fail("payload has \(bytes.count) bytes, not \(payloadSize)") }
        var decoder = WireDecoder(bytes, fail: fail)
        let point = ResumePoint(
            uuid: try decoder.raw(16), record: try decoder.u64(), offset: try decoder.u64(), running: try decoder.u64(),
            attempt: try decoder.u32())
        guard try decoder.u32() == 0 else { throw fail("reserved field is not 0") }
        // Record 1 is BEGIN, which a receiver must have verified to keep anything.
        // Bounded far above any stream, so that offsets counted on from it never overflow.
        guard point.record >= 2, point.record < 1 << 56, point.offset >= UInt64(StreamFormat.headerSize),
            point.offset < 1 << 60, point.attempt >= 2
        else {
            throw fail("record \(point.record), byte \(point.offset), send \(point.attempt) cannot continue a stream")
        }
        return point
    }
}

/// What `vmsend -t` is given: which stream, from which machine, continues where. Printed by `vmrecv -s` and
/// `vmctl status`, as base64url of a small versioned structure with its own checksum, so a damaged or mistyped
/// token is told apart from a wrong one. Its contents are never trusted: the source checks the stream is its own,
/// the receiver checks the position against what it holds.
public struct ResumeToken: Sendable, Equatable {
    public var point: ResumePoint
    /// The source machine's name, as BEGIN gives it.
    public var machine: String
    public var mode: MigrationMode

    public init(point: ResumePoint, machine: String, mode: MigrationMode) {
        self.point = point
        self.machine = machine
        self.mode = mode
    }

    static let version: UInt8 = 1
    /// Longest token text accepted: far above any real one, so parsing stays small.
    static let maximumTextLength = 512

    public var text: String {
        var out = ByteWriter()
        out.u8(Self.version)
        out.raw(point.uuid)
        out.u64(point.record)
        out.u64(point.offset)
        out.u64(point.running)
        out.u32(point.attempt)
        out.u8(mode.wireValue)
        out.string16(machine)
        out.u64(Checksum.hash(out.bytes))
        return Base64URL.encode(out.bytes)
    }

    /// Parses a token; a bad one is an error of one line that says what is wrong with it.
    public init(parsing text: String) throws {
        let bad: @Sendable (String) -> StreamError = { StreamError(.malformed, "invalid resume token: \($0)") }
        guard !text.isEmpty else { throw bad("it is empty") }
        guard text.utf8.count <= Self.maximumTextLength else { throw bad("it is longer than any token") }
        guard let bytes = Base64URL.decode(text) else {
            throw bad("it is not base64url text (letters, digits, '-' and '_')")
        }
        guard bytes.count >= 1 + 16 + 24 + 4 + 1 + 2 + 8 else { throw bad("it is too short (cut off?)") }
        let body = Array(bytes[..<(bytes.count - 8)])
        var tail = ByteReader(bytes, range: (bytes.count - 8)..<bytes.count)
        guard tail.u64() == Checksum.hash(body) else { throw bad("its checksum does not match (damaged or mistyped)") }
        guard body[0] == Self.version else { throw bad("version \(body[0]) is not known (this vmsend knows \(Self.version))") }
        var decoder = WireDecoder(body, fail: bad)
        _ = try decoder.u8()
        let point = ResumePoint(
            uuid: try decoder.raw(16), record: try decoder.u64(), offset: try decoder.u64(), running: try decoder.u64(),
            attempt: try decoder.u32())
        let wireMode = try decoder.u8()
        guard let mode = MigrationMode(wireValue: wireMode) else { throw bad("mode \(wireMode) is not known") }
        let machine = try decoder.string16(what: "machine name")
        guard decoder.atEnd else { throw bad("it has trailing bytes") }
        guard point.record >= 2, point.attempt >= 1, !machine.isEmpty else { throw bad("it names no place in a stream") }
        self.init(point: point, machine: machine, mode: mode)
    }
}

/// RFC 4648 base64url without padding: printable, and safe in a shell word and a file name.
enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var value: UInt32 = 0
            for (offset, byte) in chunk.enumerated() { value |= UInt32(byte) << (16 - 8 * offset) }
            for position in 0...chunk.count { out.append(alphabet[Int((value >> (18 - 6 * position)) & 63)]) }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var values: [UInt8] = []
        for character in text.utf8 {
            guard let value = alphabet.firstIndex(of: character) else { return nil }
            values.append(UInt8(value))
        }
        guard values.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        var index = 0
        while index < values.count {
            let chunk = values[index..<min(index + 4, values.count)]
            var value: UInt32 = 0
            for (offset, sextet) in chunk.enumerated() { value |= UInt32(sextet) << (18 - 6 * offset) }
            for position in 0..<(chunk.count - 1) { out.append(UInt8((value >> (16 - 8 * position)) & 255)) }
            // Bits below the last whole byte must be 0, so each byte string has exactly one text.
            let spare = value & ((1 << (24 - 8 * (chunk.count - 1))) - 1)
            guard spare == 0 else { return nil }
            index += 4
        }
        return out
    }
}

/// A partial receive as a reader left it after its last verified record: the reader's position and rules, plus what
/// the receiver had collected (state chunks, rounds). Kept by the incoming machine between `vmrecv -s` runs, and
/// handed to `StreamReader.adopt` when a continuation arrives.
public struct ReaderCheckpoint: Sendable {
    var rules: StreamRules
    var features: UInt32
    var offset: UInt64
    var recordNumber: UInt64
    var running: UInt64
    public internal(set) var statistics: StreamStatistics
    /// Sends of the stream this receiver has seen start: 1 for the first, one more per continuation.
    public internal(set) var attempt: UInt32
    /// State chunks that arrived before the break.
    public var kernel: [StateChunk] = []
    public var devices: [StateChunk] = []
    /// Rounds the receiver counted.
    public var rounds = 0

    public var begin: StreamBegin { rules.begin! }
    /// The place a continuation must start from.
    public var point: ResumePoint {
        ResumePoint(uuid: begin.uuid, record: recordNumber + 1, offset: offset, running: running, attempt: attempt)
    }
    public var token: ResumeToken { ResumeToken(point: point, machine: begin.machine.name, mode: begin.mode) }
    /// Records verified: every one before `point.record`.
    public var recordsVerified: UInt64 { recordNumber }
    /// The round under way and the pages and blocks it still misses.
    public var round: UInt32? { rules.currentRound }
    public var unitsExpected: UInt64 { rules.missingUnits }

    static let magic = Array("VMSCHKPT".utf8)
    static let version: UInt32 = 1

    /// A self-checking byte form; only `decode` of this build reads it.
    public func encode() -> [UInt8] {
        var out = ByteWriter()
        out.raw(Self.magic)
        out.u32(Self.version)
        let beginPayload = Payload.encodeBegin(begin)
        out.u32(UInt32(beginPayload.count))
        out.raw(beginPayload)
        out.u32(features)
        for value in [offset, recordNumber, running] { out.u64(value) }
        out.u32(attempt)
        out.u32(UInt32(rounds))
        for value in [
            statistics.bytes, statistics.records, statistics.pages, statistics.zeroPages, statistics.diskBlocks,
            statistics.diskZeroBlocks, statistics.diskDataBytes, statistics.pageDataBytes, statistics.pageWireBytes,
            statistics.compressedBatches, statistics.rawBatches,
        ] { out.u64(value) }
        rules.encodeProgress(into: &out)
        for chunks in [kernel, devices] {
            out.u32(UInt32(chunks.count))
            for chunk in chunks {
                out.string16(chunk.name)
                out.u32(chunk.version)
                out.u32(UInt32(chunk.data.count))
                out.raw(chunk.data)
            }
        }
        out.u64(Checksum.hash(out.bytes))
        return out.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> ReaderCheckpoint {
        let fail: @Sendable (String) -> StreamError = { StreamError(.malformed, "partial receive state: \($0)") }
        guard bytes.count > magic.count + 12, Array(bytes[..<magic.count]) == magic else { throw fail("not a checkpoint") }
        let body = Array(bytes[..<(bytes.count - 8)])
        var tail = ByteReader(bytes, range: (bytes.count - 8)..<bytes.count)
        guard tail.u64() == Checksum.hash(body) else { throw fail("checksum mismatch") }
        var decoder = WireDecoder(body, fail: fail)
        _ = try decoder.raw(magic.count)
        guard try decoder.u32() == version else { throw fail("unknown version") }
        let beginLength = Int(try decoder.u32())
        guard beginLength <= decoder.remaining else { throw fail("BEGIN runs past the end") }
        let begin = try Payload.decodeBegin(try decoder.raw(beginLength), fail: fail)
        var rules = StreamRules()
        do { try rules.accept(begin: begin) } catch { throw fail(error.message) }
        let features = try decoder.u32()
        let offset = try decoder.u64()
        let recordNumber = try decoder.u64()
        let running = try decoder.u64()
        let attempt = try decoder.u32()
        let rounds = Int(try decoder.u32())
        var statistics = StreamStatistics()
        statistics.bytes = try decoder.u64()
        statistics.records = try decoder.u64()
        statistics.pages = try decoder.u64()
        statistics.zeroPages = try decoder.u64()
        statistics.diskBlocks = try decoder.u64()
        statistics.diskZeroBlocks = try decoder.u64()
        statistics.diskDataBytes = try decoder.u64()
        statistics.pageDataBytes = try decoder.u64()
        statistics.pageWireBytes = try decoder.u64()
        statistics.compressedBatches = try decoder.u64()
        statistics.rawBatches = try decoder.u64()
        try rules.decodeProgress(from: &decoder)
        var lists: [[StateChunk]] = []
        for _ in 0..<2 {
            let count = Int(try decoder.u32())
            guard count <= StreamFormat.maxStateChunks else { throw fail("too many state chunks") }
            var chunks: [StateChunk] = []
            for _ in 0..<count {
                let name = try decoder.string16(what: "chunk name")
                let version = try decoder.u32()
                let length = Int(try decoder.u32())
                guard length <= decoder.remaining else { throw fail("chunk runs past the end") }
                chunks.append(StateChunk(name: name, version: version, data: try decoder.raw(length)))
            }
            lists.append(chunks)
        }
        guard decoder.atEnd else { throw fail("trailing bytes") }
        var checkpoint = ReaderCheckpoint(
            rules: rules, features: features, offset: offset, recordNumber: recordNumber, running: running,
            statistics: statistics, attempt: attempt)
        checkpoint.kernel = lists[0]
        checkpoint.devices = lists[1]
        checkpoint.rounds = rounds
        return checkpoint
    }
}
