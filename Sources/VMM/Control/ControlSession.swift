import Glibc
import MachineDescription
import Synchronization
import SystemSupport
import VMControl

/// One client connection and what it has said so far.
struct Connection {
    let id: Int
    let socket: MessageSocket
    var greeted = false
    /// The protocol version spoken on this connection, from its hello.
    var version = ControlProtocol.version
    /// Who connected, as its hello said (`vmsend pid 4242`), for the machine's log.
    var client = "a client"
}

/// The loop state of one `serve` call; lives on the serving thread only.
struct Session {
    let machine: any ControlledMachine
    let name: String
    let ownerDeadline: ContinuousClock.Instant
    var connections: [Connection] = []
    var nextID = 0
    /// True from creation of an incoming machine until its owner has restored its state.
    var incomingPending: Bool
    var owner: Int?
    /// The connection that started dirty logging; its disconnect stops it.
    var dirtyLogOwner: Int?
    /// The connection whose throttle is in force; its close lifts it.
    var throttleOwner: Int?
    /// Sends of this machine: who sends, whether it is migrated.
    var custody: SendCustody
    /// The machine's console and log, kept under a new name by `destroy(keepLogs: true)`.
    let ownedFiles: [String]
    /// The state saved for a resumable send, given again to its continuations so they make the same stream.
    var resumableState: MachineState?
    /// A live resumable send's journal, handed to the one continuation that follows its break.
    var resumeJournal: [UInt8]?
    /// How the running dirty log is cleared (nil while off); it outlives a live resumable send that broke, for its
    /// continuation (with no owner meanwhile).
    var dirtyLogManualClear: Bool?
    /// A partial receive this incoming machine holds (`vmrecv -s`), and the receiver's checkpoint.
    var partial: (record: PartialReceive, checkpoint: [UInt8])?

    init(machine: any ControlledMachine, name: String, ownerDeadline: ContinuousClock.Instant, ownedFiles: [String] = []) {
        self.machine = machine
        self.name = name
        self.ownerDeadline = ownerDeadline
        self.ownedFiles = ownedFiles
        incomingPending = machine.status().state == .incoming
        custody = SendCustody(name: name)
    }

    /// The machine's status as clients see it (a version 1 client knows neither `migrated` nor `crashed`).
    func status(for connection: Connection) -> MachineStatus {
        var status = custody.overlay(machine.status())
        if connection.version < 2, status.state == .migrated || status.state == .crashed { status.state = .paused }
        status.partial = partial?.record
        return status
    }

    /// What to do with a connection after a request.
    enum Next {
        case keep, drop
        case finish(ControlServer.Outcome)
    }

    mutating func run(listening: Int32, wake: Int32, releaseSocket: () -> Void) -> ControlServer.Outcome {
        while true {
            var fds = [
                pollfd(fd: wake, events: Int16(POLLIN), revents: 0), pollfd(fd: listening, events: Int16(POLLIN), revents: 0),
            ]
            fds += connections.map { pollfd(fd: $0.socket.fd, events: Int16(POLLIN), revents: 0) }
            var timeout: Duration?
            // A partial receive waits for its continuation without a deadline.
            if incomingPending && owner == nil && partial == nil {
                let left = ContinuousClock.now.duration(to: ownerDeadline)
                if left <= .zero { return .ownerNeverCame }
                timeout = left
            }
            expireResumeTerms()
            if let expires = custody.resume?.expires {
                let left = Duration.nanoseconds(Int64(clamping: expires) - Int64(clamping: HostClock.realtimeNanoseconds()))
                timeout = min(timeout ?? left, max(left, .milliseconds(1)))
            }
            let ready = pollDescriptors(&fds, timeout: timeout)
            if ready < 0 { return .stopped }
            if fds[0].revents != 0 { return .stopped }
            if fds[1].revents & Int16(POLLIN) != 0 { accept(listening) }
            let readyIDs = fds.dropFirst(2).enumerated().filter { $0.element.revents != 0 }.map { connections[$0.offset].id }
            for id in readyIDs {
                guard let index = connections.firstIndex(where: { $0.id == id }) else { continue }
                switch handleOne(at: index, releaseSocket: releaseSocket) {
                case .keep: break
                case .drop:
                    if let outcome = drop(id) { return outcome }
                case .finish(let outcome): return outcome
                }
            }
        }
    }

