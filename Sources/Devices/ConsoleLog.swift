import Glibc
import SystemPackage
import SystemSupport

/// The machine's console log: serial output and the VMM's own notes, appended to one file.
public final class ConsoleLog: Sendable {
    private let file: FileDescriptor

    /// Opens `path` for appending, creating it (mode 0600).
    public init(path: String) throws(SystemError) {
        let fd = try systemCall("cannot open the console log", path: path) {
            Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        }
        file = FileDescriptor(rawValue: fd)
    }

    deinit { try? file.close() }

    /// Appends bytes; a full disk must not stop the guest, so what cannot be written is dropped.
    public func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        try? file.writeFully(bytes, what: "console log")
    }

    /// Appends a line of the VMM's own: `vmrun: TEXT`.
    public func note(_ text: String) { append(Array("vmrun: \(text)\n".utf8)) }
}
