import Glibc
import MachineDescription
import Testing

@testable import VMStream

/// Continuations (`vmsend -t`): a stream cut anywhere is taken up again from the reader's checkpoint, and a writer
/// that makes the same stream again writes exactly the records after the cut.
@Suite struct ResumeTests {
    static func sample(_ compression: Compression, resumable: Bool = true, diskSize: UInt64 = 0) throws -> [UInt8] {
        let sink = MemorySink()
        let writer = StreamWriter(sink: sink, compression: compression)
        try write(writer, resumable: resumable, diskSize: diskSize)
        return sink.bytes
    }

    static func write(_ writer: StreamWriter, resumable: Bool = true, diskSize: UInt64 = 0) throws {
        var begin = SampleStream.begin(
            memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime, diskSize: diskSize)
        begin.resumable = resumable
        try SampleStream.write(to: writer, begin: begin, seed: Fixture.seed, sourcePauseTime: Fixture.creationTime + 5)
    }

    /// Reads `bytes` until they end; returns the reader's checkpoint with the chunks it saw.
    static func readUntilBroken(_ bytes: [UInt8], adopting checkpoint: ReaderCheckpoint? = nil) -> (ReaderCheckpoint?, Bool) {
        let reader = StreamReader(bytes: bytes)
        var kernel = checkpoint?.kernel ?? []
        var devices = checkpoint?.devices ?? []
        do {
            while let record = try reader.next(into: DiscardingPageSink()) {
                switch record {
                case .resume: try reader.adopt(checkpoint!)
                case .kernelState(let chunk): kernel.append(chunk)
                case .deviceState(let chunk): devices.append(chunk)
                case .end: return (nil, true)
                default: break
                }
            }
            return (nil, true)
        } catch {
            var point = reader.checkpoint()
            point?.kernel = kernel
            point?.devices = devices
            return (point, false)
        }
    }

    /// A continuation from `checkpoint`, made by writing the whole stream again.
    static func continuation(
        _ compression: Compression, from checkpoint: ReaderCheckpoint, diskSize: UInt64 = 0
    ) throws
        -> [UInt8]
    {
        let sink = MemorySink()
        let writer = StreamWriter(sink: sink, compression: compression)
        var point = checkpoint.point
        point.attempt += 1
        try writer.continueFrom(point)
        try write(writer, diskSize: diskSize)
        #expect(writer.bytesWritten == UInt64(sink.bytes.count))
        return sink.bytes
    }

