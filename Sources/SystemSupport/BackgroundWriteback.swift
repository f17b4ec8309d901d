import Glibc
import SystemPackage

/// Starts writing a file's dirty pages back, on a thread of its own, whenever asked: `sync_file_range` waits for no
/// write to finish, but it can block while the disk's queue is full, and those who ask (a receiver's reader, vmrun's
/// control thread) must not. Requests made while one runs fold into the next.
public final class BackgroundWriteback: @unchecked Sendable {
    private let descriptor: FileDescriptor
    private let workers = WorkerThreads()
    private var asked = false  // guarded by `workers.gate`

    /// The thread holds this object until `stop`, which the owner calls before it closes `descriptor`. Without a
    /// thread (the host refused one) requests do nothing: writing back early is only a head start.
    public init(_ descriptor: FileDescriptor) {
        self.descriptor = descriptor
        try? workers.start("the writeback of an image") { self.run() }
    }

    public func request() {
        workers.gate.withLock {
            asked = true
            workers.gate.broadcast()
        }
    }

    /// Ends the thread after the writeback under way, if one is, and waits for it. Idempotent.
    public func stop() { workers.stop() }

    private func run() {
        while true {
            let go: Bool = workers.gate.withLock {
                workers.park { asked }
                asked = false
                return !workers.stopping
            }
            guard go else { return }
            descriptor.startWriteback()
        }
    }
}
