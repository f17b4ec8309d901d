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
public final class ReceiveInterruptWatcher: ReceivePhaseObserver, @unchecked Sendable {
    private enum Phase {
        case starting
        /// What undoes everything created so far, saying what it undid; nil when nothing was created.
        case receiving(undo: (() -> [String])?)
        case finished
    }

    /// `@unchecked Sendable`: the phase is only touched with `gate` held. What its undo touches (the incoming machine,
    /// the dry run's check) may also be undone by the receive itself, so undoing is safe to run twice.
    private let gate = Gate()
    private var phase = Phase.starting
    private let machineName: String
    /// Stream bytes read so far, for the message.
    private let bytesRead = Atomic<UInt64>(0)

    /// Blocks the signals now; call before any other thread starts. SIGUSR1 raises `progressRequest`.
    public init(machineName: String, progressRequest: ProgressRequest) {
        self.machineName = machineName
        StopSignals.watch(progressRequest: progressRequest) { [self] name in stop(name) }
    }

    public func creating<Made>(_ make: () throws -> Made, undo: @escaping (Made) -> String) throws -> Made {
        try gate.withLock {
            let made = try make()
            let earlier: (() -> [String])? = if case .receiving(let undo) = phase { undo } else { nil }
            phase = .receiving(undo: { [undo(made)] + (earlier?() ?? []) })
            return made
        }
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

    private func stop(_ name: String) {
        gate.withLock {
            switch phase {
            case .starting:
                report("\(name) before anything was created")
            case .receiving(nil):
                report("\(name)\(position()); nothing was created")
            case .receiving(let undo?):
                report("\(name)\(position()); \(undo().joined(separator: ", "))")
            case .finished:
                // Restored and resumed already: the receive completes as if the signal had not come.
                return
            }
            exit(1)
        }
    }

    private func report(_ message: String) {
        StandardError.line("vmrecv: \(message)")
    }
}
