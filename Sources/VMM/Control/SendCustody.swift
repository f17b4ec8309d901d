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
    /// A resumable send's terms, kept while the send runs and for a window after it broke.
    private(set) var resume: ResumeHold?
    /// How the last kept terms ended, so that a token for them is refused saying why.
    private var resumeEnded: (stream: String, reason: String)?

    /// What a resumable send keeps for `vmsend -t`.
    struct ResumeHold {
        var terms: ResumeTerms
        /// Sends of the stream started: 1, plus one per continuation.
        var attempts: UInt32 = 1
        /// A send of the stream paused the machine: it is resumed when the terms expire.
        var pausedBySend = false
        /// When the terms go, ns since the epoch; nil while a send of the stream runs.
        var expires: UInt64?
        /// The last send wrote END: the machine is migrated, and only a forced continuation goes on.
        var completed = false
    }

    init(name: String) { self.name = name }

    /// The machine's status as clients see it: `migrated` where the machine is paused after a complete send,
    /// and the records that explain a paused machine.
    func overlay(_ status: MachineStatus) -> MachineStatus {
        var shown = status
        if status.state == .paused, migration != nil { shown.state = .migrated }
        shown.send = send
        shown.migration = migration
        shown.resumable = resume.map {
            ResumableSend(
                stream: $0.terms.stream, attempts: $0.attempts, windowSeconds: $0.terms.windowSeconds, expires: $0.expires,
                completed: $0.completed)
        }
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
        if !force, let resume {
            throw ControlError(
                "VM '\(name)' keeps stream \(resume.terms.stream) for a continuation (vmsend -t): a new send would drop it; "
                    + "use --force to start over")
        }
        if !force, let reason = secondCopyRisk(state: state) {
            throw ControlError(
                "VM '\(name)' \(reason): sending it again could start a second copy; if that copy is gone, use --force")
        }
        send = SendRecord(stream: stream, sender: client, started: HostClock.realtimeNanoseconds())
        senderConnection = connection
        // A new stream replaces what was kept for continuing another one.
        if let resume { drop(resume, "was dropped when a new send of the VM started") }
    }

    /// The send in progress may be continued should it break: its terms are kept.
    mutating func makeResumable(_ terms: ResumeTerms, connection: Int) throws {
        guard connection == senderConnection, let send, send.stream == terms.stream else { throw notSender("sendResumable") }
        guard terms.windowSeconds > 0, terms.windowSeconds <= 7 * 86400, terms.uuid.count == 16 else {
            throw ControlError("sendResumable: a resume window of \(terms.windowSeconds) s or a bad stream identity")
        }
        resume = ResumeHold(terms: terms)
    }

    /// A send that continues `stream` from a token of its send `attempt`. Returns the kept terms and this send's number.
    mutating func continueSend(
        stream: String, attempt: UInt32, force: Bool, connection: Int, client: String, state: RunState
    ) throws -> (ResumeTerms, UInt32) {
        switch state {
        case .crashed: throw ControlError("VM '\(name)' has crashed: there is nothing to send; destroy it")
        case .incoming: throw ControlError("VM '\(name)' is incoming: it has no state to send yet")
        default: break
        }
        guard var hold = resume, hold.terms.stream == stream else {
            if let resumeEnded, resumeEnded.stream == stream {
                throw ControlError("the token is for stream \(stream), whose resume state \(resumeEnded.reason)")
            }
            if let migration, migration.stream == stream {
                throw ControlError("the token was used: stream \(stream) is complete (\(migration.summary))")
            }
            if let resume {
                throw ControlError(
                    "the token is for stream \(stream), but VM '\(name)' keeps resume state for stream \(resume.terms.stream)")
            }
            throw ControlError("stale token: VM '\(name)' keeps no resume state for stream \(stream)")
        }
        if let send, !send.senderGone { throw ControlError("VM '\(name)' is being sent already (\(send.summary))") }
        // A writer cannot tell whether END reached its reader: a stream that went out whole is continued only when
        // the user says its receiver kept a partial receive, since otherwise its copy may run.
        if hold.completed && !force {
            throw ControlError(
                "the token was used: stream \(stream) went out whole and VM '\(name)' is migrated; if its receiver "
                    + "still holds a partial receive (vmrecv -s printed this token), continue with --force")
        }
        guard attempt <= hold.attempts else {
            throw ControlError("the token names send \(attempt) of stream \(stream), which never started here")
        }
        if attempt < hold.attempts && !force {
            throw ControlError(
                "stale token: send \(hold.attempts) of stream \(stream) started since, from a later token; use the token "
                    + "vmrecv printed last (--force if that send never reached the receiver)")
        }
        hold.attempts += 1
        hold.expires = nil
        hold.completed = false
        resume = hold
        send = SendRecord(
            stream: stream, sender: client, started: HostClock.realtimeNanoseconds(), pausedBySender: hold.pausedBySend)
        senderConnection = connection
        return (hold.terms, hold.attempts)
    }

    /// A send of the kept stream ended before it was complete: the terms are kept for the window, from now.
    private mutating func hold(after record: SendRecord, state: RunState) -> String? {
        guard var hold = resume, hold.terms.stream == record.stream else { return nil }
        hold.pausedBySend = hold.pausedBySend || record.pausedBySender
        let expires = HostClock.realtimeNanoseconds() + UInt64(hold.terms.windowSeconds * 1e9)
        hold.expires = expires
        resume = hold
        let kept = state == .paused ? "stays paused" : "keeps running with its writes logged"
        return "send \(hold.attempts) of stream \(record.stream) broke off; the VM \(kept) for vmsend -t until "
            + UTCTime.format(expires)
    }

    /// The kept terms of a live stream can no longer be continued (its sender left no journal of what it sent).
    mutating func dropResume(_ reason: String) {
        if let resume { drop(resume, reason) }
    }

    /// The kept terms go, and why; the reason words a later refusal.
    private mutating func drop(_ hold: ResumeHold, _ reason: String) {
        resumeEnded = (hold.terms.stream, reason)
        resume = nil
    }

    /// Drops terms whose window has passed. Returns whether to resume the machine (a send of the stream paused it, and
    /// no complete stream left it) and the line for the log.
    mutating func expireResume(state: RunState) -> (resume: Bool, log: String)? {
        guard let hold = resume, let expires = hold.expires, HostClock.realtimeNanoseconds() >= expires else { return nil }
        drop(
            hold,
            hold.completed
                ? "was used: the stream went out whole, and its resume window passed at \(UTCTime.format(expires))"
                : "expired at \(UTCTime.format(expires)) (resume window \(Int(hold.terms.windowSeconds.rounded())) s)")
        let resume = hold.pausedBySend && state == .paused && migration == nil && send == nil
        return (
            resume,
            "the resume window of stream \(hold.terms.stream) passed"
                + (resume ? ": no copy can run, so the VM was resumed" : "; the VM stays as it is")
        )
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
    mutating func finish(
        connection: Int, migrated: Bool, destination: String?, delivered: Bool = true, state: RunState
    ) throws -> String {
        guard connection == senderConnection, let finished = send else { throw notSender("sendFinish") }
        send = nil
        senderConnection = nil
        guard migrated else {
            let ended = "send of stream \(finished.stream) by \(UntrustedText.escape(finished.sender)) ended"
            // A continuation that wrote nothing is not a send of the stream: the token it came with stays good.
            if !delivered, var held = resume, held.terms.stream == finished.stream, held.attempts > 1 {
                held.attempts -= 1
                resume = held
            }
            return hold(after: finished, state: state).map { ended + "; " + $0 } ?? ended
        }
        if var resume, resume.terms.stream == finished.stream {
            // Kept for the window all the same: the last bytes may have been lost behind the sender's back.
            resume.completed = true
            resume.expires = HostClock.realtimeNanoseconds() + UInt64(resume.terms.windowSeconds * 1e9)
            self.resume = resume
        }
        let record = MigrationRecord(
            stream: finished.stream, completed: HostClock.realtimeNanoseconds(), destination: destination)
        migration = record
        return "migrated (\(record.summary)); it stays paused so that it never runs beside its copy"
    }

    /// Refuses `request` (saving the state, starting dirty logging: what a stream is made of) on a machine whose copy
    /// may run elsewhere, unless asked by the connection whose send custody accepted (`--force` included). A client
    /// that skips custody, such as one of control protocol 1, cannot make a second copy this way.
    func checkStreamRead(_ request: String, connection: Int, state: RunState) throws {
        guard connection != senderConnection, let reason = secondCopyRisk(state: state) else { return }
        throw ControlError(
            "VM '\(name)' \(reason): \(request) is refused outside a send of it (vmsend, which asks for --force if that "
                + "copy is gone)")
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
        if let resume { drop(resume, "was dropped when the VM was resumed") }
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
        if !record.committed, state == .paused || state == .running, let line = hold(after: record, state: state) {
            send = nil
            return (false, "\(who) went away; \(line)")
        }
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