    /// What was kept for continuing a stream goes with its terms: the saved state, a journal, a dirty log no one owns.
    private mutating func releaseResumeHoldings() {
        guard custody.resume == nil else { return }
        resumableState = nil
        resumeJournal = nil
        if dirtyLogOwner == nil, dirtyLogManualClear != nil { stopDirtyLog() }
    }

    private mutating func stopDirtyLog() {
        dirtyLogOwner = nil
        dirtyLogManualClear = nil
        try? machine.dirtyLogStop()
    }

    /// Whether the kept terms are a live stream's: its continuation needs the dirty log and a journal.
    private var keepsLiveStream: Bool { custody.resume?.terms.mode == "live" }

    /// Drops resume terms whose window passed, resuming the machine their send paused.
    private mutating func expireResumeTerms() {
        guard let (resume, line) = custody.expireResume(state: machine.status().state) else { return }
        releaseResumeHoldings()
        if resume {
            do { try machine.resume() } catch {
                EventLog.note(machine: name, "resuming after the resume window failed: \(error)")
            }
        }
        EventLog.note(machine: name, line)
    }

    mutating func closeAll() {
        for connection in connections { connection.socket.close() }
        connections = []
    }

    private mutating func accept(_ listening: Int32) {
        let fd = Glibc.accept(listening, nil, nil)
        guard fd >= 0 else { return }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let socket = MessageSocket(fd: fd)
        socket.setReceiveTimeout(seconds: ControlServer.stallSeconds)
        var timeout = timeval(tv_sec: ControlServer.stallSeconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        connections.append(Connection(id: nextID, socket: socket))
        nextID += 1
    }

    /// Closes a connection; returns an outcome when that ends the machine.
    private mutating func drop(_ id: Int) -> ControlServer.Outcome? {
        guard let index = connections.firstIndex(where: { $0.id == id }) else { return nil }
        connections[index].socket.close()
        connections.remove(at: index)
        // A live stream whose sender left no journal of what it sent cannot be continued, so its terms go; one kept
        // for a continuation keeps logging what the guest writes.
        if keepsLiveStream, resumeJournal == nil, dirtyLogOwner == id || custody.senderConnection == id {
            custody.dropResume("was dropped: its sender left no journal of what it sent (killed?); send again")
        }
        if dirtyLogOwner == id {
            dirtyLogOwner = nil
            if !keepsLiveStream { stopDirtyLog() }
        }
        if throttleOwner == id {
            throttleOwner = nil
            try? machine.setThrottle(percent: 0)
        }
        if owner == id {
            owner = nil
            if incomingPending && partial == nil { return .ownerLeft }
        }
        defer { releaseResumeHoldings() }
        if let (resume, line) = custody.senderLeft(connection: id, state: machine.status().state) {
            if resume {
                do { try machine.resume() } catch {
                    EventLog.note(machine: name, "resuming after the sender left failed: \(error)")
                }
            }
            EventLog.note(machine: name, line)
        }
        return nil
    }

    /// Reads one request from a ready connection and answers it.
    private mutating func handleOne(at index: Int, releaseSocket: () -> Void) -> Next {
        let connection = connections[index]
        let message: ReceivedMessage
        do {
            guard let received = try connection.socket.receive() else { return .drop }
            message = received
        } catch {
            // The framing is lost: say why (if the peer still listens) and hang up.
            try? connection.socket.send(ControlReply.error(message: "\(error)"))
            return .drop
        }
        if let descriptor = message.descriptor { close(descriptor) }

        let request: ControlRequest
        do {
            request = try MessageSocket.decode(ControlRequest.self, from: message.json)
        } catch {
            return reply(
                connection, .error(message: Self.describeUndecodable(message.json)), then: connection.greeted ? .keep : .drop)
        }
        guard connection.greeted || isHello(request) else {
            return reply(connection, .error(message: "the first request must be hello, not \(request.name)"), then: .drop)
        }
        return answer(request, payload: message.payload, from: index, releaseSocket: releaseSocket)
    }

    private func isHello(_ request: ControlRequest) -> Bool {
        if case .hello = request { return true }
        return false
    }

    private mutating func answer(_ request: ControlRequest, payload: [UInt8], from index: Int, releaseSocket: () -> Void) -> Next
    {
        let connection = connections[index]
        let isOwner = owner == connection.id
        expireResumeTerms()
        defer { releaseResumeHoldings() }
        do {
            switch request {
            case .hello(let version, let ownIncoming, let client):
                guard ControlProtocol.supportedVersions.contains(version) else {
                    return reply(
                        connection,
                        .error(
                            message:
                                "protocol version mismatch: vmrun speaks \(ControlProtocol.version), the client speaks \(version)"
                        ), then: .drop)
                }
                if connection.greeted { throw ControlError("hello was already said on this connection") }
                connections[index].version = version
                if let client { connections[index].client = String(client.prefix(200)) }
                if ownIncoming {
                    guard incomingPending else { throw ControlError("'\(name)' is not an incoming machine") }
                    if owner != nil {
                        throw ControlError("the incoming machine '\(name)' is already owned by another connection")
                    }
                    owner = connection.id
                }
                connections[index].greeted = true
                return reply(
                    connection,
                    .ok(.hello(version: version, name: name, state: status(for: connections[index]).state, pid: getpid())))
            case .status:
                return reply(connection, .ok(.status(status(for: connection))))
            case .describe:
                return reply(connection, .ok(.describe(config: machine.config, host: machine.host)))
            case .pause:
                if incomingPending { throw wrongState("pause", "it has not been restored yet") }
                try perform("pause") { try machine.pause() }
                if let line = custody.paused(by: connection.id) { EventLog.note(machine: name, line) }
            case .resume(let force, let stamped):
                if incomingPending { throw wrongState("resume", "its state has not been restored yet") }
                let current = custody.overlay(machine.status())
                try custody.checkResume(
                    force: force ?? false, connection: connection.id, state: machine.status().state, failure: current.failure)
                try perform("resume") { try machine.resume() }
                let resumedAt = HostClock.realtimeNanoseconds()
                if current.state == .migrated || current.send?.senderGone == true {
                    EventLog.note(
                        machine: name, "resumed by \(connection.client) with --force; it was \(current.stateDescription)")
                }
                // Resuming a running machine changes nothing: a live stream kept for a continuation stays.
                if current.state != .running { custody.resumed() }
                // The guest runs from here: a reply the client reads later, once the vCPUs have let it have a core,
                // would add that wait to a migration's downtime.
                if stamped == true { return reply(connection, .ok(.resumed(atRealtimeNanoseconds: resumedAt))) }
            case .destroy(let keepLogs):
                machine.destroy()
                EventLog.note(machine: name, "destroyed by \(connection.client)")
                let kept = keepLogs == true ? keepFiles() : nil
                releaseSocket()
                return reply(connection, .ok(kept.map { .kept(paths: $0) } ?? .done), then: .finish(.destroyed))
            case .sendStart(let stream, let force):
                try custody.start(
                    stream: stream, force: force, connection: connection.id, client: connection.client,
                    state: machine.status().state)
                EventLog.note(machine: name, "\(connection.client) starts sending stream \(stream)\(force ? " (--force)" : "")")
            case .sendCommit:
                try custody.commit(connection: connection.id)
            case .sendResumable(let terms):
                try custody.makeResumable(terms, connection: connection.id)
                resumableState = nil
                EventLog.note(
                    machine: name,
                    "stream \(terms.stream) is resumable: should it break, the VM stays paused for \(Int(terms.windowSeconds.rounded())) s"
                )
            case .sendContinue(let stream, let attempt, let force):
                let live = keepsLiveStream && custody.resume?.terms.stream == stream
                if live, let send = custody.send, !send.senderGone {
                    throw ControlError("VM '\(name)' is being sent already (\(send.summary))")
                }
                if live, resumeJournal == nil {
                    throw ControlError("stream \(stream) cannot be continued: VM '\(name)' holds no journal of it")
                }
                let (terms, number) = try custody.continueSend(
                    stream: stream, attempt: attempt, force: force, connection: connection.id, client: connection.client,
                    state: machine.status().state)
                EventLog.note(machine: name, "\(connection.client) continues stream \(stream) (send \(number))")
                guard live, let journal = resumeJournal else {
                    return reply(connection, .ok(.continuing(terms: terms, attempt: number)))
                }
                // The log and the journal are this send's now; it hands over a journal of its own should it break.
                if dirtyLogManualClear != nil { dirtyLogOwner = connection.id }
                resumeJournal = nil
                return reply(
                    connection, .ok(.continuing(terms: terms, attempt: number, manualClear: dirtyLogManualClear)),
                    payload: journal)
            case .sendJournal(let stream, let attempt):
                // Only the newest send of the stream journals it: an older one's journal would miss what came since.
                guard keepsLiveStream, let hold = custody.resume, hold.terms.stream == stream, hold.attempts == attempt else {
                    throw ControlError("VM '\(name)' keeps no live stream \(stream) whose send \(attempt) could journal it")
                }
                resumeJournal = payload
            case .keepPartial(let record):
                guard incomingPending, isOwner else {
                    throw ControlError("only the connection that owns the incoming machine '\(name)' may keep a partial receive")
                }
                partial = (record, payload)
                EventLog.note(machine: name, "keeps a partial receive (\(record.summary))")
            case .partialState:
                guard incomingPending, isOwner, let partial else {
                    throw ControlError("'\(name)' holds no partial receive for this connection")
                }
                return reply(connection, .ok(.partial(partial.record)), payload: partial.checkpoint)
            case .sendFinish(let migrated, let destination, let delivered):
                EventLog.note(
                    machine: name,
                    try custody.finish(
                        connection: connection.id, migrated: migrated, destination: destination, delivered: delivered ?? true,
                        state: machine.status().state))
            case .memoryFile:
                if incomingPending && !isOwner {
                    throw ControlError("only the connection that owns the incoming machine '\(name)' may write its memory")
                }
                try connection.socket.send(
                    ControlReply.ok(.memoryFile(size: machine.config.memorySize)), descriptor: machine.memoryFile)
                return .keep
            case .dirtyLogStart(let manualClear):
                if incomingPending { throw wrongState("dirtyLogStart", "it is incoming") }
                try custody.checkStreamRead("dirtyLogStart", connection: connection.id, state: machine.status().state)
                if let other = dirtyLogOwner, other != connection.id {
                    throw ControlError("dirty logging on '\(name)' is already in use by another connection")
                }
                if dirtyLogOwner == nil, dirtyLogManualClear != nil, let kept = custody.resume?.terms.stream {
                    throw ControlError(
                        "dirty logging on '\(name)' is kept for a continuation of stream \(kept) (vmsend -t); a new send "
                            + "with --force drops it")
                }
                let manual = try perform("dirtyLogStart") { try machine.dirtyLogStart(manualClear: manualClear ?? false) }
                dirtyLogOwner = connection.id
                dirtyLogManualClear = manual
                // A client that did not say knows only `done`.
                if manualClear != nil { return reply(connection, .ok(.dirtyLogStarted(manualClear: manual))) }
            case .dirtyLogFetch(let segment):
                guard dirtyLogOwner == connection.id else {
                    throw ControlError("dirty logging is not started on this connection")
                }
                let segments = machine.config.segments.count
                guard (0..<segments).contains(segment) else {
                    throw ControlError("no memory segment \(segment): '\(name)' has \(segments)")
                }
                let words = try perform("dirtyLogFetch") { try machine.dirtyLogFetch(segment: segment) }
                return reply(connection, .ok(.dirtyLog(words: words.count)), payload: BitmapEncoding.encode(words))
            case .dirtyLogClear(let segment, let firstPage):
                guard dirtyLogOwner == connection.id else {
                    throw ControlError("dirty logging is not started on this connection")
                }
                let segments = machine.config.segments.count
                guard (0..<segments).contains(segment) else {
                    throw ControlError("no memory segment \(segment): '\(name)' has \(segments)")
                }
                let bitmap = try BitmapEncoding.decode(payload)
                try perform("dirtyLogClear") { try machine.dirtyLogClear(segment: segment, firstPage: firstPage, bitmap: bitmap) }
            case .dirtyLogStop:
                if dirtyLogOwner == connection.id {
                    dirtyLogOwner = nil
                    dirtyLogManualClear = nil
                    try perform("dirtyLogStop") { try machine.dirtyLogStop() }
                }
            case .throttle(let percent):
                guard (0...99).contains(percent) else { throw ControlError("throttle must be 0 to 99 percent, not \(percent)") }
                if incomingPending { throw wrongState("throttle", "it is incoming") }
                try perform("throttle") { try machine.setThrottle(percent: percent) }
                throttleOwner = percent == 0 ? nil : connection.id
            case .saveState:
                let state = machine.status().state
                guard state == .paused, !incomingPending else {
                    throw wrongState("saveState", state == .crashed ? "it has crashed" : "it is \(state); pause it first")
                }
                try custody.checkStreamRead("saveState", connection: connection.id, state: state)
                // A resumable stream made again must carry the very state its first send did (the clocks in it move on).
                let saved = try resumableState ?? perform("saveState") { try machine.saveState() }
                if custody.resume != nil { resumableState = saved }
                return reply(connection, .ok(.state), payload: try StateEncoding.encode(saved))
            case .restoreState:
                guard incomingPending else { throw wrongState("restoreState", "it is not incoming") }
                guard isOwner else {
                    throw ControlError("only the connection that owns the incoming machine '\(name)' may restore it")
                }
                let state = try StateEncoding.decode(payload)
                // The machine words its refusals whole (`this host cannot run VM ...`): passed on as they are.
                try machine.restoreState(state)
                partial = nil
                // Restored whole: from here on a paused machine like any other, kept if its owner leaves
                // (`vmrecv --paused`), never half-restored.
                incomingPending = false
            case .consoleInput:
                try perform("consoleInput") { try machine.consoleInput(payload) }
            case .diskFile(let disk):
                let disks = machine.config.disks
                guard disks.indices.contains(disk) else { throw ControlError("no disk \(disk): '\(name)' has \(disks.count)") }
                let descriptor = try perform("diskFile") { try machine.diskFile(disk) }
                try connection.socket.send(ControlReply.ok(.diskFile(size: disks[disk].size)), descriptor: descriptor)
                return .keep
            case .diskWrittenFetch(let disk):
                guard dirtyLogOwner == connection.id else {
                    throw ControlError("dirty logging is not started on this connection")
                }
                let disks = machine.config.disks
                guard disks.indices.contains(disk) else { throw ControlError("no disk \(disk): '\(name)' has \(disks.count)") }
                let words = try perform("diskWrittenFetch") { try machine.diskWrittenFetch(disk) }
                return reply(connection, .ok(.dirtyLog(words: words.count)), payload: BitmapEncoding.encode(words))
            }
            return reply(connection, .ok(.done))
        } catch {
            return reply(connection, .error(message: "\(error)"))
        }
    }

    /// Moves the console and the log aside (`NAME.console.20261121T104512Z`); returns where they went.
    private func keepFiles() -> [String] {
        let stamp = UTCTime.format(HostClock.realtimeNanoseconds()).filter { $0 != "-" && $0 != ":" }
        return ownedFiles.compactMap { path in
            let kept = path + "." + stamp
            return rename(path, kept) == 0 ? kept : nil
        }
    }

    /// Runs a machine operation, prefixing its error with the request's name.
    private func perform<T>(_ request: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as ControlError {
            throw error
        } catch {
            throw ControlError("\(request) failed: \(error)")
        }
    }

    private func wrongState(_ request: String, _ why: String) -> ControlError {
        ControlError("cannot \(request) '\(name)': \(why)")
    }

    /// Sends a reply; a connection whose peer is gone is dropped.
    private func reply(_ connection: Connection, _ reply: ControlReply, payload: [UInt8] = [], then next: Next = .keep) -> Next {
        do {
            try connection.socket.send(reply, payload: payload)
        } catch {
            if case .finish = next { return next }
            return .drop
        }
        return next
    }

    /// Names what was wrong with a request that does not decode.
    static func describeUndecodable(_ json: [UInt8]) -> String {
        guard let key = try? MessageSocket.decode(FirstKey.self, from: json).key else {
            return "bad request: not a JSON object naming a request"
        }
        if ControlRequest.allNames.contains(key) { return "bad request: malformed arguments for \(key)" }
        return "unknown request '\(key)'"
    }
}

/// The single key of a request object, to name an unknown request in the error.
struct FirstKey: Decodable {
    let key: String

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        guard container.allKeys.count == 1, let key = container.allKeys.first else {
            throw ControlError("not a single request")
        }
        self.key = key.stringValue
    }
}
