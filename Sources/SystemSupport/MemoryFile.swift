import CLinux
import Glibc
import SystemPackage

/// Guest RAM as one file holding every segment back to back (a memfd, or a file the user names), mapped shared
/// into this process.
///
/// The VMM creates or opens it and hands its descriptor to clients, which map the same file: the sender reads pages
/// straight from it, the receiver lands pages in it. Nothing is populated up front: pages cost memory only once
/// written. On huge pages the file lives on hugetlbfs instead and its whole size is reserved from the host's
/// pool when the owner maps it. `@unchecked Sendable`: the mapping is fixed for the object's life; the bytes are
/// the guest's to race on.
public final class MemoryFile: @unchecked Sendable {
    public let descriptor: FileDescriptor
    public let base: UnsafeMutableRawPointer
    public let length: Int
    /// Bytes of each segment, in file order.
    public let segmentSizes: [UInt64]
    /// Where each segment starts in the file.
    public let segmentOffsets: [UInt64]
    /// The file's huge page size on hugetlbfs (2 MiB as `create(hugePages: true)` makes it, or a mount's own), 0 on
    /// small pages.
    public let hugePageSize: UInt64
    public var hugePages: Bool { hugePageSize > 0 }
    private var released = false

    /// A new anonymous memory file (memfd) of the segments' total size, mapped read-write; with `hugePages`, on
    /// 2 MiB huge pages, all of them reserved now, so that a short pool fails here rather than as a fault later.
    public static func create(
        name: String, segmentSizes: [UInt64], hugePages: Bool = false
    ) throws(SystemError)
        -> MemoryFile
    {
        let total = segmentSizes.reduce(0, +)
        if hugePages && !HugePagePool.holds(wholePages: total) {
            throw SystemError(
                "guest memory on huge pages must be a whole number of 2 MiB pages, not \(total) bytes", errno: .invalidArgument)
        }
        let fd = try systemCall(hugePages ? "memfd_create on huge pages" : "memfd_create") {
            clinux_memfd_create("vm-" + name, hugePages ? 1 : 0)
        }
        let file = FileDescriptor(rawValue: fd)
        do { try systemCall("cannot size guest memory to \(total) bytes") { ftruncate(fd, off_t(total)) } } catch {
            try? file.close()
            throw error
        }
        return try MemoryFile(adopting: file, segmentSizes: segmentSizes, writable: true)  // closes it on failure
    }

