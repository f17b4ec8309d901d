import MachineDescription
import SystemSupport

/// BEGIN is a list of tagged fields (tag u16, length u32, value), so later versions can add fields.
enum BeginTag: UInt16, CaseIterable {
    case formatVersion = 1
    case tool = 2
    case toolVersion = 3
    case uuid = 4
    case creationTime = 5
    case mode = 6
    case architecture = 16
    case cpuVendor = 17
    case cpuModel = 18
    case pageSize = 19
    case hypervisor = 20
    case hypervisorVersion = 21
    case machineName = 32
    case vcpuCount = 33
    case segment = 34
    case device = 35
    case cpuidLeaf = 36
    case disk = 37
    /// Ignorable (bit 15): readers before resumable streams skip it.
    case resumable = 0x8007

    /// Tags at or above this value may be skipped by a reader that does not know them.
    static let ignorableBit: UInt16 = 0x8000

    var repeats: Bool { self == .segment || self == .device || self == .cpuidLeaf || self == .disk }
    /// Fields a writer may leave out.
    var optional: Bool { self == .resumable }
}

/// Payload encodings of each record type (man/vmstream.5, RECORD TYPES).
enum Payload {
    static func encodeBegin(_ begin: StreamBegin) -> [UInt8] {
        var out = ByteWriter()
        func field(_ tag: BeginTag, _ fill: (inout ByteWriter) -> Void) {
            var value = ByteWriter()
            fill(&value)
            out.u16(tag.rawValue)
            out.u32(UInt32(value.bytes.count))
            out.raw(value.bytes)
        }
        func text(_ tag: BeginTag, _ string: String) { field(tag) { $0.raw(Array(string.utf8)) } }
        field(.formatVersion) { $0.u32(begin.formatVersion) }
        text(.tool, begin.tool)
        text(.toolVersion, begin.toolVersion)
        field(.uuid) { $0.raw(begin.uuid) }
        field(.creationTime) { $0.u64(begin.creationTime) }
        field(.mode) { $0.u8(begin.mode.wireValue) }
        text(.architecture, begin.host.architecture)
        text(.cpuVendor, begin.host.cpuVendor)
        text(.cpuModel, begin.host.cpuModel)
        field(.pageSize) { $0.u32(begin.host.pageSize) }
        text(.hypervisor, begin.host.hypervisor)
        text(.hypervisorVersion, begin.host.hypervisorVersion)
        text(.machineName, begin.machine.name)
        field(.vcpuCount) { $0.u32(begin.machine.vcpuCount) }
        for segment in begin.machine.segments {
            field(.segment) { value in
                value.u64(segment.guestPhysicalBase)
                value.u64(segment.size)
                value.raw(Array(segment.name.utf8))
            }
        }
        for device in begin.machine.devices {
            field(.device) { value in
                value.u32(device.version)
                value.string16(device.name)
                value.string16(device.kind)
                let entries = device.configuration.sorted { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }
                value.u16(UInt16(entries.count))
                for (key, setting) in entries {
                    value.string16(key)
                    value.string16(setting)
                }
            }
        }
        for (disk, allocated) in zip(begin.machine.disks, begin.diskAllocation) {
            field(.disk) { value in
                value.u64(disk.size)
                value.u64(allocated)
                value.u8((disk.readOnly ? 1 : 0) | (disk.sharedStorage ? 2 : 0))
                value.string16(disk.name)
                value.string16(disk.serial)
                value.string16(disk.path ?? "")
            }
        }
        for leaf in begin.machine.cpuid {
            field(.cpuidLeaf) { value in
                for word in [leaf.function, leaf.index, leaf.flags, leaf.eax, leaf.ebx, leaf.ecx, leaf.edx] { value.u32(word) }
            }
        }
        if begin.resumable { field(.resumable) { $0.u8(1) } }
        return out.bytes
    }