    @Test(arguments: [Compression.none, .lz4()])
    func aStreamCutManyTimesIsReceivedWholeWithNothingSentTwice(compression: Compression) throws {
        let whole = try Self.sample(compression, diskSize: 32 << 10)
        for cut in [1_000, 2_000, 40_000, whole.count / 2, whole.count - 300, whole.count - 10] {
            let (first, finished) = Self.readUntilBroken(Array(whole[..<cut]))
            #expect(!finished)
            guard let first else {
                Issue.record("no checkpoint at cut \(cut) of \(whole.count)")
                continue
            }
            // Only records the receiver did not verify are sent again: the continuation is the rest of the stream
            // from the checkpoint, behind 32 bytes of header and 72 of RESUME.
            let rest = try Self.continuation(compression, from: first, diskSize: 32 << 10)
            #expect(rest.count == whole.count - Int(first.point.offset) + 32 + 72)
            #expect(Array(rest[104...]) == Array(whole[Int(first.point.offset)...]))
            // Cut again, then finish.
            let (second, _) = Self.readUntilBroken(Array(rest[..<min(rest.count, 104 + 5_000)]), adopting: first)
            let checkpoint = second ?? first
            if second != nil { #expect(checkpoint.point.attempt == 2) }
            let last = try Self.continuation(compression, from: checkpoint, diskSize: 32 << 10)
            let (none, done) = Self.readUntilBroken(last, adopting: checkpoint)
            #expect(done && none == nil, "cut \(cut)")
        }
    }

    @Test func aCheckpointSurvivesItsByteForm() throws {
        let whole = try Self.sample(.none)
        let (checkpoint, _) = Self.readUntilBroken(Array(whole[..<(whole.count - 100)]))
        let kept = try #require(checkpoint)
        #expect(!kept.kernel.isEmpty)
        let again = try ReaderCheckpoint.decode(kept.encode())
        #expect(again.point == kept.point)
        #expect(again.kernel == kept.kernel && again.devices == kept.devices)
        var damaged = kept.encode()
        damaged[40] ^= 1
        #expect(throws: StreamError.self) { try ReaderCheckpoint.decode(damaged) }
    }

    @Test func aContinuationFromAnotherPlaceOrStreamIsRefusedBeforeAnyRecord() throws {
        let whole = try Self.sample(.none)
        let (early, _) = Self.readUntilBroken(Array(whole[..<3_000]))
        let (late, _) = Self.readUntilBroken(Array(whole[..<(whole.count - 100)]))
        let rest = try Self.continuation(.none, from: try #require(early))
        let reader = StreamReader(bytes: rest)
        guard case .resume(let point)? = try reader.next(into: DiscardingPageSink()) else {
            Issue.record("no RESUME")
            return
        }
        #expect(point.record == early!.point.record)
        #expect(late!.point.record != early!.point.record, "\(late!.point) \(early!.point)")
        #expect(throws: StreamError.self) { try reader.adopt(late!) }
        // Without the partial receive a reader goes no further.
        #expect(throws: StreamError.self) { try reader.next(into: DiscardingPageSink()) }
    }

    @Test func aSourceThatChangedIsCaughtAtTheResumePoint() throws {
        let whole = try Self.sample(.none)
        let (checkpoint, _) = Self.readUntilBroken(Array(whole[..<50_000]))
        var point = try #require(checkpoint).point
        point.running ^= 1
        let writer = StreamWriter(sink: MemorySink(), compression: .none)
        try writer.continueFrom(point)
        #expect(throws: StreamError.self) { try Self.write(writer) }
    }

    @Test func resumeRecordEncodesAndRefusesNonsense() throws {
        let point = ResumePoint(uuid: Fixture.uuid, record: 17, offset: 123_456, running: 0xfeed, attempt: 3)
        let bytes = point.encode()
        #expect(bytes.count == ResumePoint.payloadSize)
        let fail: @Sendable (String) -> StreamError = { StreamError(.malformed, $0) }
        #expect(try ResumePoint.decode(bytes, fail: fail) == point)
        var reserved = bytes
        reserved[47] = 1
        #expect(throws: StreamError.self) { try ResumePoint.decode(reserved, fail: fail) }
        var first = point
        first.record = 1
        #expect(throws: StreamError.self) { try ResumePoint.decode(first.encode(), fail: fail) }
        #expect(throws: StreamError.self) { try ResumePoint.decode(Array(bytes.dropLast()), fail: fail) }
    }

    @Test func aDumpOfAContinuationSaysWhereItContinuesFrom() throws {
        let whole = try Self.sample(.lz4())
        let (checkpoint, _) = Self.readUntilBroken(Array(whole[..<20_000]))
        let rest = try Self.continuation(.lz4(), from: try #require(checkpoint))
        var lines: [String] = []
        try StreamDumper(verbosity: 1) { lines.append($0) }.dump(StreamReader(bytes: rest))
        #expect(lines.contains("\tcontinues stream = \(StreamBegin.uuidString(Fixture.uuid))"))
        #expect(lines.contains("\tfrom record = \(checkpoint!.point.record) at byte \(checkpoint!.point.offset)"))
        #expect(lines.contains { $0.contains(" END offset \(whole.count - 72)") })
        var damaged = rest
        damaged[damaged.count - 30] ^= 1
        #expect(throws: StreamError.self) { try StreamDumper(verbosity: 0) { _ in }.dump(StreamReader(bytes: damaged)) }
    }

    /// Damage anywhere in a continuation is a StreamError from a dump, never a crash, and never passes unnoticed.
    @Test func aDamagedContinuationNeverCrashesADump() throws {
        let whole = try Self.sample(.lz4())
        let (checkpoint, _) = Self.readUntilBroken(Array(whole[..<(whole.count - 2_000)]))
        let rest = try Self.continuation(.lz4(), from: try #require(checkpoint))
        var generator = SystemRandomNumberGenerator()
        for round in 0..<300 {
            var damaged = rest
            let position = round < 120 ? round : Int.random(in: 0..<damaged.count, using: &generator)
            damaged[position] ^= UInt8.random(in: 1...255, using: &generator)
            #expect(throws: StreamError.self, "byte \(position)") {
                try StreamDumper(verbosity: 2) { _ in }.dump(StreamReader(bytes: damaged))
            }
        }
    }

    @Test func aTokenRoundTripsAndEachDamageIsOneClearLine() throws {
        let token = ResumeToken(
            point: ResumePoint(uuid: Fixture.uuid, record: 9, offset: 4_242, running: 77, attempt: 2), machine: "demo",
            mode: .warm)
        let text = token.text
        #expect(text.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
        #expect(try ResumeToken(parsing: text) == token)
        func message(_ text: String) -> String {
            do {
                _ = try ResumeToken(parsing: text)
                return "parsed"
            } catch {
                return "\(error)"
            }
        }
        #expect(message("") == "invalid resume token: it is empty")
        #expect(message("not a token!").hasPrefix("invalid resume token: it is not base64url"))
        #expect(message(String(text.prefix(12))).contains("too short"))
        var flipped = Array(text.utf8)
        flipped[20] = flipped[20] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        #expect(message(String(decoding: flipped, as: UTF8.self)).contains("checksum does not match"))
        #expect(message(String(repeating: "A", count: 600)).contains("longer than any token"))
        for line in [message(""), message("x"), message(String(text.dropLast(3)))] { #expect(!line.contains("\n")) }
    }

    @Test func base64URLMatchesTheRFC() {
        #expect(Base64URL.encode(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(Base64URL.encode(Array("fo".utf8)) == "Zm8")
        #expect(Base64URL.encode([0xfb, 0xff]) == "-_8")
        #expect(Base64URL.decode("-_8") == [0xfb, 0xff])
        #expect(Base64URL.decode("-_9") == nil)
        #expect(Base64URL.decode("Z") == nil)
    }

    @Test func theResumableFlagTravelsInBeginAndOldReadersMaySkipIt() throws {
        let reader = StreamReader(bytes: try Self.sample(.none))
        guard case .begin(let begin)? = try reader.next(into: DiscardingPageSink()) else {
            Issue.record("no BEGIN")
            return
        }
        #expect(begin.resumable)
        #expect(BeginTag.resumable.rawValue & BeginTag.ignorableBit != 0)
        let plain = StreamReader(bytes: try Self.sample(.none, resumable: false))
        guard case .begin(let other)? = try plain.next(into: DiscardingPageSink()) else { return }
        #expect(!other.resumable)
    }
}
