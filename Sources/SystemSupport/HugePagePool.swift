import SystemPackage

/// The host's pool of 2 MiB huge pages (hugetlbfs), which guest memory on huge pages is taken from. The pool is
/// the administrator's: its pages stay allocated while free, which is what makes them fast to fill where fresh
/// small pages are dear. Read from the 2 MiB size's own folder, which holds whatever the default huge page size.
/// A file the user names on a hugetlbfs mount of another size (1 GiB) takes its pages from that size's pool.
public enum HugePagePool {
    public static let pageSize: UInt64 = 2 << 20
    public static let folder = folder(pageSize: pageSize)
    /// How a user grows the pool, for messages.
    public static let howToGrow = growing(pageSize: pageSize)

    public static func folder(pageSize: UInt64) -> String { "/sys/kernel/mm/hugepages/hugepages-\(pageSize >> 10)kB" }
    static func growing(pageSize: UInt64) -> String { "grow it with \(folder(pageSize: pageSize))/nr_hugepages" }
    /// "2M", "1G": a huge page size as the kernel's own messages and QEMU's options write it.
    public static func name(pageSize: UInt64) -> String {
        pageSize >= 1 << 30 ? "\(pageSize >> 30)G" : "\(pageSize >> 20)M"
    }

    /// Pages a new mapping can have: free and not reserved by another mapping yet. Nil without a pool of that size.
    public static func availablePages(pageSize: UInt64 = pageSize) -> UInt64? {
        let folder = folder(pageSize: pageSize)
        guard let free = read(folder, "free_hugepages"), let reserved = read(folder, "resv_hugepages") else { return nil }
        return free > reserved ? free - reserved : 0
    }

    /// Whether `bytes` is a whole number of huge pages.
    public static func holds(wholePages bytes: UInt64) -> Bool { bytes > 0 && bytes % pageSize == 0 }

    /// What a pool too small for `bytes` is reported as.
    public static func shortage(bytes: UInt64, pageSize: UInt64 = pageSize) -> SystemError {
        let size = name(pageSize: pageSize)
        let why =
            availablePages(pageSize: pageSize).map { "the pool has \($0) available; \(growing(pageSize: pageSize))" }
            ?? "this host has no pool of \(size) pages"
        let count = (bytes + pageSize - 1) / pageSize
        return SystemError("cannot reserve \(count) huge pages of \(size) for guest memory (\(why))", errno: .noMemory)
    }

    private static func read(_ folder: String, _ name: String) -> UInt64? {
        (try? FileDescriptor.readFile(folder + "/" + name, limit: 64)).flatMap {
            UInt64(String(decoding: $0.filter { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self))
        }
    }
}