    /// Problems a writer must refuse so that it never writes what a reader rejects.
    static func beginProblem(_ begin: StreamBegin) -> String? {
        if begin.formatVersion != StreamFormat.version {
            return "format version \(begin.formatVersion) is not \(StreamFormat.version)"
        }
        if begin.uuid.count != 16 { return "uuid has \(begin.uuid.count) bytes, not 16" }
        if let problem = textProblem(begin) { return problem }
        if begin.machine.vcpuCount == 0 { return "vCPU count is 0" }
        let segments = begin.machine.segments
        if segments.isEmpty || segments.count > StreamFormat.maxSegments {
            return "\(segments.count) memory segments (1 to \(StreamFormat.maxSegments) allowed)"
        }
        let page = UInt64(StreamFormat.pageSize)
        var total: UInt64 = 0
        for segment in segments {
            if segment.size == 0 || segment.size % page != 0 || segment.guestPhysicalBase % page != 0 {
                return "segment \(UntrustedText.quote(segment.name)) is not a non-empty whole number of pages"
            }
            if segment.guestPhysicalBase.addingReportingOverflow(segment.size).overflow {
                return "segment \(UntrustedText.quote(segment.name)) ends beyond 2^64"
            }
            total = min(total &+ min(segment.size, StreamFormat.maxMemoryBytes + 1), StreamFormat.maxMemoryBytes + 1)
        }
        if total > StreamFormat.maxMemoryBytes { return "the segments hold more than 2^48 bytes of memory" }
        let ordered = segments.sorted { $0.guestPhysicalBase < $1.guestPhysicalBase }
        for (lower, upper) in zip(ordered, ordered.dropFirst())
        where lower.guestPhysicalBase + lower.size > upper.guestPhysicalBase {
            return "segments \(UntrustedText.quote(lower.name)) and \(UntrustedText.quote(upper.name)) overlap"
        }
        if begin.machine.devices.count > StreamFormat.maxDevices { return "more than \(StreamFormat.maxDevices) devices" }
        if begin.machine.cpuid.count > StreamFormat.maxCPUIDLeaves {
            return "more than \(StreamFormat.maxCPUIDLeaves) CPUID leaves"
        }
        var names = Set<String>()
        for device in begin.machine.devices {
            if !names.insert(device.name).inserted { return "device name \(UntrustedText.quote(device.name)) is repeated" }
            for string in [device.name, device.kind] + device.configuration.keys + device.configuration.values
            where string.utf8.count > Int(UInt16.max) {
                return "device \(UntrustedText.quote(device.name)) has a string longer than 65535 bytes"
            }
            if device.configuration.count > Int(UInt16.max) {
                return "device \(UntrustedText.quote(device.name)) has too many settings"
            }
        }
        return nil
    }

