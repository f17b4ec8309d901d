import MachineDescription

#if canImport(Glibc)
    import Glibc
#endif

/// `vmstream dump`: the BEGIN fields, optionally one line per record, and a summary (as `zstream dump`).
public struct StreamDumper {
    /// 0: BEGIN and summary; 1: a line per record; 2: also checksums.
    public var verbosity: Int
    public var output: (String) -> Void

    public init(verbosity: Int, output: @escaping (String) -> Void) {
        self.verbosity = verbosity
        self.output = output
    }

    /// Reads the whole stream, verifying everything; throws the first error after printing what came before it.
    public func dump(_ reader: StreamReader) throws {
        reader.warningHandler = { output("warning: \($0)") }
        while let record = try reader.next(into: DiscardingPageSink()) {
            if case .resume(let point) = record { return try dumpContinuation(reader, point) }
            if case .begin(let begin) = record {
                describe(begin)
                // Ignorable flags a reader skipped over: say that they were there.
                if reader.headerFlags != 0 { output("\theader flags = 0x\(String(reader.headerFlags, radix: 16))") }
            }
            if verbosity >= 1, let info = reader.lastRecord { output(line(record, info)) }
        }
        // Reading stopped at END, as a receiver's does: what waits after it is counted, never waited for.
        if let extra = reader.bytesWaitingAfterEnd(), extra > 0 {
            output("warning: \(extra) byte\(extra == 1 ? "" : "s") after END ignored")
        }
        summarize(reader.statistics)
    }

    /// A continuation (`vmsend -t`): where it continues from, then each record checked as far as can be without the
    /// stream's start (framing, checksums and their chain, END's totals).
    private func dumpContinuation(_ reader: StreamReader, _ point: ResumePoint) throws {
        output("RESUME record")
        output("\tcontinues stream = \(point.uuidString)")
        output("\tfrom record = \(point.record) at byte \(point.offset)")
        output("\trunning checksum = \(hex(point.running))")
        output("\tsend = \(point.attempt) of the stream")
        output("\t(records are checked for framing and checksums only: the stream's BEGIN and earlier records are elsewhere)")
        while let info = try reader.nextUnanchored() {
            guard verbosity >= 1 else { continue }
            var text = "record \(info.number) \(info.type) offset \(info.offset) length \(info.payloadLength)"
            if verbosity >= 2 {
                text +=
                    " header checksum \(hex(info.headerChecksum)) checksum \(hex(info.checksum)) running \(hex(info.runningChecksum))"
            }
            output(text)
        }
        if let extra = reader.bytesWaitingAfterEnd(), extra > 0 {
            output("warning: \(extra) byte\(extra == 1 ? "" : "s") after END ignored")
        }
        let statistics = reader.statistics
        output("SUMMARY:")
        for type in statistics.byType.keys.sorted() {
            let totals = statistics.byType[type]!
            output("\tTotal \(type) records = \(totals.count)\t(bytes = \(totals.bytes))")
        }
        output("\tRecords continued = \(statistics.records), from record \(point.record) to the stream's END")
    }

    /// Every text field came from the stream: it is printed escaped (`UntrustedText`), so a stream cannot forge a
    /// line or drive the terminal, and an empty one shows as `""`.
    private func describe(_ begin: StreamBegin) {
        let text = UntrustedText.escape
        output("BEGIN record")
        output("\tformat version = \(begin.formatVersion)")
        output("\ttool = \(text(begin.tool)) \(text(begin.toolVersion))")
        output("\tuuid = \(begin.uuidString)")
        output("\tcreation time = \(Self.utc(begin.creationTime)) (\(begin.creationTime) ns)")
        output("\tmode = \(begin.mode.rawValue)")
        let host = begin.host
        output(
            "\thost = \(text(host.architecture)), \(text(host.cpuVendor)), \(text(host.cpuModel)), page size \(host.pageSize)")
        output("\thypervisor = \(text(host.hypervisor)) \(text(host.hypervisorVersion))")
        let machine = begin.machine
        output("\tmachine = \(text(machine.name)), \(machine.vcpuCount) vCPUs, \(machine.memorySize) bytes")
        for (index, segment) in machine.segments.enumerated() {
            output(
                "\tsegment \(index) = \(text(segment.name)) at 0x\(String(segment.guestPhysicalBase, radix: 16)), \(segment.size) bytes (\(segment.size / UInt64(StreamFormat.pageSize)) pages)"
            )
        }
        for device in machine.devices {
            let settings = device.configuration.sorted { $0.key < $1.key }.map { "\(text($0.key))=\(text($0.value))" }
                .joined(separator: " ")
            output(
                "\tdevice \(text(device.name)) = \(text(device.kind)) version \(device.version)\(settings.isEmpty ? "" : " " + settings)"
            )
        }
        for (index, disk) in machine.disks.enumerated() {
            let allocated = index < begin.diskAllocation.count ? begin.diskAllocation[index] : 0
            var flags = disk.readOnly ? ", read-only" : ""
            if disk.sharedStorage { flags += ", shared storage at \(disk.path ?? "")" }
            output(
                "\tdisk \(index) = \(disk.name), \(disk.size) bytes (\(disk.blockCount) blocks), \(allocated) allocated, serial \(disk.serial)\(flags)"
            )
        }
        for leaf in machine.cpuid {
            let words = [leaf.eax, leaf.ebx, leaf.ecx, leaf.edx].map { String($0, radix: 16).leftPadded(to: 8) }
            output(
                "\tcpuid 0x\(String(leaf.function, radix: 16)).\(leaf.index) flags \(leaf.flags) = \(words.joined(separator: " "))"
            )
        }
    }

