import MachineDescription
import Migration
import SystemPackage
import SystemSupport

/// A vmrun's guest RAM, mapped from the memory file it lends over the control socket.
///
/// The sender maps it read-only and reads pages straight from it. The receiver's first round of new pages lands on
/// threads of their own (`WriteBehind`) so that reading the stream goes on meanwhile; later rounds send pages again,
/// into pages that exist already, and land at once with pwrite, which leaves them unmapped here. Holes are found
/// with SEEK_DATA, never read. On huge pages (hugetlbfs: no write(), no holes to find) the receiver reads the stream
/// straight into the mapping, with the pages faulted in ahead of it, and the sender reads every page.
final class MemoryFileGuestMemory: GuestMemory {
    let segments: [MemorySegment]
    private let file: MemoryFile
    /// On huge pages, a receiver's: faults in the pages a round lists while their data is still on its way.
    private let populator: PopulateAhead?
    /// A receiver's guest RAM on small pages, until the first `finishWrites`: lands the pages while the stream is read
    /// on. What costs there is the first store into each new page. A page sent again lands faster at once: the copy
    /// into the queue and the wait at the round's end cost more than its store (a live send with a large final round:
    /// downtime 20 ms against 28 ms at the medians of 10 pairs).
    private var storer: WriteBehind?
    /// A disk image a receiver writes: each round's end starts writing it back, so that the sync before the state is
    /// restored, inside the downtime, finds little left (9-11 ms went to 4-6 ms).
    private let writeback: BackgroundWriteback?
    /// A sender's: lets go of the pages it has read, in whole fault-around windows.
    private var readRelease: ReadRelease

    /// Maps `descriptor` and takes it over. `storingBehind`: guest RAM a receiver writes (disk images take their
    /// blocks as they come, so that what is synced is what was sent). `writesBack`: a disk image a receiver writes.
    init(
        descriptor: FileDescriptor, segments: [MemorySegment], writable: Bool, storingBehind: Bool = false,
        writesBack: Bool = false
    ) throws {
        self.segments = segments
        file = try MemoryFile(adopting: descriptor, segmentSizes: segments.map(\.size), writable: writable)
        readRelease = ReadRelease(file)
        populator = writable && file.hugePages ? try PopulateAhead(file: file) : nil
        storer = writable && storingBehind && !file.hugePages ? try WriteBehind(file: file) : nil
        writeback = writable && writesBack ? BackgroundWriteback(file.descriptor) : nil
    }

    deinit {
        populator?.stop()
        storer?.stop()
        writeback?.stop()
    }

    /// On huge pages, which have no write(): the stream is read straight into the mapping (a copy saved). Small
    /// pages are written (`write`), from the storer's buffers in the first round.
    func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        populator == nil ? nil : file.address(segment: segment, page: page)
    }

    /// While the first round lands behind the reader: one of the storer's buffers, so that the pages are read into it
    /// and queued from there, not copied in.
    func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer? { storer?.lend(bytes: bytes) }
    func stagingDone() { storer?.giveBack() }

    func willWrite(segment: Int, pages: Range<UInt64>) { populator?.add(segment: segment, pages: pages) }
    func writesEnded() { populator?.clear() }

    func pages(segment: Int, from page: UInt64, count: UInt64) -> UnsafeRawPointer {
        UnsafeRawPointer(file.address(segment: segment, page: page))
    }

    func populatedPages(segment: Int) throws -> [Range<UInt64>] { try file.populatedPages(segment: segment) }
    func doneReading(segment: Int, pages: Range<UInt64>) {
        let start = Int64(file.segmentOffsets[segment] + pages.lowerBound * UInt64(pageSize))
        readRelease.done(reading: start..<start + Int64(pages.count) * Int64(pageSize))
    }

    func write(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        guard let storer else { return try file.write(segment: segment, page: page, count: count, from: data) }
        let offset = file.segmentOffsets[segment] + page * UInt64(pageSize)
        try storer.write(offset: Int64(offset), from: data, bytes: count * pageSize)
    }

    /// After the first round: stops the threads. A failed store is thrown again on every call.
    func finishWrites() throws {
        writeback?.request()
        guard let storer else { return }
        try storer.drain()
        storer.stop()
        self.storer = nil
    }

    func discard(segment: Int, pages: Range<UInt64>) { file.discard(segment: segment, pages: pages) }
}