    /// The file at `path` as guest RAM, mapped read-write and shared, locked against a second VM. `create`: a new
    /// file (none may be there), removed again should this fail. An empty file is sized to the segments' total (a
    /// hole); one with bytes must hold at least that many, so that a mistyped path is never grown over. Only
    /// memory filesystems: tmpfs, or hugetlbfs for huge pages (whose size must then be whole huge pages). Elsewhere
    /// the page cache would write guest memory back to a disk, and which pages hold data is the disk's to say.
    /// On hugetlbfs the mount's own page size (2 MiB or 1 GiB) counts.
    public static func open(path: String, segmentSizes: [UInt64], create: Bool) throws(SystemError) -> MemoryFile {
        let total = segmentSizes.reduce(0, +)
        let flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0)
        let fd = try systemCall("cannot open it") { Glibc.open(path, flags, 0o600) }
        let file = FileDescriptor(rawValue: fd)
        func refuse(_ error: SystemError) -> SystemError {
            try? file.close()
            if create { unlink(path) }
            return error
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            throw refuse(SystemError.last("it is in use by another process"))
        }
        var info = Glibc.stat()
        let hugePageSize = UInt64(max(clinux_hugetlbfs_page_size(fd), 0))
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw refuse(SystemError("not a regular file", errno: .invalidArgument))
        }
        guard hugePageSize > 0 || clinux_is_tmpfs(fd) == 1 else {
            throw refuse(SystemError("not on tmpfs or hugetlbfs (guest RAM stays in memory)", errno: .invalidArgument))
        }
        if hugePageSize > 0 && total % hugePageSize != 0 {
            let size = HugePagePool.name(pageSize: hugePageSize)
            throw refuse(
                SystemError(
                    "its hugetlbfs mount has \(size) pages, and guest memory (\(total >> 20) MiB) is not a whole number of them",
                    errno: .invalidArgument))
        }
        if info.st_size == 0 {
            do { try systemCall("cannot size it to \(total) bytes") { ftruncate(fd, off_t(total)) } } catch {
                throw refuse(error)
            }
        } else if UInt64(info.st_size) < total {
            throw refuse(SystemError("it holds \(info.st_size) bytes, fewer than the guest's \(total)", errno: .invalidArgument))
        }
        do { return try MemoryFile(adopting: file, segmentSizes: segmentSizes, writable: true) } catch {
            if create { unlink(path) }
            throw error
        }
    }

    /// Maps `descriptor` and takes it over: it is closed with the mapping, or at once if mapping fails.
    public init(adopting descriptor: FileDescriptor, segmentSizes: [UInt64], writable: Bool) throws(SystemError) {
        let total = segmentSizes.reduce(0, +)
        var info = Glibc.stat()
        guard fstat(descriptor.rawValue, &info) == 0, UInt64(info.st_size) >= total,
            total > 0, segmentSizes.allSatisfy({ $0 % UInt64(pageSize) == 0 })
        else {
            let error = SystemError(
                "guest memory file of \(info.st_size) bytes does not hold a page-aligned layout of \(total) bytes",
                errno: .invalidArgument)
            try? descriptor.close()
            throw error
        }
        let hugePageSize = UInt64(max(clinux_hugetlbfs_page_size(descriptor.rawValue), 0))
        let onHugePages = hugePageSize > 0
        let protection = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        // Huge pages are reserved by mapping (a reservation the file keeps for every later mapping); small pages
        // are allocated as they are written.
        let flags = onHugePages ? MAP_SHARED : MAP_SHARED | MAP_NORESERVE
        guard let mapping = mmap(nil, Int(total), protection, flags, descriptor.rawValue, 0), mapping != MAP_FAILED else {
            let error =
                onHugePages && errno == ENOMEM
                ? HugePagePool.shortage(bytes: total, pageSize: hugePageSize)
                : SystemError.last("cannot map \(total) bytes of guest memory")
            try? descriptor.close()
            throw error
        }
        self.hugePageSize = hugePageSize
        self.descriptor = descriptor
        base = mapping
        length = Int(total)
        self.segmentSizes = segmentSizes
        var next: UInt64 = 0
        segmentOffsets = segmentSizes.map { size in
            defer { next += size }
            return next
        }
    }

    deinit { release() }

    /// Unmaps and closes; only once nothing can touch the memory any more. Idempotent.
    public func release() {
        guard !released else { return }
        released = true
        munmap(base, length)
        try? descriptor.close()
    }

    public func pageCount(segment: Int) -> UInt64 { segmentSizes[segment] / UInt64(pageSize) }

    /// Address of page `page` of `segment`; the caller has checked the bounds.
    public func address(segment: Int, page: UInt64) -> UnsafeMutableRawPointer {
        base + Int(segmentOffsets[segment] + page * UInt64(pageSize))
    }

    /// Page ranges of a segment that hold data, found with SEEK_DATA/SEEK_HOLE: holes nobody wrote are
    /// skipped without being read (and without being populated by the read). hugetlbfs has no holes to report:
    /// the whole segment comes back, and a reader finds the zero pages by reading them, from memory reserved anyway.
    public func populatedPages(segment: Int) throws(SystemError) -> [Range<UInt64>] {
        let start = Int(segmentOffsets[segment])
        let end = start + Int(segmentSizes[segment])
        var ranges: [Range<UInt64>] = []
        var position = start
        while position < end {
            let dataStart = lseek(descriptor.rawValue, off_t(position), CLINUX_SEEK_DATA)
            if dataStart < 0 {
                if errno == ENXIO { break }  // no data after position
                throw SystemError.last("lseek(SEEK_DATA) on guest memory")
            }
            if dataStart >= end { break }
            let holeStart = lseek(descriptor.rawValue, dataStart, CLINUX_SEEK_HOLE)
            if holeStart < 0 { throw SystemError.last("lseek(SEEK_HOLE) on guest memory") }
            let dataEnd = min(Int(holeStart), end)
            let first = UInt64((Int(dataStart) - start) / pageSize)
            let last = UInt64((dataEnd - start + pageSize - 1) / pageSize)
            if let previous = ranges.last, previous.upperBound >= first {
                ranges[ranges.count - 1] = previous.lowerBound..<max(last, previous.upperBound)
            } else {
                ranges.append(first..<last)
            }
            position = dataEnd
        }
        return ranges
    }

    /// Stores `count` pages at `page` with pwrite: the file's pages are allocated without being zeroed first and
    /// never mapped here, which a copy through the mapping would do fault by fault (1 GiB on one thread: 0.30 s
    /// against 0.6-1.3 s measured; a second thread's copies go side by side, `store(at:)`), and this process's RSS
    /// does not grow. hugetlbfs has no write(): there the copy goes
    /// through the mapping, one fault per 2 MiB, and huge pages do not count in RSS.
    public func write(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws(SystemError) {
        if hugePages {
            address(segment: segment, page: page).copyMemory(from: data, byteCount: count * pageSize)
            return
        }
        let offset = Int64(segmentOffsets[segment] + page * UInt64(pageSize))
        try write(at: offset, UnsafeRawBufferPointer(start: data, count: count * pageSize))
    }

    /// Stores `bytes` at byte `offset` of the file through the mapping, where a first store into a page takes no lock
    /// of the file's (pwrite holds one: two threads pwriting new pages take turns). The pages are faulted in first
    /// with MADV_POPULATE_WRITE, which reports a file that cannot grow (a full tmpfs) as an error where the copy would
    /// raise SIGBUS; a kernel without it (before 5.14) gets the pwrite. The pages stay mapped: the caller drops them
    /// (`dropMapping(bytes:)`) a batch at a time, as each drop interrupts the process's other threads.
    public func store(at offset: Int64, _ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        guard offset >= 0, offset <= Int64(length - bytes.count) else {
            throw SystemError("a store of \(bytes.count) bytes at byte \(offset) of guest memory", errno: .invalidArgument)
        }
        let target = base + Int(offset)
        if madvise(target, bytes.count, CLINUX_MADV_POPULATE_WRITE) != 0 {
            let failure = errno
            guard failure == EINVAL else {
                let reason = failure == EFAULT ? Errno.noSpace : Errno(rawValue: failure)
                throw SystemError("cannot allocate guest memory at byte \(offset)", errno: reason)
            }
            return try write(at: offset, bytes)
        }
        target.copyMemory(from: source, byteCount: bytes.count)
    }

    /// pwrite of `bytes` at byte `offset` of the file: small pages only (hugetlbfs has no write()).
    public func write(at offset: Int64, _ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        do {
            _ = try descriptor.writeAll(toAbsoluteOffset: offset, bytes)
        } catch {
            throw SystemError("pwrite of guest memory at byte \(offset)", errno: error as? Errno ?? .ioError)
        }
    }

    /// Returns pages to the all-zero state without leaving them populated, but for huge pages, zeroed in place: a hole
    /// punched in part of one does nothing before Linux 5.19, and one punched over a whole one frees it.
    public func discard(segment: Int, pages: Range<UInt64>) {
        let start = address(segment: segment, page: pages.lowerBound)
        let bytes = Int(UInt64(pages.count) * UInt64(pageSize))
        if hugePages || madvise(start, bytes, MADV_REMOVE) != 0 {
            memset(start, 0, bytes)
        }
    }

    /// Drops this process's mapping of a byte range of the file, whole pages: the data stays in the file (the mapping
    /// is shared), and a later access maps the same pages again. Huge pages are not counted in RSS (and could be
    /// dropped only 2 MiB at a time): they stay mapped.
    public func dropMapping(bytes: Range<Int64>) {
        precondition(bytes.lowerBound >= 0, "a byte range of the file")
        guard !hugePages, !bytes.isEmpty else { return }
        let first = Int(bytes.lowerBound) / pageSize * pageSize
        let end = min((Int(bytes.upperBound) + pageSize - 1) / pageSize * pageSize, length)
        guard first < end else { return }
        _ = madvise(base + first, end - first, MADV_DONTNEED)
    }

    /// A read fault maps the file's pages around the one it needs as well: the kernel's fault-around, 64 KiB by
    /// default, aligned in the address space.
    public static let faultAroundBytes = 64 << 10

    /// The fault-around window that holds byte `offset` of the file, as a byte range of the file (within the mapping).
    public func faultAroundWindow(containing offset: Int64) -> Range<Int64> {
        precondition(offset >= 0 && offset < Int64(length), "byte \(offset) is not in the \(length)-byte mapping")
        let window = Int64(Self.faultAroundBytes)
        let start = Int64(Int(bitPattern: base))
        let aligned = (start + offset) / window * window
        return max(aligned - start, 0)..<min(aligned + window - start, Int64(length))
    }
}

/// Lets go of what a reader has read through a `MemoryFile`'s mapping, so that its RSS stays at a slice however large
/// the guest. Each read fault maps a whole fault-around window, so whole windows go: dropping only the pages read left
/// their neighbours mapped, and a live round, reading dirty pages far apart, grew with the guest's working set. The
/// window of the last page read stays until a read ends in another one: a round's pages ascend, and the next ones in
/// that window need no fault then.
public struct ReadRelease {
    private let file: MemoryFile
    private var heldWindow: Range<Int64>?

    public init(_ file: MemoryFile) { self.file = file }

    /// `bytes` of the file have been read and are done with.
    public mutating func done(reading bytes: Range<Int64>) {
        guard !bytes.isEmpty else { return }
        let last = file.faultAroundWindow(containing: bytes.upperBound - 1)
        let first = file.faultAroundWindow(containing: bytes.lowerBound)
        file.dropMapping(bytes: first.lowerBound..<last.lowerBound)
        if let held = heldWindow, held != last, !(first.lowerBound..<last.lowerBound).contains(held.lowerBound) {
            file.dropMapping(bytes: held)
        }
        heldWindow = last
    }
}
