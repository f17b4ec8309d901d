import Glibc
import MachineDescription
import Synchronization
import SystemPackage
import SystemSupport

/// A connection to one vmrun's control socket. Requests are sent one at a time, each waiting
/// for its reply; an error reply is thrown as a `ControlError` with the server's one line.
public final class ControlClient: Sendable {
    /// The machine's name and the pid of its vmrun, as the server introduced itself.
    public let name: String
    public let pid: Int32
    /// The machine's state when the connection was made.
    public let initialState: RunState
    /// The protocol version both sides speak on this connection (1 with a vmrun from before version 2).
    public let version: UInt32
    private let socket: Mutex<MessageSocket?>

    private init(socket: MessageSocket, name: String, pid: Int32, state: RunState, version: UInt32) {
        self.socket = Mutex(socket)
        self.name = name
        self.pid = pid
        self.initialState = state
        self.version = version
    }

    /// Who this process is, as `hello` tells vmrun for its log: `vmsend pid 4242`.
    public static let identity: String = {
        let program = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? ""
        return "\(program.isEmpty ? "client" : program) pid \(getpid())"
    }()

    deinit { close() }

    /// Connects and checks the protocol version. Throws a clear error for an unknown VM.
    public static func connect(name: String, runDirectory: RunDirectory) throws -> ControlClient {
        try connect(name: name, runDirectory: runDirectory, ownIncoming: false)
    }

    /// Connects; with `ownIncoming`, claims an incoming machine (see `ControlProtocol`). A vmrun of protocol version 1
    /// refuses a newer hello and hangs up: then the connection is made again, speaking version 1.
    public static func connect(name: String, runDirectory: RunDirectory, ownIncoming: Bool) throws -> ControlClient {
        do {
            return try handshake(socket: try open(name: name, runDirectory: runDirectory), ownIncoming: ownIncoming)
        } catch let error as ControlError where error.message.hasPrefix("protocol version mismatch: vmrun speaks 1,") {
            let socket = try open(name: name, runDirectory: runDirectory)
            return try handshake(socket: socket, ownIncoming: ownIncoming, version: 1)
        }
    }

    private static func open(name: String, runDirectory: RunDirectory) throws -> MessageSocket {
        try MachineName.validate(name)
        let path = runDirectory.socketPath(for: name)
        do {
            return try UnixSocket.connect(path: path)
        } catch let error as ControlError {
            switch error.code {
            case .noSuchFileOrDirectory? where access(runDirectory.path, F_OK) != 0:
                throw ControlError(
                    "no VM named '\(name)': the run directory \(runDirectory.path) does not exist (vmrun creates it)",
                    code: error.code)
            case .noSuchFileOrDirectory?: throw ControlError("no VM named '\(name)' (no socket at \(path))", code: error.code)
            case .permissionDenied?:
                let missing = FileAccess.missingPermission(path, wanted: W_OK) ?? "needs write permission on \(path)"
                throw ControlError("cannot reach VM '\(name)': permission denied: \(missing)", code: error.code)
            case .connectionRefused?:
                throw ControlError("no VM named '\(name)' (its vmrun is gone; stale socket at \(path))", code: error.code)
            default: throw error
            }
        }
    }

    /// Says hello over an already connected socket (a socketpair in tests).
    package static func handshake(
        socket: MessageSocket, ownIncoming: Bool, version wanted: UInt32 = ControlProtocol.version
    ) throws -> ControlClient {
        do {
            let hello = ControlRequest.hello(version: wanted, ownIncoming: ownIncoming, client: wanted >= 2 ? identity : nil)
            let (result, _, _) = try exchange(socket, hello)
            guard case .hello(let version, let name, let state, let pid) = result else {
                throw ControlError("unexpected reply to hello")
            }
            guard ControlProtocol.supportedVersions.contains(version), version <= wanted else {
                throw ControlError(
                    "protocol version mismatch: vmrun speaks \(version), this client speaks \(ControlProtocol.version)")
            }
            return ControlClient(socket: socket, name: name, pid: pid, state: state, version: version)
        } catch {
            socket.close()
            throw error
        }
    }

    public func status() throws -> MachineStatus {
        guard case .status(let status) = try request(.status).result else { throw unexpected("status") }
        return status
    }

    public func describe() throws -> (config: MachineConfig, host: HostSpec) {
        guard case .describe(let config, let host) = try request(.describe).result else { throw unexpected("describe") }
        return (config, host)
    }

