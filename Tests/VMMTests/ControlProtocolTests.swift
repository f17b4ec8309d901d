import FoundationEssentials
import MachineDescription
import Testing

@testable import VMControl

/// Byte-exact forms of what travels on the control socket, and the parsing of sizes.
@Suite struct ControlProtocolTests {
    let state = MachineState(
        kernel: [StateChunk(name: "vcpu0/regs", version: 1, data: [0xaa, 0xbb])],
        devices: [StateChunk(name: "uart0", version: 2, data: [])])

    @Test func stateChunksHaveTheDocumentedLayout() throws {
        let bytes = try StateEncoding.encode(state)
        let expected: [UInt8] =
            [1, 0, 0, 0, 10, 0] + Array("vcpu0/regs".utf8) + [1, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb]
            + [1, 0, 0, 0, 5, 0] + Array("uart0".utf8) + [2, 0, 0, 0, 0, 0, 0, 0]
        #expect(bytes == expected)
        #expect(try StateEncoding.decode(bytes) == state)
    }

    @Test func badStateIsAnErrorNotATrap() throws {
        let bytes = try StateEncoding.encode(state)
        for length in 0..<bytes.count {
            #expect(throws: ControlError.self) { try StateEncoding.decode(Array(bytes[..<length])) }
        }
        #expect(throws: ControlError("bad state: 1 bytes after the last chunk")) { try StateEncoding.decode(bytes + [0]) }
        // A chunk claiming 4 GiB of data in a short buffer must not allocate it.
        let huge: [UInt8] = [1, 0, 0, 0, 1, 0, 0x41, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
        #expect(throws: ControlError("bad state: truncated at kernel chunk 0")) { try StateEncoding.decode(huge) }
        let unnamed: [UInt8] = [1, 0, 0, 0, 0, 0]
        #expect(throws: ControlError("bad state: kernel chunk 0 has a name of 0 bytes")) { try StateEncoding.decode(unnamed) }
        #expect(throws: ControlError.self) {
            try StateEncoding.encode(
                MachineState(kernel: [StateChunk(name: String(repeating: "x", count: 256), version: 0, data: [])], devices: []))
        }
    }

    @Test func bitmapsAreLittleEndianWords() throws {
        let bytes = BitmapEncoding.encode([1, 0x0102_0304_0506_0708])
        #expect(bytes == [1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1])
        #expect(try BitmapEncoding.decode(bytes) == [1, 0x0102_0304_0506_0708])
        #expect(throws: ControlError.self) { try BitmapEncoding.decode([1, 2, 3]) }
    }

    @Test func requestsEncodeAsDocumented() throws {
        let hello = try JSONEncoderBridge.encode(ControlRequest.hello(version: 1, ownIncoming: false))
        #expect(hello == #"{"hello":{"ownIncoming":false,"version":1}}"#)
        let every: [ControlRequest] = [
            .hello(version: 1, ownIncoming: true), .status, .describe, .pause, .resume(), .destroy(), .memoryFile,
            .dirtyLogStart(manualClear: true), .dirtyLogFetch(segment: 0), .dirtyLogClear(segment: 0, firstPage: 64),
            .dirtyLogStop, .throttle(percent: 20), .saveState,
            .restoreState, .consoleInput, .diskFile(disk: 0), .diskWrittenFetch(disk: 0),
            .sendStart(stream: "s", force: false), .sendCommit, .sendFinish(migrated: true, destination: nil),
            .sendResumable(terms: ResumableSendTests.terms(window: 1)), .sendContinue(stream: "s", attempt: 1, force: false),
            .sendJournal(stream: "s", attempt: 1),
            .keepPartial(
                partial: PartialReceive(
                    stream: "s", sourceMachine: "a", token: "t", records: 2, bytes: 3, round: 0, unitsExpected: 1, kept: 0)),
            .partialState,
        ]
        #expect(Set(every.map(\.name)) == ControlRequest.allNames, "every request is known by its wire name")
    }

