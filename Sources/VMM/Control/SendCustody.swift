import MachineDescription
import SystemSupport
import VMControl

/// What the control server knows about sends of its machine, so that exactly one copy runs whatever clients do:
/// the send in progress (who, which stream, whether it paused the machine, whether END may be out), and the
/// send that made the machine `migrated`. Lives on the serving thread.
struct SendCustody {
    let name: String
    private(set) var send: SendRecord?
    private(set) var senderConnection: Int?
    private(set) var migration: MigrationRecord?

    init(name: String) { self.name = name }

    /// The machine's status as clients see it: `migrated` where the machine is paused after a complete send,
    /// and the records that explain a paused machine.
    func overlay(_ status: MachineStatus) -> MachineStatus {
        var shown = status
        if status.state == .paused, migration != nil { shown.state = .migrated }
        shown.send = send
        shown.migration = migration
        return shown
    }

    /// A connection starts a send. Refuses a second sender, a crashed or incoming machine, and without `force` one
    /// that was migrated or whose last send may have left a running copy.
    mutating func start(stream: String, force: Bool, connection: Int, client: String, state: RunState) throws {
        switch state {
        case .crashed: throw ControlError("VM '\(name)' has crashed: there is nothing to send; destroy it")
        case .incoming: throw ControlError("VM '\(name)' is incoming: it has no state to send yet")
        default: break
        }
        if let send, !send.senderGone {
            throw ControlError("VM '\(name)' is being sent already (\(send.summary))")
        }
        if !force, let reason = secondCopyRisk(state: state) {
            throw ControlError(
                "VM '\(name)' \(reason): sending it again could start a second copy; if that copy is gone, use --force")
        }
        send = SendRecord(stream: stream, sender: client, started: HostClock.realtimeNanoseconds())
        senderConnection = connection
    }

    /// A pause by the sender is the send's: should the sender go away, vmrun knows whose pause it was.
    mutating func paused(by connection: Int) -> String? {
        guard connection == senderConnection, send?.pausedBySender == false else { return nil }
        send?.pausedBySender = true
        return send.map { "\($0.summary)" }
    }

    /// The sender is about to write END.
    mutating func commit(connection: Int) throws {
        guard connection == senderConnection, send != nil else { throw notSender("sendCommit") }
        send?.committed = true
    }

    /// The sender says how its send ended; returns the line for the machine's log.
    mutating func finish(connection: Int, migrated: Bool, destination: String?) throws -> String {
        guard connection == senderConnection, let finished = send else { throw notSender("sendFinish") }
        send = nil
        senderConnection = nil
        guard migrated else { return "send of stream \(finished.stream) by \(UntrustedText.escape(finished.sender)) ended" }
        let record = MigrationRecord(
            stream: finished.stream, completed: HostClock.realtimeNanoseconds(), destination: destination)
        migration = record
        return "migrated (\(record.summary)); it stays paused so that it never runs beside its copy"
    }

    /// Refuses a resume that could run a second copy, unless forced or asked by the sender undoing its own pause; a
    /// crashed machine never resumes.
    func checkResume(force: Bool, connection: Int, state: RunState, failure: String?) throws {
        if state == .crashed {
            let reason = UntrustedText.escape(failure ?? "no reason recorded")
            throw ControlError("VM '\(name)' has crashed (\(reason)): it cannot run again; destroy it")
        }
        guard !force, connection != senderConnection, let reason = secondCopyRisk(state: state) else { return }
        let advice =
            send.map { !$0.senderGone && !$0.committed } == true
            ? "interrupt the sender instead, which resumes it" : "if that copy never started, use vmctl resume --force"
        throw ControlError("VM '\(name)' \(reason): resuming it could run a second copy; \(advice)")
    }

    /// The machine runs again (a forced resume): it is no longer migrated, and a gone sender's record is history.
    mutating func resumed() {
        migration = nil
        if send?.senderGone == true { send = nil }
        if send != nil { send?.pausedBySender = false }
    }

    /// The sender's connection closed before `sendFinish`. Returns whether to resume the machine (the sender paused
    /// it and END was not committed, so no copy can run) and the line for the machine's log.
    mutating func senderLeft(connection: Int, state: RunState) -> (resume: Bool, log: String)? {
        guard connection == senderConnection, var record = send else { return nil }
        senderConnection = nil
        record.senderGone = true
        let who = "\(UntrustedText.escape(record.sender)) (stream \(record.stream))"
        if state != .paused || (!record.committed && !record.pausedBySender) {
            send = nil
            return (false, "\(who) went away before finishing its send; the VM stays \(state.rawValue) as it was")
        }
        if !record.committed {
            send = nil
            return (true, "\(who) went away before its stream was complete: no copy can run, so the VM was resumed")
        }
        send = record
        return (false, record.summary)
    }

    /// Why a second copy may run somewhere, or nil.
    private func secondCopyRisk(state: RunState) -> String? {
        if let migration, state == .paused || state == .migrated { return "was migrated (\(migration.summary))" }
        guard let send, state == .paused else { return nil }
        if send.senderGone && send.committed { return "is \(send.summary)" }
        if !send.senderGone && send.pausedBySender { return "is \(send.summary)" }
        return nil
    }

    private func notSender(_ request: String) -> ControlError {
        ControlError("\(request) comes only from the connection that started the send (sendStart)")
    }
}
