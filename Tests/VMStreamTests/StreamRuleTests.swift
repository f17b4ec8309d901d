import Foundation
import MachineDescription
import SystemPackage
import SystemSupport
import Testing

@testable import VMStream

/// The rules man/vmstream.5 decides, one case each: what a reader refuses, and what it accepts.
@Suite struct StreamRuleTests {
    func error(_ bytes: [UInt8]) -> StreamError? { Fixture.readAll(bytes).1 }

    /// A stream of BEGIN, `body` and a correct END.
    func stream(_ body: (inout Fixture.Builder) -> Void, pages: UInt64 = 0, zeroPages: UInt64 = 0) -> [UInt8] {
        var builder = Fixture.Builder()
        builder.begin()
        body(&builder)
        builder.end(pages: pages, zeroPages: zeroPages)
        return builder.bytes
    }

    let ignorable = { (builder: inout Fixture.Builder) in
        builder.record(0x7000, flags: StreamFormat.ignorableFlag, [1, 2, 3])
    }

    @Test func nothingComesBeforeBegin() {
        var builder = Fixture.Builder()
        ignorable(&builder)
        builder.begin()
        #expect(error(builder.bytes)?.message == "record 1 (type 28672) at byte 32: stream does not start with BEGIN")
    }

    @Test func anIgnorableRecordComesOnlyWhereARoundMay() {
        #expect(
            error(
                stream {
                    $0.round(0, [])
                    ignorable(&$0)
                }) == nil, "between the rounds and END")
        #expect(
            error(
                stream {
                    ignorable(&$0)
                    $0.round(0, [])
                }) == nil, "after BEGIN")
        let inside = stream(
            { builder in
                builder.round(0, [PageRange(segment: 0, firstPage: 0, count: 2)])
                builder.pages(segment: 0, first: 0, count: 1)
                ignorable(&builder)
                builder.pages(segment: 0, first: 1, count: 1)
            }, pages: 2, zeroPages: 2)
        #expect(error(inside)?.message.hasSuffix("type 28672 while round 0 still misses 1 listed pages") == true)
    }

    @Test func everyRoundComesBeforeTheState() {
        let chunkFirst = stream { $0.chunk(.kernelState, "vcpu0/regs") }
        #expect(error(chunkFirst)?.message.hasSuffix("KERNEL STATE before any ROUND: the state follows the rounds") == true)
        let roundAfterState = stream { builder in
            builder.round(0, [])
            builder.chunk(.deviceState, "uart0")
            builder.round(1, [])
        }
        #expect(
            error(roundAfterState)?.message.hasSuffix("ROUND 1 after state chunks: every round comes before the state") == true)
        var noRound = Fixture.Builder()
        noRound.begin()
        noRound.end(pages: 0, zeroPages: 0)
        #expect(error(noRound.bytes)?.message.hasSuffix("END before any ROUND: a stream has at least one round") == true)
        let interleaved = stream { builder in
            builder.round(0, [])
            builder.chunk(.deviceState, "uart0")
            builder.chunk(.kernelState, "vcpu0/regs")
        }
        #expect(error(interleaved) == nil, "kernel and device chunks in any order among themselves")
    }

    @Test func roundsAreNumberedOneAfterTheOther() {
        #expect(
            error(
                stream {
                    $0.round(7, [])
                    $0.round(8, [])
                }) == nil, "the first number is free")
        #expect(
            error(
                stream {
                    $0.round(0, [])
                    $0.round(2, [])
                })?.message.hasSuffix(
                    "round 2 follows round 0: rounds are numbered one after the other") == true)
        #expect(
            error(
                stream {
                    $0.round(3, [])
                    $0.round(2, [])
                })?.kind == .outOfOrder)
        #expect(
            error(
                stream {
                    $0.round(UInt32.max, [])
                    $0.round(0, [])
                })?.kind == .outOfOrder)
        #expect(
            error(
                stream {
                    $0.round(0, [])
                    $0.round(0, [])
                })?.message.hasSuffix(
                    "ROUND 0 again, though round 0's last ROUND record listed fewer than 65536 ranges") == true)
    }

    /// A round of 65536 one-page ranges fills a ROUND record; its continuation lists only later ranges.
    @Test func aContinuationFollowsAFullRecordAndListsOnlyLaterRanges() {
        let full = (0..<UInt64(StreamFormat.maxRangesPerRound)).map { PageRange(segment: 0, firstPage: $0 * 2, count: 1) }
        func round(continuing next: PageRange) -> [UInt8] {
            var builder = Fixture.Builder()
            builder.begin(memorySize: 1 << 30)
            builder.round(0, full)
            for range in full { builder.pages(segment: 0, first: range.firstPage, count: 1) }
            builder.round(0, [next])
            builder.pages(segment: 0, first: next.firstPage, count: 1)
            builder.end(pages: UInt64(full.count) + 1, zeroPages: UInt64(full.count) + 1)
            return builder.bytes
        }
        #expect(error(round(continuing: PageRange(segment: 0, firstPage: 131_072, count: 1))) == nil)
        let repeated = round(continuing: PageRange(segment: 0, firstPage: 2, count: 1))
        #expect(error(repeated)?.message.hasSuffix("page ranges are not in ascending order without overlap") == true)
    }

    /// A device field with settings in the order given, as a writer that does not sort would write them.
    func beginWithSettings(_ settings: [(String, String)], name: String = "status0") -> [UInt8] {
        var begin = SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
        begin.machine.devices = []
        var payload = Payload.encodeBegin(begin)
        var device = ByteWriter()
        device.u32(1)
        device.string16(name)
        device.string16("guest-status")
        device.u16(UInt16(settings.count))
        for (key, value) in settings {
            device.string16(key)
            device.string16(value)
        }
        var field = ByteWriter()
        field.u16(BeginTag.device.rawValue)
        field.u32(UInt32(device.bytes.count))
        payload += field.bytes + device.bytes
        var builder = Fixture.Builder()
        builder.record(RecordType.begin.rawValue, payload)
        builder.round(0, [])
        builder.end(pages: 0, zeroPages: 0)
        return builder.bytes
    }

    @Test func settingKeysComeInAscendingOrderOnce() {
        #expect(error(beginWithSettings([("dirty-rate", "0"), ("port", "0x500")])) == nil)
        #expect(
            error(beginWithSettings([("port", "0x500"), ("dirty-rate", "0")]))?.message.hasSuffix(
                "device 'status0' lists setting 'dirty-rate' out of ascending order") == true)
        #expect(
            error(beginWithSettings([("port", "1"), ("port", "2")]))?.message.hasSuffix(
                "device 'status0' lists setting 'port' twice") == true)
        #expect(error(beginWithSettings([("port", "")])) == nil, "a value may be empty")
        #expect(error(beginWithSettings([("", "1")]))?.message.hasSuffix("device setting name is empty") == true)
    }

    @Test func textNeverHoldsNulAndNamesAreNeverEmpty() {
        func refusal(_ edit: (inout StreamBegin) -> Void) -> String? {
            var begin = SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
            edit(&begin)
            var builder = Fixture.Builder()
            builder.record(RecordType.begin.rawValue, Payload.encodeBegin(begin))
            builder.round(0, [])
            builder.end(pages: 0, zeroPages: 0)
            return error(builder.bytes)?.message
        }
        #expect(refusal { $0.machine.name = "a\u{0}b" }?.hasSuffix("field machineName contains NUL") == true)
        #expect(refusal { $0.host.cpuModel = "x\u{0}" }?.hasSuffix("field cpuModel contains NUL") == true)
        #expect(
            refusal { $0.machine.devices[0].configuration["irq"] = "4\u{0}" }?.hasSuffix("device setting contains NUL") == true)
        #expect(refusal { $0.tool = "" }?.hasSuffix("tool is empty") == true)
        #expect(refusal { $0.host.architecture = "" }?.hasSuffix("host architecture is empty") == true)
        #expect(refusal { $0.machine.segments[0].name = "" }?.hasSuffix("segment name is empty") == true)
        #expect(refusal { $0.machine.devices[0].kind = "" }?.hasSuffix("device kind is empty") == true)
        #expect(
            refusal {
                $0.toolVersion = ""
                $0.host.cpuVendor = ""
                $0.host.hypervisorVersion = ""
            } == nil)
        // The writer refuses what the reader would.
        var begin = SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
        begin.machine.devices[0].name = "uart\u{0}"
        let writer = StreamWriter(sink: MemorySink(), compression: .none)
        #expect { try writer.writeBegin(begin) } throws: { "\($0)".contains("device name 'uart\\0' contains NUL") }
    }

    @Test func dumpShowsUntrustedTextEscaped() throws {
        var begin = SampleStream.begin(memorySize: 1 << 20, uuid: Fixture.uuid, creationTime: Fixture.creationTime)
        begin.host.cpuModel = "EPYC\n\tdevice uart0 = forged\u{1b}[2J\u{202e}"
        begin.toolVersion = ""
        var builder = Fixture.Builder()
        builder.record(RecordType.begin.rawValue, Payload.encodeBegin(begin))
        builder.round(0, [])
        builder.end(pages: 0, zeroPages: 0)
        var lines: [String] = []
        try StreamDumper(verbosity: 0) { lines.append($0) }.dump(StreamReader(bytes: builder.bytes))
        #expect(lines.contains { $0.hasSuffix(#"EPYC\n\tdevice uart0 = forged\x1b[2J\u{202e}, page size 4096"#) })
        #expect(lines.contains("\ttool = vmstream \"\""))
        #expect(!lines.joined().unicodeScalars.contains { $0.value < 0x20 && $0 != "\t" })
    }

    /// Reads `bytes` through a pipe, as vmrecv reads a sender's stream, and returns the reader's error.
    func errorThroughAPipe(_ bytes: [UInt8]) throws -> StreamError? {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw StreamError(.io, "pipe") }
        let writeEnd = ends[1]
        let writer = Thread {
            _ = try? FileDescriptor(rawValue: writeEnd).writeFully(bytes, what: "pipe")
            close(writeEnd)
        }
        writer.start()
        defer { close(ends[0]) }
        let reader = try StreamReader(input: FileDescriptor(rawValue: ends[0]))
        do {
            while try reader.next(into: DiscardingPageSink()) != nil {}
            return nil
        } catch let error as StreamError {
            return error
        }
    }

    /// What a sender interrupted in its final round leaves: a page batch whose pages changed in flight, then
    /// the end of the pipe without END. Damage in a stream that goes on to its END is reported plainly.
    @Test func aPagesMismatchJustBeforeAPipeEndsWithoutEndBlamesAnInterruptedSender() throws {
        let stream = try Fixture.sample()
        let reader = StreamReader(bytes: stream)
        var batches: [RecordInfo] = []
        while let record = try reader.next(into: DiscardingPageSink()) {
            if case .pages(let batch) = record, batch.zeroPages < batch.count { batches.append(reader.lastRecord!) }
        }
        let damaged = try #require(batches.dropFirst(2).first)
        var bytes = stream
        bytes[Int(damaged.offset) + damaged.totalLength - 100] ^= 0x40
        let cut = Array(bytes[..<(Int(damaged.offset) + damaged.totalLength + 20)])
        let hint = "its sender was probably interrupted and its source resumed while these pages were in flight"
        let interrupted = try errorThroughAPipe(cut)
        #expect(interrupted?.kind == .checksumMismatch)
        #expect(interrupted?.message.hasSuffix(hint) == true, "\(interrupted?.message ?? "")")
        let corrupted = try errorThroughAPipe(bytes)
        #expect(corrupted?.message == "checksum mismatch in record \(damaged.number) (PAGES) at byte \(damaged.offset)")
        #expect(error(cut)?.message == corrupted?.message, "a file's end says nothing about its writer")
    }
}
