import Synchronization
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Where a send stands, as seen from the thread that handles interrupts.
public enum SendPhase: Sendable {
    /// The source runs: an interrupt only stops the send.
    case sourceRunning
    /// The source was paused before the send, which leaves it so: an interrupt only stops the send.
    case sourceLeftPaused
    /// The sender paused the source: an interrupt must resume it.
    case sourcePaused
    /// END is being written or was written: the copy may already run, so the source stays paused.
    case committed
    /// The source keeps a resumable stream (`vmsend -s`, `-t`): it stays paused for a continuation.
    case resumable
    /// The source keeps running while a resumable live stream is sent: an interrupt stops the send, and the source
    /// keeps logging what the guest writes, for a continuation.
    case resumableRunning
}

/// Turns SIGINT, SIGTERM and SIGHUP into a clean stop: a source the sender paused is resumed, over a
/// connection of its own (the main thread may be blocked in a write), before the process exits 1.
/// SIGUSR1 asks for a progress line.
///
/// The phase lock makes "resume" and "commit" mutually exclusive.
public final class InterruptWatcher: Sendable {
    private let phase = Mutex(SendPhase.sourceRunning)
    /// Hands a live stream's journal to the source, so that the stream can be continued after an interrupt.
    private let journalKeeper = Mutex<(@Sendable (MigrationSource) throws -> Void)?>(nil)
    private let reconnect: @Sendable () throws -> MigrationSource
    private let machineName: String

    /// Blocks the signals now; call before any other thread starts.
    public init(
        machineName: String, progressRequest: ProgressRequest,
        reconnect: @escaping @Sendable () throws -> MigrationSource
    ) {
        self.machineName = machineName
        self.reconnect = reconnect
        StopSignals.watch(progressRequest: progressRequest) { [self] name in stop(name) }
    }

    /// Set by a live resumable send: called on an interrupt, with a connection of its own, before the process exits.
    public func keepJournal(_ keep: @escaping @Sendable (MigrationSource) throws -> Void) {
        journalKeeper.withLock { $0 = keep }
    }

    /// Moves the send to `next`; the watcher sees either the old or the new phase, never half of it.
    public func enter(_ next: SendPhase) {
        phase.withLock { $0 = next }
    }

    /// Takes a step that moves the send to `next` (pausing the source, committing END) with interrupts held off:
    /// the watcher sees the phase before the step or after it, never a resume racing ahead of the pause it should
    /// undo, nor a commit it does not know of.
    public func entering(_ next: SendPhase, _ step: () throws -> Void) throws {
        try phase.withLock { (current: inout SendPhase) throws -> Void in
            try step()
            current = next
        }
    }

    private func stop(_ name: String) {
        phase.withLock { current in
            switch current {
            case .sourceRunning:
                report("\(name); the source VM '\(machineName)' keeps running")
            case .sourceLeftPaused:
                report("\(name); the source VM '\(machineName)' stays paused, as it was before the send")
            case .sourcePaused:
                do {
                    try reconnect().resume()
                    report("\(name); the source VM '\(machineName)' was resumed")
                } catch {
                    report("\(name); resuming the source VM '\(machineName)' failed: \(error)")
                }
            case .resumableRunning:
                if let problem = keepJournal() {
                    report("\(name); the source VM '\(machineName)' keeps running, but \(problem)")
                } else {
                    report(
                        "\(name); the source VM '\(machineName)' keeps running, its writes logged, so that the stream can be "
                            + "continued (vmsend -t, within the resume window)")
                }
            case .resumable:
                if let problem = keepJournal() {
                    // Without a journal the source drops the stream, and resumes the machine its send paused.
                    report("\(name); \(problem), so the source VM '\(machineName)' resumes")
                    exit(1)
                }
                report(
                    "\(name); the source VM '\(machineName)' stays paused so that the stream can be continued "
                        + "(vmsend -t, within the resume window)")
            case .committed:
                report(
                    "\(name) after the stream was complete; the source VM '\(machineName)' stays paused, since its copy may run: "
                        + "check the destination before 'vmctl resume --force \(machineName)'")
            }
            exit(1)
        }
    }

    /// Hands over the journal, if the send keeps one; says what went wrong, or nil.
    private func keepJournal() -> String? {
        guard let keep = journalKeeper.withLock({ $0 }) else { return nil }
        do {
            try keep(reconnect())
            return nil
        } catch {
            return "its journal could not be kept (\(error)): the stream cannot be continued"
        }
    }

    /// One line on stderr; on a terminal the progress line being drawn is cleared first, so the message starts a
    /// line of its own.
    private func report(_ message: String) {
        StandardError.line("vmsend: \(message)")
    }
}
