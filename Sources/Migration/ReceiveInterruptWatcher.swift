import Synchronization
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Turns SIGINT, SIGTERM and SIGHUP during a receive into a clean stop: the incoming machine is destroyed (and its
/// vmrun waited for), the reason is one line on stderr, and the process exits 1. Once the machine is being
/// restored and resumed an interrupt waits for that to end, and then comes too late to undo it: the receive
/// finishes as if it had not come.
///
/// The signals are blocked in every thread and taken by `sigwait` on a thread of its own (as `InterruptWatcher`).
public final class ReceiveInterruptWatcher: ReceivePhaseObserver, @unchecked Sendable {
    private enum Phase {
        case starting
        case receiving(MigrationDestination?)
        case finished
    }

    /// `@unchecked Sendable`: the phase, and the destination in it, are only touched with `gate` held.
    private let gate = Gate()
    private var phase = Phase.starting
    private let machineName: String
    /// Stream bytes read so far, for the message.
    private let bytesRead = Atomic<UInt64>(0)

    /// Blocks the signals now; call before any other thread starts.
    public init(machineName: String) {
        self.machineName = machineName
        var signals = Self.watchedSignals
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(
            &thread, nil,
            { argument in
                let watcher = Unmanaged<ReceiveInterruptWatcher>.fromOpaque(argument!).takeRetainedValue()
                watcher.watch()
                return nil
            }, box)
        pthread_detach(thread)
    }

    public func receiving(_ destination: MigrationDestination?) {
        gate.withLock { phase = .receiving(destination) }
    }

    public func streamPosition(_ bytes: UInt64) { bytesRead.store(bytes, ordering: .relaxed) }

    private func position() -> String {
        let bytes = bytesRead.load(ordering: .relaxed)
        return bytes == 0 ? "" : " at byte \(bytes) of the stream"
    }

    public func finishing(_ work: () throws -> Void) throws {
        try gate.withLock {
            defer { phase = .finished }
            try work()
        }
    }

    private static var watchedSignals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGHUP)
        return set
    }

    private func watch() {
        var signals = Self.watchedSignals
        var received: Int32 = 0
        while sigwait(&signals, &received) != 0 {}
        let name = received == SIGINT ? "interrupted" : received == SIGTERM ? "terminated" : "hung up"
        gate.withLock {
            switch phase {
            case .starting:
                report("\(name) before anything was created")
            case .receiving(nil):
                report("\(name)\(position()); nothing was created")
            case .receiving(let destination?):
                destination.abandon()
                report("\(name)\(position()); the incoming VM '\(machineName)' was destroyed")
            case .finished:
                // Restored and resumed already: the receive completes as if the signal had not come.
                return
            }
            exit(1)
        }
    }

    private func report(_ message: String) {
        let line = Array("vmrecv: \(message)\n".utf8)
        line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    }
}