    public func pause() throws { try request(.pause) }
    /// Resumes; `force` also resumes a migrated machine or one whose send may have left a running copy.
    public func resume(force: Bool = false) throws { try request(.resume(force: force ? true : nil)) }
    /// Resumes; returns when the vCPUs were let go (CLOCK_REALTIME nanoseconds), nil from a vmrun that does not say.
    public func resumeStamped() throws -> UInt64? {
        guard case .resumed(let time) = try request(.resume(stamped: true)).result else { return nil }
        return time
    }
    /// Destroys the machine; its console and log are removed, or with `keepLogs` kept under a new name: returns
    /// where they went.
    @discardableResult
    public func destroy(keepLogs: Bool = false) throws -> [String] {
        if case .kept(let paths) = try request(.destroy(keepLogs: keepLogs ? true : nil)).result { return paths }
        return []
    }

    /// How long a destroyed machine's vmrun may take to exit (and remove its socket, console and log).
    public static let exitTimeout: Duration = .seconds(10)

    /// Destroys the machine, closes this connection and returns once its vmrun has exited, so that nothing of it is
    /// left when a tool says it is gone.
    @discardableResult
    public func destroyAndWait(keepLogs: Bool = false) throws -> [String] {
        let kept = try destroy(keepLogs: keepLogs)
        close()
        let deadline = ContinuousClock.now + Self.exitTimeout
        while processIsAlive(pid) {
            guard ContinuousClock.now < deadline else {
                throw ControlError("'\(name)' was destroyed but its vmrun (pid \(pid)) has not exited")
            }
            usleep(10_000)
        }
        return kept
    }

    /// This connection starts sending the machine as stream `stream`; refused for a migrated one unless `force`.
    public func sendStart(stream: String, force: Bool) throws { try request(.sendStart(stream: stream, force: force)) }
    /// END is about to be written: from now on a copy may run.
    public func sendCommit() throws { try request(.sendCommit) }
    /// The send ended: `migrated` when its stream is complete, the machine then stays paused as `migrated`.
    public func sendFinish(migrated: Bool, destination: String?, delivered: Bool? = nil) throws {
        try request(.sendFinish(migrated: migrated, destination: destination, delivered: delivered))
    }

    /// Should this send break, the machine stays paused and `terms` are kept for a continuation (`vmsend -s`).
    public func sendResumable(_ terms: ResumeTerms) throws { try request(.sendResumable(terms: terms)) }
    /// Starts a send that continues `stream` from a token of its send `attempt`: the kept terms, the number of this
    /// send, and for a live stream its journal and how its dirty log is cleared.
    public func sendContinue(stream: String, attempt: UInt32, force: Bool) throws -> SendContinuation {
        let answer = try request(.sendContinue(stream: stream, attempt: attempt, force: force))
        guard case .continuing(let terms, let number, let manualClear) = answer.result else { throw unexpected("sendContinue") }
        return SendContinuation(
            terms: terms, attempt: number, journal: answer.payload.isEmpty ? nil : answer.payload, manualClear: manualClear)
    }
    /// Hands the source the journal of live stream `stream`, for a continuation should the send break.
    public func sendJournal(stream: String, attempt: UInt32, journal: [UInt8]) throws {
        try request(.sendJournal(stream: stream, attempt: attempt), payload: journal)
    }
    /// The incoming machine keeps what arrived as a partial receive; `checkpoint` is the receiver's.
    public func keepPartial(_ partial: PartialReceive, checkpoint: [UInt8]) throws {
        try request(.keepPartial(partial: partial), payload: checkpoint)
    }
    /// The partial receive an incoming machine holds, for its new owner.
    public func partialState() throws -> (partial: PartialReceive, checkpoint: [UInt8]) {
        let reply = try request(.partialState)
        guard case .partial(let partial) = reply.result else { throw unexpected("partialState") }
        return (partial, reply.payload)
    }

    /// Whether this vmrun knows the requests of protocol version 2 (send custody, migrated and crashed states).
    public var knowsSendCustody: Bool { version >= 2 }

    /// The machine's memfd, received over SCM_RIGHTS; the caller owns and closes it.
    public func memoryFile() throws -> FileDescriptor {
        let reply = try request(.memoryFile)
        guard case .memoryFile = reply.result, let descriptor = reply.descriptor else {
            if let descriptor = reply.descriptor { Glibc.close(descriptor) }
            throw unexpected("memoryFile")
        }
        return FileDescriptor(rawValue: descriptor)
    }