    static func decodeBegin(_ bytes: [UInt8], fail: @escaping @Sendable (String) -> StreamError) throws -> StreamBegin {
        var decoder = WireDecoder(bytes, fail: fail)
        var seen = Set<UInt16>()
        var formatVersion: UInt32?
        var tool: String?
        var toolVersion: String?
        var uuid: [UInt8]?
        var creationTime: UInt64?
        var mode: MigrationMode?
        var architecture: String?
        var cpuVendor: String?
        var cpuModel: String?
        var pageSize: UInt32?
        var hypervisor: String?
        var hypervisorVersion: String?
        var machineName: String?
        var vcpuCount: UInt32?
        var segments: [MemorySegment] = []
        var devices: [DeviceConfig] = []
        var cpuid: [CPUIDLeaf] = []
        var disks: [DiskConfig] = []
        var diskAllocation: [UInt64] = []
        var resumable = false

        while !decoder.atEnd {
            let rawTag = try decoder.u16()
            let length = Int(try decoder.u32())
            guard length <= decoder.remaining else { throw fail("field \(rawTag) runs past the end of the record") }
            let valueRange = decoder.position..<decoder.position + length
            try decoder.skip(length)
            guard let tag = BeginTag(rawValue: rawTag) else {
                if rawTag & BeginTag.ignorableBit != 0 { continue }
                throw fail("unknown required field \(rawTag)")
            }
            if !tag.repeats {
                guard seen.insert(rawTag).inserted else { throw fail("field \(tag) appears twice") }
            }
            var value = WireDecoder(bytes, range: valueRange, fail: fail)
            func exact(_ width: Int) throws {
                guard length == width else { throw fail("field \(tag) has length \(length), not \(width)") }
            }
            func text() throws -> String { try value.text(length, what: "field \(tag)") }
            switch tag {
            case .formatVersion:
                try exact(4)
                formatVersion = try value.u32()
            case .tool: tool = try text()
            case .toolVersion: toolVersion = try text()
            case .uuid:
                try exact(16)
                uuid = try value.raw(16)
            case .creationTime:
                try exact(8)
                creationTime = try value.u64()
            case .mode:
                try exact(1)
                let wire = try value.u8()
                guard let known = MigrationMode(wireValue: wire) else { throw fail("unknown migration mode \(wire)") }
                mode = known
            case .architecture: architecture = try text()
            case .cpuVendor: cpuVendor = try text()
            case .cpuModel: cpuModel = try text()
            case .pageSize:
                try exact(4)
                pageSize = try value.u32()
            case .hypervisor: hypervisor = try text()
            case .hypervisorVersion: hypervisorVersion = try text()
            case .machineName: machineName = try text()
            case .vcpuCount:
                try exact(4)
                vcpuCount = try value.u32()
            case .segment:
                guard segments.count < StreamFormat.maxSegments else {
                    throw fail("more than \(StreamFormat.maxSegments) segments")
                }
                let base = try value.u64()
                let size = try value.u64()
                let name = try value.text(value.remaining, what: "segment name")
                segments.append(MemorySegment(name: name, guestPhysicalBase: base, size: size))
            case .device:
                guard devices.count < StreamFormat.maxDevices else { throw fail("more than \(StreamFormat.maxDevices) devices") }
                let version = try value.u32()
                let name = try value.string16(what: "device name")
                let kind = try value.string16(what: "device kind")
                let count = Int(try value.u16())
                var configuration: [String: String] = [:]
                var previousKey: [UInt8]?
                for _ in 0..<count {
                    let key = try value.string16(what: "device setting")
                    let setting = try value.string16(what: "device setting")
                    // Keys in ascending byte order, each once: one encoding per configuration, nothing to choose.
                    if let previousKey, !previousKey.lexicographicallyPrecedes(Array(key.utf8)) {
                        throw fail(
                            "device \(UntrustedText.quote(name)) lists setting \(UntrustedText.quote(key)) "
                                + (previousKey == Array(key.utf8) ? "twice" : "out of ascending order"))
                    }
                    previousKey = Array(key.utf8)
                    configuration[key] = setting
                }
                guard value.atEnd else { throw fail("device \(UntrustedText.quote(name)) has trailing bytes") }
                devices.append(DeviceConfig(name: name, kind: kind, version: version, configuration: configuration))
            case .cpuidLeaf:
                guard cpuid.count < StreamFormat.maxCPUIDLeaves else {
                    throw fail("more than \(StreamFormat.maxCPUIDLeaves) CPUID leaves")
                }
                try exact(28)
                let words = try (0..<7).map { _ in try value.u32() }
                cpuid.append(
                    CPUIDLeaf(
                        function: words[0], index: words[1], flags: words[2],
                        eax: words[3], ebx: words[4], ecx: words[5], edx: words[6]))
            case .disk:
                guard disks.count < StreamFormat.maxDisks else { throw fail("more than \(StreamFormat.maxDisks) disks") }
                let size = try value.u64()
                let allocated = try value.u64()
                let flags = try value.u8()
                guard flags & ~3 == 0 else { throw fail("disk flags 0x\(String(flags, radix: 16)) are not known") }
                let name = try value.string16(what: "disk name")
                let serial = try value.string16(what: "disk serial")
                let path = try value.string16(what: "disk path")
                guard value.atEnd else { throw fail("disk \(name) has trailing bytes") }
                disks.append(
                    DiskConfig(
                        name: name, size: size, readOnly: flags & 1 != 0, serial: serial, path: path.isEmpty ? nil : path,
                        sharedStorage: flags & 2 != 0))
                diskAllocation.append(allocated)
            case .resumable:
                try exact(1)
                let flag = try value.u8()
                guard flag == 1 else { throw fail("field \(tag) holds \(flag), not 1") }
                resumable = true
            }
        }
        for tag in BeginTag.allCases where !tag.repeats && !tag.optional && !seen.contains(tag.rawValue) {
            throw fail("field \(tag) is missing")
        }
        var begin = StreamBegin(
            formatVersion: formatVersion!, tool: tool!, toolVersion: toolVersion!, uuid: uuid!,
            creationTime: creationTime!, mode: mode!,
            host: HostSpec(
                architecture: architecture!, cpuVendor: cpuVendor!, cpuModel: cpuModel!, pageSize: pageSize!,
                hypervisor: hypervisor!, hypervisorVersion: hypervisorVersion!),
            machine: MachineConfig(
                name: machineName!, vcpuCount: vcpuCount!, segments: segments, devices: devices, cpuid: cpuid, disks: disks),
            diskAllocation: diskAllocation)
        begin.resumable = resumable
        if let problem = beginProblem(begin) { throw fail(problem) }
        return begin
    }

