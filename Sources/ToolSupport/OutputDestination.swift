import Glibc
import SystemPackage
import SystemSupport

/// Where standard output goes, as far as this process can tell: for the source's record of a migration (`vmctl
/// status` shows it), so that whoever finds a migrated machine knows where to look for its copy.
public enum OutputDestination {
    /// `file /srv/demo.vms`, `pipe to ssh dst vmrecv demo`, `tcp 10.0.0.2:7000`; nil when nothing can be told.
    public static func describe() -> String? {
        guard let link = readLink("/proc/self/fd/1") else { return nil }
        if link.hasPrefix("/") { return "file " + link }
        if link.hasPrefix("pipe:") { return pipeReaders(link).map { "pipe to " + $0 } }
        if link.hasPrefix("socket:") { return peerAddress() }
        return nil
    }

    /// The command lines of the other processes holding the same pipe open, the reader first.
    private static func pipeReaders(_ link: String) -> String? {
        guard let proc = opendir("/proc") else { return nil }
        defer { closedir(proc) }
        var readers: [String] = []
        while let entry = readdir(proc), readers.count < 4 {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = Int32(name), pid != getpid() else { continue }
            // Standard input is how a reader takes a pipe (`| ssh dst vmrecv`); other descriptors are not looked at.
            guard readLink("/proc/\(pid)/fd/0") == link, let command = commandLine(pid) else { continue }
            readers.append(command)
        }
        return readers.isEmpty ? nil : readers.sorted().joined(separator: " | ")
    }

    private static func commandLine(_ pid: Int32) -> String? {
        guard let bytes = try? FileDescriptor.readFile("/proc/\(pid)/cmdline", limit: 4096), !bytes.isEmpty else { return nil }
        let words = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        let text = words.joined(separator: " ")
        return text.count > 160 ? String(text.prefix(160)) + "..." : text
    }

    /// `tcp ADDRESS:PORT` of a connected IPv4 or IPv6 socket.
    private static func peerAddress() -> String? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let got = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(1, $0, &length) }
        }
        guard got == 0 else { return nil }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                    var raw = address.pointee.sin_addr
                    guard inet_ntop(AF_INET, &raw, &text, socklen_t(text.count)) != nil else { return nil }
                    return "tcp \(cText(text)):\(UInt16(bigEndian: address.pointee.sin_port))"
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var raw = address.pointee.sin6_addr
                    guard inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count)) != nil else { return nil }
                    return "tcp [\(cText(text))]:\(UInt16(bigEndian: address.pointee.sin6_port))"
                }
            }
        default:
            return "a socket"
        }
    }

    private static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

private func cText(_ chars: [CChar]) -> String {
    String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
