import MachineDescription
import SystemSupport

/// Guest RAM as the engine sees it: segments of 4 KiB pages it reads in place, writes, zero-tests and asks which
/// ranges hold data. The engine never learns where the pages live: vmrun lends a memory file (`VMRunBackend`), a
/// bhyve backend would map guest-physical ranges with libvmmapi, the unit tests use plain anonymous memory.
public protocol GuestMemory: AnyObject {
    /// The segments, in the order `MachineConfig` lists them; a page is named by segment index and page number.
    var segments: [MemorySegment] { get }

    /// Address of `count` consecutive pages from `page` of `segment`, for reading in place. The pages stay mapped
    /// at least until `doneReading` for them; while the machine runs, the guest may change them under the reader.
    func pages(segment: Int, from page: UInt64, count: UInt64) -> UnsafeRawPointer

    /// Page ranges of `segment` that may hold data, ascending; every page outside them is zero and need not be read.
    func populatedPages(segment: Int) throws -> [Range<UInt64>]

    /// The reader is done with these pages: a backend may drop its mapping, so reading a guest costs a slice of
    /// memory however large the guest.
    func doneReading(segment: Int, pages: Range<UInt64>)

    /// Stores `count` pages at `page` of `segment` from `data`. `data` is the caller's again on return (but for data
    /// in the staging buffer, which the backend keeps until it lands: the caller only gives the buffer back), and a
    /// backend may land the pages later, until `finishWrites`; between two calls of it the receiver writes a page at
    /// most once, and never discards one it wrote.
    func write(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws

    /// Returns once every page written has landed; throws what failed to land, if something did. No default: a
    /// store that wraps others must pass it on.
    func finishWrites() throws

    /// Returns pages to all zeroes, without leaving them populated where the backend can.
    func discard(segment: Int, pages: Range<UInt64>) throws

    /// Where `count` pages from `page` can be written in place, when that is this backend's fastest way to store
    /// them (on huge pages, which have no write() and are faulted in ahead); nil to take `write`.
    func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer?

    /// A buffer of at least `bytes` that pages can be read into and then passed to `write` from, which then keeps
    /// them there instead of copying them; nil if this backend copies anyway. Given back with `stagingDone`.
    func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer?

    /// The last `write` from the staging buffer has been made (or none will be).
    func stagingDone()

    /// A hint: these pages are about to be written, in the order of the calls. A backend may prepare them
    /// meanwhile (fault them in on a thread of its own); the writes must come out the same without it.
    func willWrite(segment: Int, pages: Range<UInt64>)

    /// The writes hinted at are over or abandoned: stop preparing them.
    func writesEnded()
}

extension GuestMemory {
    public func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer? { nil }
    public func staging(segment: Int, bytes: Int) -> UnsafeMutableRawPointer? { nil }
    public func stagingDone() {}
    public func willWrite(segment: Int, pages: Range<UInt64>) {}
    public func writesEnded() {}

    public func pageCount(segment: Int) -> UInt64 { segments[segment].size / UInt64(pageSize) }

    /// Whether a page is all zeroes.
    public func isZero(segment: Int, page: UInt64) -> Bool {
        isZeroPage(pages(segment: segment, from: page, count: 1))
    }
}
