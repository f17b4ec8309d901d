import MachineDescription
import SystemSupport
import VMStream

#if canImport(Glibc)
    import Glibc
#endif

/// The checks a receiver makes on BEGIN before it creates anything. Each refusal is one line that
/// says what differs. CPU features, devices and state chunks are checked by the hypervisor side (`vmrun
/// --incoming`, or `vmrun --check` for a dry run), which alone knows what its KVM offers.
public struct Compatibility: Sendable {
    public var architecture: String
    public var pageSize: UInt32
    public var hypervisor: String
    /// Bytes the machine's memory may take: MemAvailable, or on huge pages what the pool has available.
    public var availableMemory: UInt64
    /// The machine goes on 2 MiB huge pages (`vmrecv --hugepages`).
    public var hugePages: Bool
    /// With `hugePages`: this host has a pool of 2 MiB pages at all.
    public var hasHugePagePool = true

    /// This host, as seen from userspace, for a machine on small pages or on the host's pool of huge pages.
    public static func local(hypervisor: String = "kvm", hugePages: Bool = false) -> Compatibility {
        var names = utsname()
        uname(&names)
        let machine = withUnsafeBytes(of: &names.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let pool = hugePages ? HugePagePool.availablePages() : nil
        var host = Compatibility(
            architecture: machine, pageSize: UInt32(sysconf(Int32(_SC_PAGESIZE))), hypervisor: hypervisor,
            availableMemory: hugePages ? (pool ?? 0) * HugePagePool.pageSize : Self.memAvailable(), hugePages: hugePages)
        host.hasHugePagePool = !hugePages || pool != nil
        return host
    }

    public init(architecture: String, pageSize: UInt32, hypervisor: String, availableMemory: UInt64, hugePages: Bool = false) {
        self.architecture = architecture
        self.pageSize = pageSize
        self.hypervisor = hypervisor
        self.availableMemory = availableMemory
        self.hugePages = hugePages
    }

    /// Refuses, as `this host cannot run VM 'NAME': why`, a machine this host cannot run, `name` being what it is
    /// received as. The same words as the hypervisor side's refusals.
    public func check(_ begin: StreamBegin, as name: String) throws {
        let source = begin.host
        func refuse(_ why: String) -> MigrationError {
            MigrationError("this host cannot run VM \(UntrustedText.quote(name)): \(why)")
        }
        guard source.architecture == architecture else {
            throw refuse("the stream is for \(UntrustedText.quote(source.architecture)), this host is \(architecture)")
        }
        guard source.pageSize == pageSize else {
            throw refuse("the stream has \(source.pageSize)-byte pages, this host \(pageSize)-byte pages")
        }
        guard source.hypervisor == hypervisor else {
            throw refuse("the stream comes from \(UntrustedText.quote(source.hypervisor)), this host runs \(hypervisor)")
        }
        let needed = begin.machine.memorySize
        if hugePages {
            guard HugePagePool.holds(wholePages: needed) else {
                throw refuse("its memory (\(ByteSize.format(needed))) is not a whole number of 2 MiB huge pages")
            }
            guard hasHugePagePool else { throw refuse("--hugepages: this host has no pool of 2 MiB pages") }
            guard needed <= availableMemory else {
                throw refuse(
                    "not enough huge pages: the VM has \(ByteSize.format(needed)), this host's pool of 2 MiB pages has "
                        + "\(ByteSize.format(availableMemory)) available (\(HugePagePool.howToGrow))")
            }
            return
        }
        guard needed <= availableMemory else {
            throw refuse(
                "not enough memory: the VM has \(ByteSize.format(needed)), this host has \(ByteSize.format(availableMemory)) available"
            )
        }
    }

    static func memAvailable() -> UInt64 {
        guard let file = fopen("/proc/meminfo", "r") else { return UInt64.max }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix("MemAvailable:") {
                let digits = text.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
                return (digits ?? 0) * 1024
            }
        }
        return UInt64.max
    }
}
