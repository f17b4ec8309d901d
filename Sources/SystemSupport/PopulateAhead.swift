import CLinux
import Glibc

/// Faults in the huge pages of a memory file ahead of its writer, on a thread of its own.
///
/// On hugetlbfs the first touch of a page zeroes all 2 MiB of it. A receiver that leaves that to its own stores
/// zeroes and copies on one core while the other waits for the pipe; told which pages a round lists before their
/// data arrives, this thread zeroes them meanwhile. It only ever faults pages in (MADV_POPULATE_WRITE), never
/// writes data, so it is harmless whichever of the two reaches a page first. Small pages are left alone: on a
/// host that backs fresh memory lazily, faulting ahead on a second core was measured slower, not faster.
public final class PopulateAhead: @unchecked Sendable {
    /// Bytes faulted in per call (16 huge pages, 5-10 ms of zeroing), so that `stop` and `clear` take effect soon.
    static let chunkBytes = 16 * Int(HugePagePool.pageSize)

    private let file: MemoryFile
    private let workers = WorkerThreads()
    private var gate: Gate { workers.gate }
    /// Byte ranges of the mapping still to populate, in the order the writer will reach them; guarded by `gate`.
    private var queue: [Range<Int>] = []
    private var queueStart = 0
    /// The kernel cannot populate (before Linux 5.14): nothing is queued any more.
    private var unsupported = false

    /// Starts the thread for `file`, a writable mapping on huge pages. The thread holds this object (and the
    /// mapping) until `stop`, which its owner calls before it lets go.
    public init(file: MemoryFile) throws(SystemError) {
        precondition(file.hugePages, "populating ahead pays only on huge pages")
        self.file = file
        try workers.start("the thread that populates guest memory ahead") { self.run() }
    }

    /// Queues `pages` of `segment`, widened to whole huge pages; a range next to the last one queued joins it.
    public func add(segment: Int, pages: Range<UInt64>) {
        guard !pages.isEmpty else { return }
        let huge = Int(HugePagePool.pageSize)
        let first = Int(file.segmentOffsets[segment] + pages.lowerBound * UInt64(pageSize))
        let end = Int(file.segmentOffsets[segment] + pages.upperBound * UInt64(pageSize))
        let span = (first / huge * huge)..<min((end + huge - 1) / huge * huge, file.length)
        gate.withLock {
            guard !unsupported else { return }
            if queueStart < queue.count, let last = queue.last, span.lowerBound <= last.upperBound,
                span.upperBound >= last.lowerBound
            {
                queue[queue.count - 1] = min(last.lowerBound, span.lowerBound)..<max(last.upperBound, span.upperBound)
            } else {
                queue.append(span)
            }
            gate.broadcast()
        }
    }

    /// Drops what is queued: the writes it was for are over (the round ended, or the receive did).
    public func clear() {
        gate.withLock {
            queue.removeAll()
            queueStart = 0
        }
    }

    /// Ends the thread and waits for it; the mapping is not touched after this returns. Called once, by the owner;
    /// a second call returns at once.
    public func stop() { workers.stop() }

    private func run() {
        while let chunk = nextChunk() {
            // A kernel before 5.14 knows no MADV_POPULATE_WRITE: the writer then faults the pages itself.
            if madvise(file.base + chunk.lowerBound, chunk.count, CLINUX_MADV_POPULATE_WRITE) != 0 && errno == EINVAL {
                gate.withLock {
                    unsupported = true
                    queue.removeAll()
                    queueStart = 0
                }
                return
            }
        }
    }

    /// The next piece to populate, taken off the queue; nil once stopping.
    private func nextChunk() -> Range<Int>? {
        gate.withLock {
            workers.park { queueStart < queue.count }
            if workers.stopping { return nil }
            let span = queue[queueStart]
            let chunk = span.lowerBound..<min(span.upperBound, span.lowerBound + Self.chunkBytes)
            if chunk.upperBound == span.upperBound {
                queueStart += 1
                if queueStart == queue.count {
                    queue.removeAll(keepingCapacity: true)
                    queueStart = 0
                }
            } else {
                queue[queueStart] = chunk.upperBound..<span.upperBound
            }
            return chunk
        }
    }
}
