import SystemPackage

/// The host's pool of 2 MiB huge pages (hugetlbfs), which guest memory on huge pages is taken from. The pool is
/// the administrator's: its pages stay allocated while free, which is what makes them fast to fill where fresh
/// small pages are dear. Read from the 2 MiB size's own folder, which holds whatever the default huge page size.
public enum HugePagePool {
    public static let pageSize: UInt64 = 2 << 20
    public static let folder = "/sys/kernel/mm/hugepages/hugepages-2048kB"
    /// How a user grows the pool, for messages.
    public static let howToGrow = "grow it with \(folder)/nr_hugepages"

    /// Pages a new mapping can have: free and not reserved by another mapping yet. Nil without a 2 MiB pool.
    public static func availablePages() -> UInt64? {
        guard let free = read("free_hugepages"), let reserved = read("resv_hugepages") else { return nil }
        return free > reserved ? free - reserved : 0
    }

    /// Whether `bytes` is a whole number of huge pages.
    public static func holds(wholePages bytes: UInt64) -> Bool { bytes > 0 && bytes % pageSize == 0 }

    /// What a pool too small for `bytes` is reported as.
    public static func shortage(bytes: UInt64) -> SystemError {
        let why = availablePages().map { "the pool has \($0) available; \(howToGrow)" } ?? "this host has no pool of 2 MiB pages"
        return SystemError("cannot reserve \(bytes / pageSize) huge pages of 2M for guest memory (\(why))", errno: .noMemory)
    }

    private static func read(_ name: String) -> UInt64? {
        (try? FileDescriptor.readFile(folder + "/" + name, limit: 64)).flatMap {
            UInt64(String(decoding: $0.filter { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self))
        }
    }
}