    private func line(_ record: StreamRecord, _ info: RecordInfo) -> String {
        var text = "record \(info.number) \(info.type) offset \(info.offset) length \(info.payloadLength)"
        switch record {
        case .begin: break
        case .round(let number, let ranges):
            let pages = ranges.reduce(0) { $0 + $1.count }
            text += " round \(number) ranges \(ranges.count) pages \(pages)"
        case .diskExtents(let number, let ranges):
            let blocks = ranges.reduce(0) { $0 + $1.count }
            text += " round \(number) ranges \(ranges.count) blocks \(blocks)"
        case .pages(let batch), .diskBlocks(let batch):
            let (area, unit) = info.type == .diskBlocks ? ("disk", "blocks") : ("segment", "pages")
            text += " \(area) \(batch.segment) \(unit) \(batch.firstPage)-\(batch.firstPage + UInt64(batch.count) - 1)"
            text += " zero \(batch.zeroPages) \(PageCodecs.name(of: batch.encoding))"
        case .kernelState(let chunk), .deviceState(let chunk):
            text += " name \(UntrustedText.escape(chunk.name)) version \(chunk.version) size \(chunk.data.count)"
        case .end(let end):
            text +=
                " pages \(end.pages) zero \(end.zeroPages) records \(end.records) bytes \(end.bytes) pause time \(end.sourcePauseTime)"
            if end.diskBlocks > 0 { text += " disk blocks \(end.diskBlocks) zero \(end.diskZeroBlocks)" }
            text += " stream checksum \(hex(end.streamChecksum))"
        case .resume(let point):
            text += " continues \(point.uuidString) from record \(point.record)"
        }
        if verbosity >= 2 {
            text +=
                " header checksum \(hex(info.headerChecksum)) checksum \(hex(info.checksum)) running \(hex(info.runningChecksum))"
        }
        return text
    }

    private func summarize(_ statistics: StreamStatistics) {
        output("SUMMARY:")
        for type in statistics.byType.keys.sorted() {
            let totals = statistics.byType[type]!
            output("\tTotal \(type) records = \(totals.count)\t(bytes = \(totals.bytes))")
        }
        output("\tTotal records = \(statistics.records)")
        output("\tPages = \(statistics.pages) (zero pages elided = \(statistics.zeroPages))")
        if statistics.diskBlocks > 0 {
            output(
                "\tDisk blocks = \(statistics.diskBlocks) (zero blocks elided = \(statistics.diskZeroBlocks); data \(statistics.diskDataBytes) bytes)"
            )
        }
        let ratio = (statistics.compressionRatio * 100).rounded() / 100
        output(
            "\tPage data = \(statistics.pageDataBytes) bytes, \(statistics.pageWireBytes) on the wire (compression ratio \(ratio); \(statistics.compressedBatches) of \(statistics.compressedBatches + statistics.rawBatches) batches compressed)"
        )
        output("\tTotal stream length = \(statistics.bytes) bytes")
    }

    /// ISO 8601 UTC time of ns since the epoch.
    static func utc(_ nanoseconds: UInt64) -> String {
        var seconds = time_t(nanoseconds / 1_000_000_000)
        var parts = tm()
        guard gmtime_r(&seconds, &parts) != nil else { return "?" }
        func two(_ value: Int32) -> String { String(value).leftPadded(to: 2) }
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}