    /// Starts dirty logging; returns whether clearing is manual (asked for, and this vmrun and kernel can).
    @discardableResult
    public func dirtyLogStart(manualClear: Bool) throws -> Bool {
        switch try request(.dirtyLogStart(manualClear: manualClear)).result {
        case .dirtyLogStarted(let manual): return manual
        case .done: return false  // a vmrun from before manual clearing: fetches clear
        default: throw unexpected("dirtyLogStart")
        }
    }

    /// One bit per page of the segment; cleared in the VM as fetched unless clearing is manual.
    public func dirtyLogFetch(segment: Int) throws -> [UInt64] {
        let reply = try request(.dirtyLogFetch(segment: segment))
        guard case .dirtyLog(let words) = reply.result, words * 8 == reply.payload.count else {
            throw unexpected("dirtyLogFetch")
        }
        return try BitmapEncoding.decode(reply.payload)
    }

    /// Manual clearing: re-arms page `firstPage + i` of the segment for each set bit i.
    public func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        try request(.dirtyLogClear(segment: segment, firstPage: firstPage), payload: BitmapEncoding.encode(bitmap))
    }

    public func dirtyLogStop() throws { try request(.dirtyLogStop) }
    public func setThrottle(percent: Int) throws { try request(.throttle(percent: percent)) }

    public func saveState() throws -> MachineState {
        let reply = try request(.saveState)
        guard case .state = reply.result else { throw unexpected("saveState") }
        return try StateEncoding.decode(reply.payload)
    }

    public func restoreState(_ state: MachineState) throws {
        try request(.restoreState, payload: StateEncoding.encode(state))
    }

    public func consoleInput(_ bytes: [UInt8]) throws {
        try request(.consoleInput, payload: bytes)
    }

    /// Disk `disk`'s image file, received over SCM_RIGHTS; the caller owns and closes it.
    public func diskFile(_ disk: Int) throws -> FileDescriptor {
        let reply = try request(.diskFile(disk: disk))
        guard case .diskFile = reply.result, let descriptor = reply.descriptor else {
            if let descriptor = reply.descriptor { Glibc.close(descriptor) }
            throw unexpected("diskFile")
        }
        return FileDescriptor(rawValue: descriptor)
    }

    /// The disk's 4 KiB blocks written since the last fetch, one bit each.
    public func diskWrittenFetch(_ disk: Int) throws -> [UInt64] {
        let reply = try request(.diskWrittenFetch(disk: disk))
        guard case .dirtyLog(let words) = reply.result, words * 8 == reply.payload.count else {
            throw unexpected("diskWrittenFetch")
        }
        return try BitmapEncoding.decode(reply.payload)
    }

    /// Closes the connection. For the owner of an incoming machine that was not resumed, this
    /// makes vmrun destroy the machine.
    public func close() {
        socket.withLock { socket in
            socket?.close()
            socket = nil
        }
    }

    @discardableResult
    private func request(
        _ request: ControlRequest, payload: [UInt8] = []
    ) throws
        -> (result: ControlResult, payload: [UInt8], descriptor: Int32?)
    {
        guard request.sinceVersion <= version else {
            throw ControlError("vmrun (pid \(pid)) speaks control protocol \(version), which has no \(request.name)")
        }
        return try socket.withLock { socket in
            guard let open = socket else { throw ControlError("the control connection to '\(name)' is closed") }
            return try Self.exchange(open, request, payload: payload)
        }
    }

    private static func exchange(
        _ socket: MessageSocket, _ request: ControlRequest, payload: [UInt8] = []
    ) throws
        -> (result: ControlResult, payload: [UInt8], descriptor: Int32?)
    {
        try socket.send(request, payload: payload)
        guard let message = try socket.receive() else {
            throw ControlError("vmrun closed the control connection without answering \(request.name)")
        }
        let reply: ControlReply
        do {
            reply = try MessageSocket.decode(ControlReply.self, from: message.json)
        } catch {
            if let descriptor = message.descriptor { Glibc.close(descriptor) }
            throw ControlError("unreadable reply to \(request.name) from vmrun")
        }
        switch reply {
        case .ok(let result):
            return (result, message.payload, message.descriptor)
        case .error(let text):
            if let descriptor = message.descriptor { Glibc.close(descriptor) }
            throw ControlError(text)
        }
    }

    private func unexpected(_ request: String) -> ControlError {
        ControlError("unexpected reply to \(request) from vmrun")
    }
}
