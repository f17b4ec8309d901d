import SystemPackage

/// The host's pool of 2 MiB huge pages (hugetlbfs), which guest memory on huge pages is taken from. The pool is
/// the administrator's: sized with `sysctl vm.nr_hugepages`, its pages stay allocated while free, which is what makes
/// them fast to fill where fresh small pages are dear.
public enum HugePagePool {
    public static let pageSize: UInt64 = 2 << 20

    /// Free pages in the pool (HugePages_Free in /proc/meminfo), or nil where the kernel has no pool.
    public static func freePages() -> UInt64? {
        guard let text = try? FileDescriptor.readFile("/proc/meminfo", limit: 1 << 16) else { return nil }
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where line.hasPrefix("HugePages_Free:") {
            return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
        }
        return nil
    }

    /// Refuses a size that is not whole huge pages.
    public static func checkShape(_ bytes: UInt64) throws(SystemError) {
        guard bytes > 0, bytes % pageSize == 0 else {
            throw SystemError("guest memory on huge pages must be a multiple of 2M, not \(bytes) bytes", errno: .invalidArgument)
        }
    }

    /// Refuses `bytes` of guest memory on huge pages when the pool has too few free pages for them now.
    public static func checkRoom(_ bytes: UInt64) throws(SystemError) {
        try checkShape(bytes)
        let free = freePages() ?? 0
        if free < bytes / pageSize { throw shortage(bytes: bytes) }
    }

    /// What a pool too small for `bytes` is reported as.
    static func shortage(bytes: UInt64) -> SystemError {
        let free = freePages().map { "\($0)" } ?? "no"
        return SystemError(
            "cannot reserve \(bytes / pageSize) huge pages of 2M for guest memory (the pool has \(free) free; "
                + "grow it with sysctl vm.nr_hugepages)", errno: .noMemory)
    }
}
