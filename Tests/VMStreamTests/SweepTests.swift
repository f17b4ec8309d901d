import Testing

@_spi(Fuzzing) @testable import VMStream

/// Every truncation and every single flipped byte is rejected, naming the right place.
@Suite struct SweepTests {
    /// A small stream with every record type, raw and compressed batches.
    static let stream = (try? Fixture.sample(memorySize: 64 << 10, compression: .lz4(), diskSize: 32 << 10)) ?? []

    /// Start offsets of the stream's records, in order.
    static let recordStarts: [UInt64] = {
        let reader = StreamReader(bytes: stream)
        var starts: [UInt64] = []
        while (try? reader.next(into: DiscardingPageSink())) != nil {
            starts.append(reader.lastRecord!.offset)
        }
        return starts
    }()

    /// The 1-based number of the record holding byte `offset`.
    func record(at offset: UInt64) -> Int {
        Self.recordStarts.lastIndex { $0 <= offset }! + 1
    }

    /// A deterministic generator (SplitMix64), so a failing case can be replayed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = SampleStream.mix(state)
            return state
        }
    }

    @Test func streamHasEveryRecordTypeAndBothEncodings() {
        let reader = StreamReader(bytes: Self.stream)
        while (try? reader.next(into: DiscardingPageSink())) ?? nil != nil {}
        // RESUME opens continuations only (ResumeTests).
        #expect(Set(reader.statistics.byType.keys) == Set(RecordType.known).subtracting([.resume]))
        #expect(reader.statistics.compressedBatches > 0 && reader.statistics.rawBatches > 0)
    }

    @Test func truncationAtEveryRecordBoundary() {
        for start in Self.recordStarts {
            let error = Fixture.readAll(Array(Self.stream[0..<Int(start)])).1
            #expect(error == StreamError(.truncated, "stream truncated at byte \(start) (before END)"))
        }
    }

    @Test func truncationAtRandomOffsets() {
        var generator = Generator(state: 2)
        var cuts = (0..<3000).map { _ in UInt64.random(in: 0..<UInt64(Self.stream.count), using: &generator) }
        cuts += (0..<UInt64(StreamFormat.headerSize))
        for cut in cuts {
            let error = Fixture.readAll(Array(Self.stream[0..<Int(cut)])).1
            let expected: String
            if cut < UInt64(StreamFormat.headerSize) {
                expected = "stream truncated at byte \(cut) (inside the stream header)"
            } else if Self.recordStarts.contains(cut) {
                expected = "stream truncated at byte \(cut) (before END)"
            } else {
                expected = "stream truncated at byte \(cut) (inside record \(record(at: cut)))"
            }
            #expect(error == StreamError(.truncated, expected), "cut at \(cut)")
        }
    }

    @Test func everyFlippedByteIsACaughtChecksumMismatch() {
        var generator = Generator(state: 1)
        var cases = (0..<4000).map { _ in
            (UInt64.random(in: 0..<UInt64(Self.stream.count), using: &generator), UInt8.random(in: 1...255, using: &generator))
        }
        // Every byte of the stream header, of BEGIN, and of the END record too.
        cases += (0..<Self.recordStarts[1]).map { ($0, 0x01) }
        cases += (Self.recordStarts.last!..<UInt64(Self.stream.count)).map { ($0, 0x80) }
        for (offset, mask) in cases {
            var bytes = Self.stream
            bytes[Int(offset)] ^= mask
            let error = Fixture.readAll(bytes).1
            if offset < 8 {
                #expect(error?.kind == .badMagic, "flip at \(offset)")
                continue
            }
            if offset < UInt64(StreamFormat.headerSize) {
                #expect(
                    error == StreamError(.checksumMismatch, "checksum mismatch in the stream header at byte 0"),
                    "flip at \(offset)")
                continue
            }
            let number = record(at: offset)
            let start = Self.recordStarts[number - 1]
            let what = offset < start + UInt64(StreamFormat.recordHeaderSize) ? "header" : typeName(number)
            #expect(
                error == StreamError(.checksumMismatch, "checksum mismatch in record \(number) (\(what)) at byte \(start)"),
                "flip of \(mask) at \(offset): \(error?.description ?? "accepted")")
        }
    }

    func typeName(_ number: Int) -> String {
        let start = Int(Self.recordStarts[number - 1])
        return RecordType(rawValue: UInt16(Self.stream[start]) | UInt16(Self.stream[start + 1]) << 8).description
    }
}

/// The fuzzer's checksum repair must be exact, or fuzzing would only ever exercise checksum errors.
@Suite struct ChecksumRepairTests {
    @Test func repairingAValidStreamChangesNothingAndRepairsAFlip() throws {
        let stream = SweepTests.stream
        #expect(ChecksumRepair.repair(stream) == stream)
        var damaged = stream
        damaged[SweepTests.recordStarts[2].asInt + 40] ^= 0xff  // inside the first PAGES record's LZ4 data
        #expect(Fixture.readAll(damaged).1?.kind == .checksumMismatch)
        // Repaired, the damage reaches the decompressor, which must reject it cleanly.
        #expect(Fixture.readAll(ChecksumRepair.repair(damaged)).1?.message.hasPrefix("malformed PAGES record 3") == true)
    }
}

extension UInt64 {
    var asInt: Int { Int(self) }
}
