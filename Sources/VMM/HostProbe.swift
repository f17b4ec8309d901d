import Glibc
import KVM
import MachineDescription

/// What a stream records about the host it came from.
enum HostProbe {
    static func hostSpec(system: KVMSystem) -> HostSpec {
        var name = utsname()
        uname(&name)
        let machine = withUnsafeBytes(of: name.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let cpuinfo = (try? readSmallFile("/proc/cpuinfo")) ?? ""
        func field(_ key: String) -> String {
            for line in cpuinfo.split(separator: "\n") where line.hasPrefix(key) {
                if let colon = line.firstIndex(of: ":") {
                    return line[line.index(after: colon)...].trimmingCharacters()
                }
            }
            return "unknown"
        }
        return HostSpec(architecture: machine, cpuVendor: field("vendor_id"), cpuModel: field("model name"),
                        pageSize: UInt32(sysconf(Int32(_SC_PAGESIZE))), hypervisor: "kvm",
                        hypervisorVersion: "api \(system.apiVersion) (linux \(release))")
    }

    /// Total physical RAM, the ceiling for a machine's memory.
    static var physicalMemory: UInt64 {
        UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Reads a /proc file (size unknown up front), at most 4 MiB.
    static func readSmallFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MachineError("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while bytes.count < 4 << 20 {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            bytes.append(contentsOf: buffer[..<count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
