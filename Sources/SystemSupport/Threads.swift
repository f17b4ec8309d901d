import Glibc

/// A mutex with a condition variable on CLOCK_MONOTONIC, for threads that park and wake (vCPUs, device
/// workers). `Synchronization.Mutex` has no condition variable; this wraps pthreads.
public final class Gate: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }
    /// Waits with the lock held; returns after a broadcast or a spurious wake-up.
    public func wait() { pthread_cond_wait(condition, mutex) }
    public func broadcast() { pthread_cond_broadcast(condition) }

    /// Waits with the lock held for at most `nanoseconds`.
    public func wait(nanoseconds: UInt64) {
        let deadline = HostClock.monotonicNanoseconds() + nanoseconds
        var until = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &until)
    }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// Starts a joinable pthread running `body`; `what` names it in the error.
public func startThread(_ what: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) -> pthread_t {
    final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }
    let context = Unmanaged.passRetained(Body(body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(
        &thread, nil,
        { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
    guard result == 0 else {
        Unmanaged<Body>.fromOpaque(context).release()
        throw SystemError("cannot start \(what)", errno: .init(rawValue: result))
    }
    return thread
}

/// The threads of a background worker (pages stored behind a reader, populated ahead of it, images written back):
/// they park on `gate` until their owner has work for them, and `stop` wakes and joins them. The owner guards its
/// own state with the same `gate`.
public final class WorkerThreads: @unchecked Sendable {
    public let gate = Gate()
    /// Set by `stop`; read with `gate` held.
    public private(set) var stopping = false
    private var threads: [pthread_t] = []  // guarded by `gate`

    public init() {}

    /// Starts `count` threads running `body`; should one fail to start, stops those that did.
    public func start(_ what: String, count: Int = 1, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        do {
            for _ in 0..<count {
                let thread = try startThread(what, body)
                gate.withLock { threads.append(thread) }
            }
        } catch {
            stop()
            throw error
        }
    }

    /// With `gate` held: waits until `hasWork` or `stop`.
    public func park(until hasWork: () -> Bool) {
        while !stopping && !hasWork() { gate.wait() }
    }

    /// Wakes the threads, lets each finish what its owner lets it finish once `stopping` is set, and waits for them.
    /// Idempotent.
    public func stop() {
        let running: [pthread_t] = gate.withLock {
            stopping = true
            gate.broadcast()
            defer { threads = [] }
            return threads
        }
        for thread in running { pthread_join(thread, nil) }
    }
}
