import Glibc
import KVM
import MachineDescription
import SystemPackage
import SystemSupport

/// What a stream records about the host it came from.
enum HostProbe {
    static func hostSpec(system: KVMSystem) -> HostSpec {
        var name = utsname()
        uname(&name)
        let machine = withUnsafeBytes(of: name.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let cpuinfo =
            (try? FileDescriptor.readFile("/proc/cpuinfo", limit: 4 << 20)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        func field(_ key: String) -> String {
            for line in cpuinfo.split(separator: "\n") where line.hasPrefix(key) {
                if let colon = line.firstIndex(of: ":") {
                    return line[line.index(after: colon)...].trimmingCharacters()
                }
            }
            return "unknown"
        }
        return HostSpec(
            architecture: machine, cpuVendor: field("vendor_id"), cpuModel: field("model name"),
            pageSize: UInt32(sysconf(Int32(_SC_PAGESIZE))), hypervisor: "kvm",
            hypervisorVersion: "api \(system.apiVersion) (linux \(release))")
    }

    /// Whether this host's KVM runs guest ring 0 by emulation (kvm_pvm): the CPU has neither VT-x nor AMD-V.
    static var emulatesRingZero: Bool {
        let cpuinfo =
            (try? FileDescriptor.readFile("/proc/cpuinfo", limit: 4 << 20)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        guard let flags = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return false }
        let words = Set(flags.split(separator: " ").map(String.init))
        return !words.contains("vmx") && !words.contains("svm")
    }

    /// Total physical RAM, the ceiling for a machine's memory.
    static var physicalMemory: UInt64 {
        UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