    /// Senders from before resumable sends say `sendFinish` without `delivered`.
    @Test func sendFinishStaysCompatible() throws {
        let old = #"{"sendFinish":{"migrated":false}}"#
        #expect(
            try MessageSocket.decode(ControlRequest.self, from: Array(old.utf8))
                == .sendFinish(migrated: false, destination: nil, delivered: nil))
    }

    /// Clients from before manual clearing send `{"dirtyLogStart":{}}` and know only `done`; old servers ignore the flag.
    @Test func dirtyLogStartStaysCompatible() throws {
        #expect(
            try MessageSocket.decode(ControlRequest.self, from: Array(#"{"dirtyLogStart":{}}"#.utf8))
                == .dirtyLogStart(manualClear: nil))
        #expect(try JSONEncoderBridge.encode(ControlRequest.dirtyLogStart(manualClear: nil)) == #"{"dirtyLogStart":{}}"#)
        #expect(
            try JSONEncoderBridge.encode(ControlRequest.dirtyLogStart(manualClear: true))
                == #"{"dirtyLogStart":{"manualClear":true}}"#)
        #expect(
            try JSONEncoderBridge.encode(ControlRequest.dirtyLogClear(segment: 1, firstPage: 128))
                == #"{"dirtyLogClear":{"firstPage":128,"segment":1}}"#)
    }

    /// vmctl's `resume` is as before; a stamped one is a flag an older vmrun ignores, answering `done`.
    @Test func stampedResumeStaysCompatible() throws {
        /// The request as a vmrun from before the stamp decodes it.
        enum OlderRequest: Decodable, Equatable { case resume(force: Bool?) }
        let stamped = try JSONEncoderBridge.encode(ControlRequest.resume(stamped: true))
        #expect(stamped == #"{"resume":{"stamped":true}}"#)
        #expect(try MessageSocket.decode(OlderRequest.self, from: Array(stamped.utf8)) == .resume(force: nil))
        #expect(try MessageSocket.decode(ControlRequest.self, from: Array(stamped.utf8)) == .resume(stamped: true))
        #expect(try JSONEncoderBridge.encode(ControlRequest.resume()) == #"{"resume":{}}"#)
        #expect(
            try MessageSocket.decode(ControlRequest.self, from: Array(#"{"resume":{"force":true}}"#.utf8)) == .resume(force: true)
        )
        let time: UInt64 = 1_764_600_000_123_456_789
        let reply = try JSONEncoderBridge.encode(ControlReply.ok(.resumed(atRealtimeNanoseconds: time)))
        #expect(
            try MessageSocket.decode(ControlReply.self, from: Array(reply.utf8)) == .ok(.resumed(atRealtimeNanoseconds: time)))
    }

    static let sizes: [(String, UInt64)] = [
        ("512M", 512 << 20), ("6G", 6 << 30), ("4.5G", 9 << 29), ("65536", 65536), ("64k", 64 << 10),
        ("1MiB", 1 << 20), ("2GB", 2 << 30), ("0", 0), ("1T", 1 << 40), ("0.25M", 1 << 18),
    ]

    @Test(arguments: sizes)
    func sizesParse(text: String, bytes: UInt64) throws {
        #expect(try ByteSize.parse(text) == bytes)
    }

    @Test(arguments: ["", "M", "lots", "-1G", "1.G", "1..5G", "1.3K", "99999999999999999999", "16777216T", "4X", "1 G"])
    func nonsenseSizesAreErrors(text: String) {
        #expect(throws: SizeError.self) { try ByteSize.parse(text) }
    }

    @Test func ratesParse() throws {
        #expect(try ByteSize.parseRate("100M/s") == 100 << 20)
        #expect(try ByteSize.parseRate("0") == 0)
        #expect(throws: SizeError("invalid rate 'fast': expected a size per second, e.g. 100M/s, or 0 for no limit")) {
            try ByteSize.parseRate("fast")
        }
        #expect(ByteSize.format(9 << 29) == "4.5 GiB")
        #expect(ByteSize.format(512 << 20) == "512 MiB")
        #expect(ByteSize.format(100) == "100 B")
    }

    @Test func machineNamesAreSafeFileNames() {
        for good in ["demo", "vm-1", "a.b_c"] { #expect(MachineName.isValid(good)) }
        for bad in ["", ".hidden", "-flag", "a/b", "..", "sp ace", String(repeating: "x", count: 65)] {
            #expect(!MachineName.isValid(bad))
        }
    }
}

private enum JSONEncoderBridge {
    static func encode<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
