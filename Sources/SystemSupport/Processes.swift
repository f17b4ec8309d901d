import Glibc
import SystemPackage

/// True while `pid` runs; a zombie waiting to be reaped counts as gone.
public func processIsAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 || errno == EPERM else { return false }
    guard let stat = try? FileDescriptor.readFile("/proc/\(pid)/stat", limit: 4096) else { return true }
    let text = String(decoding: stat, as: UTF8.self)
    guard let paren = text.lastIndex(of: ")") else { return true }
    return !text[paren...].hasPrefix(") Z")
}
