import Glibc

/// Stores into a memory file on threads of their own, from a ring of buffers, while the caller goes on reading.
///
/// What a receiver costs on a host that backs fresh memory lazily is its first store into each new page. Made by
/// the reader itself, that store holds up the stream, and the sender waits on a full pipe meanwhile. Here the
/// reader reads each batch into a free buffer it borrows (`lend`), or copies it into one, and reads on, while two
/// threads store the buffers into the file, each taking the next: one with pwrite, which fills a new page without
/// zeroing it first but holds the file's lock, the other through the mapping, whose faults take no lock of the
/// file's. Side by side they do not wait on each other as two pwriting threads do. Stores to different pages may
/// land in any order; `drain` is the point after which all of them have.
public final class WriteBehind: @unchecked Sendable {
    /// Bytes per buffer: a stream batch (256 pages) at most; a larger store takes several.
    public static let bufferBytes = 1 << 20
    /// Bytes a thread storing through the mapping stores before it drops the span of them from the mapping: its share
    /// of RSS stays below this and one store (on small pages; shmem on transparent huge pages maps 2 MiB a fault).
    static let mappedBytesBeforeDrop: Int64 = 4 << 20

    private struct Store {
        let buffer: Int
        /// Where in the buffer the bytes start.
        let start: Int
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
    /// Per buffer, stores queued from it that have not landed: it is free again once none are and it is not lent.
    private var storesFrom: [Int]
    /// The buffer lent to the caller to read into, until `giveBack`.
    private var lent: Int?

    /// Starts `threads` threads storing into `file`: the first with pwrite, the others through the mapping. They hold
    /// this object, and it the file, until `stop`, which the owner calls before it lets go.
    public init(file: MemoryFile, threads count: Int = 2, buffers bufferCount: Int = 8) throws(SystemError) {
        precondition(count >= 1 && bufferCount >= 1, "a storer needs a thread and a buffer")
        self.file = file
        buffers = (0..<bufferCount).map { _ in UnsafeMutableRawPointer.allocate(byteCount: Self.bufferBytes, alignment: 4096) }
        free = Array(0..<bufferCount)
        storesFrom = Array(repeating: 0, count: bufferCount)
        try workers.start("a thread storing guest memory", count: 1) { self.run(throughMapping: false) }
        try workers.start("a thread storing guest memory", count: count - 1) { self.run(throughMapping: true) }
    }

    deinit {
        stop()
        for buffer in buffers { buffer.deallocate() }
    }

    /// A free buffer of `bufferBytes` for the caller to read `bytes` into and `write` from, which then queues them
    /// without a copy; waits for one. nil when `bytes` do not fit, or a store has failed (`write` throws it). The
    /// caller writes into it only before its first `write` from it, and gives it back before `drain` or `stop`
    /// (while it is lent, a copying `write` with a single buffer would wait for ever).
    public func lend(bytes: Int) -> UnsafeMutableRawPointer? {
        guard bytes <= Self.bufferBytes else { return nil }
        return gate.withLock {
            precondition(lent == nil, "a buffer is lent already")
            workers.park { !free.isEmpty || failure != nil }
            guard failure == nil, !workers.stopping else { return nil }
            let buffer = free.removeLast()
            lent = buffer
            return buffers[buffer]
        }
    }

    /// The caller is done with the lent buffer: it is free again once what was queued from it has landed.
    public func giveBack() {
        gate.withLock {
            guard let buffer = lent else { return }
            lent = nil
            if storesFrom[buffer] == 0 {
                free.append(buffer)
                gate.broadcast()
            }
        }
    }

    /// Queues `bytes` from `data` to land at byte `offset` of the file: from the lent buffer as they are, else
    /// copied into a free one once there is one. Throws the first store that failed, if one has.
    public func write(offset: Int64, from data: UnsafeRawPointer, bytes: Int) throws(SystemError) {
        if let buffer = gate.withLock({ lent }), data >= UnsafeRawPointer(buffers[buffer]),
            data + bytes <= UnsafeRawPointer(buffers[buffer] + Self.bufferBytes)
        {
            let failed: SystemError? = gate.withLock {
                precondition(!workers.stopping, "a store after stop")
                guard failure == nil else { return failure }
                enqueue(Store(buffer: buffer, start: data - UnsafeRawPointer(buffers[buffer]), offset: offset, bytes: bytes))
                return nil
            }
            if let failed { throw failed }
            return
        }
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
            gate.withLock { enqueue(Store(buffer: buffer, start: 0, offset: offset + Int64(done), bytes: count)) }
            done += count
        }
    }

    /// With `gate` held.
    private func enqueue(_ store: Store) {
        queue.append(store)
        storesFrom[store.buffer] += 1
        underWay += 1
        gate.broadcast()
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
            let bytes = UnsafeRawBufferPointer(start: buffers[store.buffer] + store.start, count: store.bytes)
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
                storesFrom[store.buffer] -= 1
                if storesFrom[store.buffer] == 0 && lent != store.buffer { free.append(store.buffer) }
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
