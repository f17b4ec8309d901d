#if canImport(Glibc)
    import Glibc
#endif

/// A migration failure, worded as the one line a user sees after the tool's name.
public struct MigrationError: Error, CustomStringConvertible, Sendable {
    public let description: String

    public init(_ message: String) { description = message }

    /// A failed system call: `what: strerror(errno)`.
    public init(_ what: String, errno code: Int32) {
        description = "\(what): \(String(cString: strerror(code)))"
    }
}
