import SystemSupport

/// One virtio-blk request (virtio 1.x §5.2.6) carried out against a disk image, straight between the image and the
/// guest's buffers: a 16-byte header (type, reserved, sector), device-readable data, device-writable data, and a
/// status byte at the very end of the writable part.
struct BlockRequest {
    enum Kind: UInt32 {
        case read = 0
        case write = 1
        case flush = 4
        case getID = 8
        case discard = 11
        case writeZeroes = 13
    }
    enum Status: UInt8 {
        case ok = 0
        case ioError = 1
        case unsupported = 2
    }

    static let sectorSize: UInt64 = 512
    static let headerSize = 16
    static let idLength = 20
    /// Segments of a discard or write-zeroes request (§5.2.6: sector u64, sector count u32, flags u32).
    static let rangeSize = 16
    /// What the config space promises for discard and write zeroes, per request.
    static let maximumRangeSectors: UInt32 = 1 << 22
    static let maximumRanges: UInt32 = 1

    let chain: DescriptorChain
    let memory: any GuestMemoryAccess
    let disk: DiskImage

    /// Carries the request out; returns how many bytes it wrote into the chain's writable buffers (status included),
    /// or nil when the chain has no room for a status byte and cannot be answered at all.
    func perform() -> UInt32? {
        let readable = chain.buffers.prefix { !$0.writable }
        let writable = Array(chain.buffers.drop { !$0.writable })
        // The driver puts readable buffers first (§2.7.4.2); a status byte closes the writable part.
        guard writable.allSatisfy(\.writable), let last = writable.last, last.length > 0 else { return nil }
        var dataOut = writable
        dataOut[dataOut.count - 1].length -= 1
        let statusAddress = last.address + UInt64(last.length) - 1
        var written: UInt32 = 0
        let status: Status
        if let header = gather(Array(readable), count: Self.headerSize) {
            var reader = ByteReader(header)
            let type = reader.u32()!
            _ = reader.u32()
            let sector = reader.u64()!
            let payload = skipping(Self.headerSize, of: Array(readable))
            (status, written) = run(
                Kind(rawValue: type), sector: sector, payload: payload, into: dataOut.filter { $0.length > 0 })
        } else {
            status = .ioError
        }
        memory.pointer(guestPhysical: statusAddress, length: 1)?.storeBytes(of: status.rawValue, as: UInt8.self)
        memory.noteWritten(guestPhysical: statusAddress, length: 1)
        return written + 1
    }

    private func run(
        _ kind: Kind?, sector: UInt64, payload: [VirtqueueBuffer], into output: [VirtqueueBuffer]
    ) -> (Status, UInt32) {
        let offset = sector.multipliedReportingOverflow(by: Self.sectorSize)
        guard !offset.overflow else { return (.ioError, 0) }
        do {
            switch kind {
            case .read:
                let bytes = output.reduce(UInt64(0)) { $0 + UInt64($1.length) }
                guard inside(offset.partialValue, bytes), bytes % Self.sectorSize == 0 else { return (.ioError, 0) }
                var position = offset.partialValue
                for buffer in output {
                    try disk.read(into: guestBytes(buffer), at: position)
                    memory.noteWritten(guestPhysical: buffer.address, length: Int(buffer.length))
                    position += UInt64(buffer.length)
                }
                return (.ok, UInt32(bytes))
            case .write:
                let bytes = payload.reduce(UInt64(0)) { $0 + UInt64($1.length) }
                guard !disk.config.readOnly, inside(offset.partialValue, bytes), bytes % Self.sectorSize == 0 else {
                    return (.ioError, 0)
                }
                var position = offset.partialValue
                for buffer in payload {
                    try disk.write(UnsafeRawBufferPointer(guestBytes(buffer)), at: position)
                    position += UInt64(buffer.length)
                }
                return (.ok, 0)
            case .flush:
                try disk.flush()
                return (.ok, 0)
            case .getID:
                guard let first = output.first else { return (.ioError, 0) }
                let id = Array(disk.config.serial.utf8.prefix(Self.idLength))
                let room = min(Int(first.length), Self.idLength)
                let target = guestBytes(first)
                target.initializeMemory(as: UInt8.self, repeating: 0)
                target.copyBytes(from: id.prefix(room))
                memory.noteWritten(guestPhysical: first.address, length: Int(first.length))
                return (.ok, UInt32(room))
            case .discard, .writeZeroes:
                return (try clear(payload, zeroes: kind == .writeZeroes), 0)
            case nil:
                return (.unsupported, 0)
            }
        } catch {
            return (.ioError, 0)
        }
    }

    /// Discard and write zeroes both punch holes: the blocks then read as zeroes and take no space.
    private func clear(_ payload: [VirtqueueBuffer], zeroes: Bool) throws -> Status {
        let bytes = payload.reduce(0) { $0 + Int($1.length) }
        guard !disk.config.readOnly, bytes > 0, bytes % Self.rangeSize == 0,
            bytes / Self.rangeSize <= Int(Self.maximumRanges), let data = gather(payload, count: bytes)
        else { return .ioError }
        var reader = ByteReader(data)
        while !reader.atEnd {
            let sector = reader.u64()!
            let count = reader.u32()!
            let flags = reader.u32()!
            // Flag bit 0 (unmap) is only defined for write zeroes (§5.2.6.2).
            guard flags & ~(zeroes ? 1 : 0) == 0 else { return .unsupported }
            guard count <= Self.maximumRangeSectors, sector <= disk.config.size / Self.sectorSize,
                inside(sector * Self.sectorSize, UInt64(count) * Self.sectorSize)
            else { return .ioError }
            try disk.punchHole(at: sector * Self.sectorSize, length: UInt64(count) * Self.sectorSize)
        }
        return .ok
    }

    private func inside(_ offset: UInt64, _ length: UInt64) -> Bool {
        let end = offset.addingReportingOverflow(length)
        return !end.overflow && end.partialValue <= disk.config.size
    }

    /// A buffer's bytes in guest RAM; the queue checked they are inside it.
    private func guestBytes(_ buffer: VirtqueueBuffer) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(
            start: memory.pointer(guestPhysical: buffer.address, length: Int(buffer.length)), count: Int(buffer.length))
    }

    /// The first `count` bytes of `buffers`, across buffer boundaries; nil when they hold fewer.
    private func gather(_ buffers: [VirtqueueBuffer], count: Int) -> [UInt8]? {
        var bytes: [UInt8] = []
        for buffer in buffers where bytes.count < count {
            bytes += guestBytes(buffer).prefix(count - bytes.count)
        }
        return bytes.count == count ? bytes : nil
    }

    /// `buffers` without their first `count` bytes.
    private func skipping(_ count: Int, of buffers: [VirtqueueBuffer]) -> [VirtqueueBuffer] {
        var left = UInt32(count)
        var rest: [VirtqueueBuffer] = []
        for var buffer in buffers {
            let skip = min(left, buffer.length)
            left -= skip
            buffer.address += UInt64(skip)
            buffer.length -= skip
            if buffer.length > 0 { rest.append(buffer) }
        }
        return rest
    }
}
