import Glibc

/// Writes one line to standard error unbuffered, for the executables' messages.
public func printError(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    var written = 0
    while written < bytes.count {
        let count = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + written, $0.count - written) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { return }
        written += count
    }
}
