import Glibc
import SystemPackage

/// A failed system call, with what it was doing and on what: `pwrite of guest memory: No space left on device`,
/// `cannot open /dev/kvm: Permission denied`. The one place that turns errno into a line a user reads.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What was being done, e.g. `pwrite of guest memory` or `cannot open`.
    public var operation: String
    /// The file it was done to, when there is one.
    public var path: String?
    public var errno: Errno

    public init(_ operation: String, path: String? = nil, errno: Errno) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    /// The error of the call that just failed (reads `errno`).
    public static func last(_ operation: String, path: String? = nil) -> SystemError {
        SystemError(operation, path: path, errno: Errno(rawValue: Glibc.errno))
    }

    public var description: String {
        if let path { return "\(operation) \(path): \(errno)" }
        return "\(operation): \(errno)"
    }
}

/// Runs a system call until a signal no longer interrupts it (EINTR) and returns its result; errno is left as the
/// call set it. For calls whose failures the caller sorts out itself (poll timeouts, EAGAIN, ECONNREFUSED).
@inlinable
public func retryingInterrupts<T: FixedWidthInteger>(_ body: () -> T) -> T {
    while true {
        let result = body()
        if result >= 0 || Glibc.errno != EINTR { return result }
    }
}

/// Runs a system call that returns -1 and sets errno on failure, retrying EINTR; a failure is thrown as a
/// `SystemError` naming `operation` (and `path`).
@inlinable
@discardableResult
public func systemCall<T: FixedWidthInteger>(_ operation: String, path: String? = nil, _ body: () -> T) throws(SystemError) -> T {
    let result = retryingInterrupts(body)
    if result < 0 { throw SystemError.last(operation, path: path) }
    return result
}
