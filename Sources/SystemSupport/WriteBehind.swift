import Glibc

/// Stores into a memory file on threads of their own, from a ring of buffers, while the caller goes on reading.
///
/// What a receiver costs on a host that backs fresh memory lazily is its first store into each new page. Made by
/// the reader itself, that store holds up the stream, and the sender waits on a full pipe meanwhile. Here the
/// reader copies each batch into a free buffer (a cache-hot copy) and reads on, while two threads store the
/// buffers into the file, each taking the next: one with pwrite, which fills a new page without zeroing it first
/// but holds the file's lock, the other through the mapping, whose faults take no lock of the file's. Side by side
/// they do not wait on each other as two pwriting threads do. Stores to different pages may land in any order;
/// `drain` is the point after which all of them have.
public final class WriteBehind: @unchecked Sendable {
    /// Bytes per buffer: a stream batch (256 pages) at most; a larger store takes several.
    public static let bufferBytes = 1 << 20
    /// Bytes a thread storing through the mapping leaves mapped before it drops them (RSS grows by at most this).
    static let mappedBytesBeforeDrop: Int64 = 4 << 20

    private struct Store {
        let buffer: Int
        let offset: Int64
        let bytes: Int
    }

    private let file: MemoryFile
    private let buffers: [UnsafeMutableRawPointer]
    private let workers = WorkerThreads()
    private var gate: Gate { workers.gate }
    // Guarded by `gate`:
    private var free: [Int]
    private var queue: [Store] = []
    private var queueStart = 0
    private var underWay = 0
    private var failure: SystemError?

    /// Starts `threads` threads storing into `file` (the first with pwrite, the others through the mapping). They hold this object, and it the file, until `stop`, which
    /// the owner calls before it lets go.
    public init(file: MemoryFile, threads count: Int = 2, buffers bufferCount: Int = 8) throws(SystemError) {
        self.file = file
        buffers = (0..<bufferCount).map { _ in UnsafeMutableRawPointer.allocate(byteCount: Self.bufferBytes, alignment: 4096) }
        free = Array(0..<bufferCount)
        try workers.start("a thread storing guest memory", count: 1) { self.run(throughMapping: false) }
        try workers.start("a thread storing guest memory", count: count - 1) { self.run(throughMapping: true) }
    }

    deinit {
        stop()
        for buffer in buffers { buffer.deallocate() }
    }

    /// Queues `bytes` from `data` to land at byte `offset` of the file, once a buffer is free. Throws the first store
    /// that failed, if one has.
    public func write(offset: Int64, from data: UnsafeRawPointer, bytes: Int) throws(SystemError) {
        var done = 0
        while done < bytes {
            let count = min(bytes - done, Self.bufferBytes)
            var failed: SystemError?
            let buffer: Int? = gate.withLock {
                workers.park { !free.isEmpty || failure != nil }
                precondition(!workers.stopping, "a store after stop")
                failed = failure
                return failed == nil ? free.removeLast() : nil
            }
            guard let buffer else { throw failed! }
            buffers[buffer].copyMemory(from: data + done, byteCount: count)
            gate.withLock {
                queue.append(Store(buffer: buffer, offset: offset + Int64(done), bytes: count))
                underWay += 1
                gate.broadcast()
            }
            done += count
        }
    }

    /// Waits until every store queued has landed; throws the first that failed.
    public func drain() throws(SystemError) {
        let failed: SystemError? = gate.withLock {
            while underWay > 0 { gate.wait() }
            return failure
        }
        if let failed { throw failed }
    }

    /// Ends the threads once the queue is empty, and waits for them. Idempotent.
    public func stop() { workers.stop() }

    private func run(throughMapping: Bool) {
        var mapped: Range<Int64>?  // what this thread has mapped since it last dropped the mapping
        var mappedBytes: Int64 = 0
        defer { if let mapped { file.dropMapping(bytes: mapped) } }
        while let store = next() {
            let bytes = UnsafeRawBufferPointer(start: buffers[store.buffer], count: store.bytes)
            var failed: SystemError?
            do {
                if throughMapping {
                    try file.store(at: store.offset, bytes)
                    let span = store.offset..<store.offset + Int64(store.bytes)
                    mapped = mapped.map { min($0.lowerBound, span.lowerBound)..<max($0.upperBound, span.upperBound) } ?? span
                    mappedBytes += Int64(store.bytes)
                    if mappedBytes >= Self.mappedBytesBeforeDrop, let dropped = mapped {
                        file.dropMapping(bytes: dropped)
                        mapped = nil
                        mappedBytes = 0
                    }
                } else {
                    try file.write(at: store.offset, bytes)
                }
            } catch {
                failed = error
            }
            gate.withLock {
                if failure == nil { failure = failed }
                free.append(store.buffer)
                underWay -= 1
                gate.broadcast()
            }
        }
    }

    /// The next store, taken off the queue; nil once stopping and the queue is empty.
    private func next() -> Store? {
        gate.withLock {
            workers.park { queueStart < queue.count }
            guard queueStart < queue.count else { return nil }
            let store = queue[queueStart]
            queueStart += 1
            if queueStart == queue.count {
                queue.removeAll(keepingCapacity: true)
                queueStart = 0
            }
            return store
        }
    }
}