    static let rangeSize = 20

    static func encodeRound(_ number: UInt32, _ ranges: ArraySlice<PageRange>) -> [UInt8] {
        var out = ByteWriter()
        out.u32(number)
        out.u32(UInt32(ranges.count))
        for range in ranges {
            out.u32(UInt32(range.segment))
            out.u64(range.firstPage)
            out.u64(range.count)
        }
        return out.bytes
    }

    static func decodeRound(_ bytes: [UInt8], fail: @escaping @Sendable (String) -> StreamError) throws -> (UInt32, [PageRange]) {
        var decoder = WireDecoder(bytes, fail: fail)
        let number = try decoder.u32()
        let count = Int(try decoder.u32())
        guard count <= StreamFormat.maxRangesPerRound, decoder.remaining == count * rangeSize else {
            throw fail("range count \(count) does not match the payload length")
        }
        var ranges: [PageRange] = []
        ranges.reserveCapacity(count)
        for _ in 0..<count {
            let segment = Int(try decoder.u32())
            ranges.append(PageRange(segment: segment, firstPage: try decoder.u64(), count: try decoder.u64()))
        }
        return (number, ranges)
    }

    static func encodeChunk(_ chunk: StateChunk) -> [UInt8] {
        var out = ByteWriter()
        out.u32(chunk.version)
        out.string16(chunk.name)
        out.raw(chunk.data)
        return out.bytes
    }

    static let maxChunkNameLength = StateLimits.maximumNameLength

    static func chunkProblem(_ chunk: StateChunk) -> String? {
        let length = chunk.name.utf8.count
        if length == 0 || length > maxChunkNameLength { return "chunk name must have 1 to \(maxChunkNameLength) bytes" }
        if chunk.name.utf8.contains(0) { return "chunk name \(UntrustedText.quote(chunk.name)) contains NUL" }
        return nil
    }

    static func decodeChunk(_ bytes: [UInt8], fail: @escaping @Sendable (String) -> StreamError) throws -> StateChunk {
        var decoder = WireDecoder(bytes, fail: fail)
        let version = try decoder.u32()
        let name = try decoder.string16(what: "chunk name")
        let chunk = StateChunk(name: name, version: version, data: try decoder.raw(decoder.remaining))
        if let problem = chunkProblem(chunk) { throw fail(problem) }
        return chunk
    }

    /// END's payload: 48 bytes, and 16 more (disk blocks, zero disk blocks) with the disks feature.
    static let endSize = 48
    static let endSizeWithDisks = 64

    static func encodeEnd(_ end: StreamEnd, disks: Bool) -> [UInt8] {
        var out = ByteWriter()
        for value in [end.pages, end.zeroPages, end.bytes, end.records, end.sourcePauseTime, end.streamChecksum] {
            out.u64(value)
        }
        if disks {
            out.u64(end.diskBlocks)
            out.u64(end.diskZeroBlocks)
        }
        return out.bytes
    }

    static func decodeEnd(_ bytes: [UInt8], disks: Bool, fail: @escaping @Sendable (String) -> StreamError) throws -> StreamEnd {
        let size = disks ? endSizeWithDisks : endSize
        guard bytes.count == size else { throw fail("payload has \(bytes.count) bytes, not \(size)") }
        var decoder = WireDecoder(bytes, fail: fail)
        var end = StreamEnd(
            pages: try decoder.u64(), zeroPages: try decoder.u64(), bytes: try decoder.u64(),
            records: try decoder.u64(), sourcePauseTime: try decoder.u64(), streamChecksum: try decoder.u64())
        if disks {
            end.diskBlocks = try decoder.u64()
            end.diskZeroBlocks = try decoder.u64()
        }
        return end
    }

    /// PAGES: segment u16, encoding u8, reserved u8, count u32, first page u64, then the zero bitmap.
    static let pagesPrefixSize = 16
    static func bitmapSize(_ count: Int) -> Int { (count + 7) / 8 }

}
