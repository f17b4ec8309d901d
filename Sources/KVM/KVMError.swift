import CKVM
import Glibc
import Synchronization
import SystemPackage
import SystemSupport

/// A failed KVM call: the ioctl's name and the errno, e.g. `KVM_SET_SREGS: Invalid argument`.
public struct KVMError: Error, CustomStringConvertible, Sendable {
    /// The call that failed, e.g. `KVM_SET_SREGS`.
    public var call: String
    public var errno: Errno?
    /// What went wrong when it is not (only) an errno, e.g. which MSR was refused.
    public var detail: String?

    public init(call: String, errno: Errno? = nil, detail: String? = nil) {
        self.call = call
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var text = call
        if let detail { text += ": " + detail }
        if let errno { text += ": " + errno.description }
        return text
    }
}

/// Runs a system call that returns -1 and sets errno on failure; retries EINTR unless told not to.
@discardableResult
func kvmCall(_ name: String, retryOnInterrupt: Bool = true, _ body: () -> Int32) throws(KVMError) -> Int32 {
    let result = retryOnInterrupt ? retryingInterrupts(body) : body()
    if result >= 0 { return result }
    throw KVMError(call: name, errno: Errno(rawValue: Glibc.errno))
}

/// A file descriptor closed exactly once, by `close()` or at deinit.
final class OwnedDescriptor: Sendable {
    private let storage: Atomic<Int32>

    init(_ fd: Int32) { storage = Atomic(fd) }
    deinit { close() }

    /// The descriptor, or -1 once closed (ioctls then fail with EBADF rather than hit a reused number).
    var value: Int32 { storage.load(ordering: .acquiring) }

    func close() {
        let fd = storage.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { _ = Glibc.close(fd) }
    }
}
