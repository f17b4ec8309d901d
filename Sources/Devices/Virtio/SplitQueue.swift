import Synchronization

/// One buffer of a descriptor chain: guest-physical address and length, and who may write it.
public struct VirtqueueBuffer: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32
    /// Device-writable (VIRTQ_DESC_F_WRITE); otherwise device-readable.
    public var writable: Bool
}

/// A chain the driver made available: its head (what the used ring returns) and its buffers in order.
public struct DescriptorChain: Sendable {
    public var head: UInt16
    public var buffers: [VirtqueueBuffer]
}

/// Why a queue cannot be used: the driver broke the rules of §2.7, and the device needs a reset (§2.1.2).
public struct VirtqueueError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// A split virtqueue as its device sees it (virtio 1.x §2.7): the descriptor table, the driver area (available
/// ring) and the device area (used ring), all in guest memory; the device's own position in each ring.
///
/// Rings are read with acquire fences after their index and published with a release fence before theirs, as
/// §2.7.13 asks; nothing here keeps a pointer across calls, since the driver owns the memory.
public struct SplitQueue: Sendable, Equatable {
    /// QueueNum: entries in each ring (a power of two up to the transport's maximum); 0 before the driver sets it.
    public var size: UInt16 = 0
    public var ready = false
    public var descriptorTable: UInt64 = 0
    public var driverArea: UInt64 = 0
    public var deviceArea: UInt64 = 0
    /// The next available-ring entry the device takes (last_avail_idx).
    public var nextAvailable: UInt16 = 0
    /// The next used-ring entry the device fills; also the used ring's idx as the device published it.
    public var nextUsed: UInt16 = 0

    static let descriptorSize = 16
    static let flagNext: UInt16 = 1
    static let flagWrite: UInt16 = 2
    static let flagIndirect: UInt16 = 4

    public init() {}

    /// Takes the next chain the driver made available, or nil when there is none.
    public mutating func takeChain(_ memory: any GuestMemoryAccess) throws(VirtqueueError) -> DescriptorChain? {
        guard ready, size > 0 else { return nil }
        let available = try load(UInt16.self, at: driverArea + 2, memory)  // avail->idx
        atomicMemoryFence(ordering: .acquiring)
        guard available != nextAvailable else { return nil }
        guard available &- nextAvailable <= size else {
            throw VirtqueueError(
                description: "the available index moved \(available &- nextAvailable) entries in a queue of \(size)")
        }
        let slot = UInt64(nextAvailable % size)
        let head = try load(UInt16.self, at: driverArea + 4 + slot * 2, memory)
        nextAvailable &+= 1
        return DescriptorChain(head: head, buffers: try buffers(from: head, memory))
    }

    /// Returns a chain to the driver, saying how many bytes the device wrote into it.
    public mutating func complete(
        _ chain: DescriptorChain, written: UInt32, _ memory: any GuestMemoryAccess
    ) throws(VirtqueueError) {
        let slot = UInt64(nextUsed % size)
        let element = deviceArea + 4 + slot * 8
        try store(UInt32(chain.head), at: element, memory)
        try store(written, at: element + 4, memory)
        nextUsed &+= 1
        atomicMemoryFence(ordering: .releasing)
        try store(nextUsed, at: deviceArea + 2, memory)  // used->idx
    }

    /// Whether the driver asked not to be interrupted (VIRTQ_AVAIL_F_NO_INTERRUPT, without EVENT_IDX).
    public func interruptSuppressed(_ memory: any GuestMemoryAccess) -> Bool {
        ((try? load(UInt16.self, at: driverArea, memory)) ?? 0) & 1 != 0
    }

    /// Follows a chain from `head`, through one indirect table at most (§2.7.5.3.1), refusing loops and buffers
    /// outside guest RAM.
    private func buffers(from head: UInt16, _ memory: any GuestMemoryAccess) throws(VirtqueueError) -> [VirtqueueBuffer] {
        var buffers: [VirtqueueBuffer] = []
        var table = descriptorTable
        var tableSize = UInt32(size)
        var index = UInt32(head)
        var indirect = false
        while true {
            guard index < tableSize else {
                throw VirtqueueError(description: "descriptor \(index) is outside a table of \(tableSize)")
            }
            let entry = table + UInt64(index) * UInt64(Self.descriptorSize)
            let address = try load(UInt64.self, at: entry, memory)
            let length = try load(UInt32.self, at: entry + 8, memory)
            let flags = try load(UInt16.self, at: entry + 12, memory)
            let next = try load(UInt16.self, at: entry + 14, memory)
            if flags & Self.flagIndirect != 0 {
                guard !indirect, buffers.isEmpty, flags & Self.flagNext == 0, length % UInt32(Self.descriptorSize) == 0,
                    length > 0
                else { throw VirtqueueError(description: "a malformed indirect descriptor at \(index)") }
                indirect = true
                table = address
                tableSize = length / UInt32(Self.descriptorSize)
                index = 0
                continue
            }
            guard length == 0 || memory.pointer(guestPhysical: address, length: Int(length)) != nil else {
                throw VirtqueueError(
                    description: "a buffer of \(length) bytes at 0x\(String(address, radix: 16)) is outside guest RAM")
            }
            buffers.append(VirtqueueBuffer(address: address, length: length, writable: flags & Self.flagWrite != 0))
            guard buffers.count <= Int(tableSize) else { throw VirtqueueError(description: "a descriptor chain loops") }
            guard flags & Self.flagNext != 0 else { return buffers }
            index = UInt32(next)
        }
    }

    private func load<T: FixedWidthInteger>(
        _: T.Type, at address: UInt64, _ memory: any GuestMemoryAccess
    ) throws(VirtqueueError) -> T {
        guard let pointer = memory.pointer(guestPhysical: address, length: MemoryLayout<T>.size) else {
            throw VirtqueueError(description: "queue memory at 0x\(String(address, radix: 16)) is outside guest RAM")
        }
        return T(littleEndian: pointer.loadUnaligned(as: T.self))
    }

    private func store<T: FixedWidthInteger>(
        _ value: T, at address: UInt64, _ memory: any GuestMemoryAccess
    ) throws(VirtqueueError) {
        guard let pointer = memory.pointer(guestPhysical: address, length: MemoryLayout<T>.size) else {
            throw VirtqueueError(description: "queue memory at 0x\(String(address, radix: 16)) is outside guest RAM")
        }
        pointer.storeBytes(of: value.littleEndian, as: T.self)
        memory.noteWritten(guestPhysical: address, length: MemoryLayout<T>.size)
    }
}
