import MachineDescription

/// Everything a stream carries in 4 KiB units, as one `GuestMemory`: guest RAM's segments, then one segment per
/// disk (`StreamBegin.areaCount`). The engine sends and lands disk blocks exactly as it does pages; the stream
/// writer puts disk areas in DISK EXTENTS and DISK BLOCKS records.
///
/// A disk without a store (shared storage: both hosts open the same image) holds no data to send or land.
public final class MachineAreas: GuestMemory {
    public let segments: [MemorySegment]
    private let memory: any GuestMemory
    private let disks: [(any GuestMemory)?]
    /// The store that lent the staging buffer out now, to give it back to.
    private var stagingLender: (any GuestMemory)?

    /// `disks[i]` is disk `i`'s image as a one-segment store, or nil when its storage is shared.
    public init(memory: any GuestMemory, disks: [DiskConfig], stores: [(any GuestMemory)?]) {
        self.memory = memory
        self.disks = stores
        segments = memory.segments + disks.map { MemorySegment(name: $0.name, guestPhysicalBase: 0, size: $0.size) }
    }

    /// The first disk area.
    public var memorySegments: Int { memory.segments.count }

    /// Disk `index`'s store, when its data travels.
    public func disk(_ index: Int) -> (any GuestMemory)? { disks[index] }

    private func route(_ area: Int) -> (store: any GuestMemory, segment: Int)? {
        if area < memorySegments { return (memory, area) }
        return disks[area - memorySegments].map { ($0, 0) }
    }

    public func pages(segment: Int, from page: UInt64, count: UInt64) -> UnsafeRawPointer {
        let (store, inner) = route(segment)!
        return store.pages(segment: inner, from: page, count: count)
    }

    public func populatedPages(segment: Int) throws -> [Range<UInt64>] {
        guard let (store, inner) = route(segment) else { return [] }
        return try store.populatedPages(segment: inner)
    }

    public func doneReading(segment: Int, pages: Range<UInt64>) {
        route(segment).map { $0.store.doneReading(segment: $0.segment, pages: pages) }
    }

    public func write(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        guard let (store, inner) = route(segment) else {
            throw MigrationError("disk data for \(segments[segment].name), whose storage is shared")
        }
        try store.write(segment: inner, page: page, count: count, from: data)
    }

    public func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        route(segment).flatMap { $0.store.landing(segment: $0.segment, page: page, count: count) }
    }

    public func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer? {
        precondition(stagingLender == nil, "a staging buffer is already lent")
        guard let (store, inner) = route(segment), let buffer = store.staging(segment: inner, bytes: bytes) else { return nil }
        stagingLender = store
        return buffer
    }

    public func stagingDone() {
        stagingLender?.stagingDone()
        stagingLender = nil
    }

    public func willWrite(segment: Int, pages: Range<UInt64>) {
        route(segment).map { $0.store.willWrite(segment: $0.segment, pages: pages) }
    }

    public func writesEnded() {
        memory.writesEnded()
        for disk in disks { disk?.writesEnded() }
    }

    public func finishWrites() throws {
        try memory.finishWrites()
        for disk in disks { try disk?.finishWrites() }
    }

    public func discard(segment: Int, pages: Range<UInt64>) throws {
        guard let (store, inner) = route(segment) else {
            throw MigrationError("disk data for \(segments[segment].name), whose storage is shared")
        }
        try store.discard(segment: inner, pages: pages)
    }
}
