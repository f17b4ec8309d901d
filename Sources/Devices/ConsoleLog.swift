import Glibc
import Synchronization
import SystemPackage
import SystemSupport

/// The machine's console log: serial output and the VMM's own notes, appended to one file. Whoever wants the
/// guest's lines as they come (a heartbeat parser) gets each whole one.
public final class ConsoleLog: Sendable {
    private let file: FileDescriptor
    private let lineObserver: (@Sendable (String) -> Void)?
    /// The part of the last line that has no newline yet.
    private let partial = Mutex<[UInt8]>([])
    static let longestLine = 4096

    /// Opens `path` afresh (mode 0600): a new machine never shows an old one's lines.
    public init(path: String, onLine: (@Sendable (String) -> Void)? = nil) throws(SystemError) {
        let fd = try systemCall("cannot open the console log", path: path) {
            Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        }
        file = FileDescriptor(rawValue: fd)
        lineObserver = onLine
    }

    deinit { try? file.close() }

    /// Appends bytes; a full disk must not stop the guest, so what cannot be written is dropped.
    public func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        try? file.writeFully(bytes, what: "console log")
        guard let lineObserver else { return }
        let lines: [String] = partial.withLock { partial in
            partial += bytes
            var lines: [String] = []
            while let newline = partial.firstIndex(of: 10) {
                lines.append(String(decoding: partial[..<newline].filter { $0 != 13 }, as: UTF8.self))
                partial.removeSubrange(...newline)
            }
            if partial.count > Self.longestLine { partial.removeAll() }
            return lines
        }
        for line in lines { lineObserver(line) }
    }

    /// Appends a line of the VMM's own: `vmrun: TEXT`.
    public func note(_ text: String) { append(Array("vmrun: \(text)\n".utf8)) }
}
