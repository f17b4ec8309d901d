import MachineDescription

/// Synthetic guest memory and streams for `vmstream sample`, the tests and the benchmark.
///
/// Page contents are a pure function of (seed, page number): half the pages are zero, a quarter
/// text-like (compressible), a quarter random, so any page can be regenerated to check a receiver.
public enum SampleStream {
    /// The machine a sample stream describes; with `diskSize`, it has one disk, vda.
    public static func machine(memorySize: UInt64, diskSize: UInt64 = 0) -> MachineConfig {
        var machine = MachineConfig(
            name: "sample", vcpuCount: 2,
            segments: MemorySegment.standardLayout(memorySize: memorySize),
            devices: [
                DeviceConfig(name: "uart0", kind: "uart16550", version: 1, configuration: ["port": "0x3f8", "irq": "4"]),
                DeviceConfig(name: "status0", kind: "guest-status", version: 1, configuration: ["port": "0x500"]),
            ],
            cpuid: [
                CPUIDLeaf(function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x756e_6547, ecx: 0x6c65_746e, edx: 0x4965_6e69),
                CPUIDLeaf(function: 1, index: 0, flags: 0, eax: 0x906ea, ebx: 0x800, ecx: 0xf6fa_3203, edx: 0x0f8b_fbff),
            ])
        if diskSize > 0 {
            machine.disks = [DiskConfig(name: "vda", size: diskSize, serial: "sample-vda")]
            machine.devices.append(
                DeviceConfig(
                    name: "vda", kind: "virtio-blk", version: 1, configuration: ["mmio": "0xd0000000", "irq": "5", "disk": "vda"])
            )
        }
        return machine
    }

    /// A BEGIN for a sample stream; fixed uuid, time and version give byte-identical streams.
    public static func begin(
        memorySize: UInt64, uuid: [UInt8], creationTime: UInt64, diskSize: UInt64 = 0, toolVersion: String = "0.1"
    ) -> StreamBegin {
        StreamBegin(
            tool: "vmstream", toolVersion: toolVersion, uuid: uuid, creationTime: creationTime, mode: .cold,
            host: HostSpec(
                architecture: "x86_64", cpuVendor: "GenuineIntel", cpuModel: "Sample CPU @ 2.00GHz",
                pageSize: 4096, hypervisor: "kvm", hypervisorVersion: "api 12"),
            machine: machine(memorySize: memorySize, diskSize: diskSize))
    }

    /// Fills one 4 KiB page with the sample content of page `index`.
    public static func fill(_ page: UnsafeMutableRawPointer, index: UInt64, seed: UInt64) {
        var state = seed &+ index &* 0x9e37_79b9_7f4a_7c15
        switch mix(index &+ seed) % 4 {
        case 0, 1:
            page.initializeMemory(as: UInt8.self, repeating: 0, count: StreamFormat.pageSize)
        case 2:
            // Text-like: words from a small vocabulary, as code and text compress.
            let vocabulary = [
                "migrate ", "page ", "round ", "vcpu ", "dirty ", "stream ", "memory ", "return ",
                "if (x) ", "{\n", "}\n", "0x1000 ", "mov rax, ", "struct ", "kvm ", "let ",
            ]
            var position = 0
            while position < StreamFormat.pageSize {
                state = mix(state)
                for byte in vocabulary[Int(state % 16)].utf8 where position < StreamFormat.pageSize {
                    page.storeBytes(of: byte, toByteOffset: position, as: UInt8.self)
                    position += 1
                }
            }
        default:
            for word in 0..<StreamFormat.pageSize / 8 {
                state = mix(state)
                page.storeBytes(of: state | 1, toByteOffset: word * 8, as: UInt64.self)
            }
        }
    }

    /// SplitMix64's finaliser: a cheap, well-spread hash of a counter.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// Gives pages [first, first+count) of an area (a segment, or a disk after them): fills `buffer` and returns it,
    /// or returns a pointer into a mapping.
    public typealias PageSource = (_ segment: Int, _ first: UInt64, _ count: Int, _ buffer: UnsafeMutableRawPointer) ->
        UnsafeRawPointer

    /// Writes a whole sample stream: BEGIN, a full first round, a second round of a few pages (and disk blocks),
    /// state, END.
    /// Memory is bounded by one batch buffer; `pages` supplies content (default: `fill`).
    public static func write(
        to writer: StreamWriter, begin: StreamBegin, seed: UInt64, sourcePauseTime: UInt64,
        pages: PageSource? = nil
    ) throws {
        let batchPages = StreamFormat.maxPagesPerBatch
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: batchPages * StreamFormat.pageSize, alignment: 4096)
        defer { buffer.deallocate() }
        var base: UInt64 = 0
        let areaSizes = begin.machine.segments.map(\.size) + begin.machine.disks.map(\.size)
        let segmentBases = areaSizes.map { size -> UInt64 in
            defer { base += size / UInt64(StreamFormat.pageSize) }
            return base
        }
        let supply: PageSource =
            pages ?? { segment, first, count, buffer in
                for index in 0..<count {
                    fill(buffer + index * StreamFormat.pageSize, index: segmentBases[segment] + first + UInt64(index), seed: seed)
                }
                return UnsafeRawPointer(buffer)
            }
        func send(_ ranges: [PageRange]) throws {
            for range in ranges {
                var done: UInt64 = 0
                while done < range.count {
                    let count = Int(min(UInt64(batchPages), range.count - done))
                    let pages = supply(range.segment, range.firstPage + done, count, buffer)
                    try writer.writePages(
                        segment: range.segment, firstPage: range.firstPage + done, count: UInt64(count), from: pages)
                    done += UInt64(count)
                }
            }
        }
        try writer.writeBegin(begin)
        let everything = areaSizes.enumerated().map { index, size in
            PageRange(segment: index, firstPage: 0, count: size / UInt64(StreamFormat.pageSize))
        }
        try writer.writeRound(1, pages: everything)
        try send(everything)
        // A second round as a live migration's last one: a few scattered pages of segment 0.
        let pagesInFirst = everything[0].count
        var dirty = stride(from: UInt64(0), to: pagesInFirst, by: Swift.max(1, Int(pagesInFirst / 5))).map {
            PageRange(segment: 0, firstPage: $0, count: Swift.min(3, pagesInFirst - $0))
        }
        if !begin.machine.disks.isEmpty {
            dirty.append(PageRange(segment: begin.machine.segments.count, firstPage: 1, count: 2))
        }
        try writer.writeRound(2, pages: dirty)
        try send(dirty)
        for vcpu in 0..<Int(begin.machine.vcpuCount) {
            try writer.writeKernelState(
                StateChunk(name: "vcpu\(vcpu)/regs", version: 1, data: (0..<144).map { UInt8(($0 + vcpu) & 0xff) }))
        }
        try writer.writeKernelState(StateChunk(name: "vm/pit", version: 1, data: [UInt8](repeating: 7, count: 112)))
        for device in begin.machine.devices {
            try writer.writeDeviceState(StateChunk(name: device.name, version: device.version, data: Array(device.kind.utf8)))
        }
        try writer.writeEnd(sourcePauseTime: sourcePauseTime)
    }
}
