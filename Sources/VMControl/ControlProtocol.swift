import MachineDescription

/// The control protocol between `vmrun` and its clients (`vmctl`, `vmsend`, `vmrecv`).
///
/// Transport: a Unix stream socket at `<run dir>/NAME.sock`, mode 0600, in a 0700 directory.
///
/// Every message, in both directions, is:
///
///     u32 LE  JSON length      (1 ... ControlProtocol.maximumJSONLength)
///     u32 LE  payload length   (0 ... ControlProtocol.maximumPayloadLength)
///     JSON    a `ControlRequest` or a `ControlReply` (Swift's Codable form of an enum:
///             `{"status":{}}`, `{"hello":{"version":2,"ownIncoming":false,"client":"vmctl pid 7"}}`)
///     bytes   the binary payload, for bulky data only
///
/// A file descriptor (the memory file) rides on the header bytes of a `memoryFile` reply as
/// SCM_RIGHTS. Both sides check lengths against the limits before allocating anything.
///
/// Payloads:
/// - `dirtyLogFetch` reply: the bitmap, one bit per 4 KiB page of the segment, as LE u64 words.
/// - `dirtyLogClear` request: the pages to clear, bit i of the LE u64 words = page `firstPage + i`.
/// - `saveState` reply and `restoreState` request: a `MachineState` in the form of `StateEncoding`.
/// - `consoleInput` request: the bytes for the UART's receive FIFO.
/// - `diskWrittenFetch` reply: one bit per 4 KiB block of the disk, as LE u64 words.
///
/// Conversation: the first request on a connection must be `hello` with the client's protocol
/// version; a different version is answered with an error and the connection is closed. Every
/// request gets exactly one reply, `ok(...)` or `error(message)`, in order. A connection may
/// send any number of requests.
///
/// Incoming machines: the first connection whose `hello` says `ownIncoming: true` owns the
/// machine; only the owner may take the memory file and restore its state. If the owner
/// disconnects before a successful `restoreState`, or no owner arrives in time (30 s), `vmrun`
/// destroys the machine and exits, so a failed receive never leaves a half-restored VM behind.
/// A successful `restoreState` ends the incoming state: the machine is then an ordinary paused one.
///
/// Dirty logging belongs to the connection that started it, and stops when that connection closes.
/// `dirtyLogStart` without `manualClear` (as clients before manual clearing send it) gets `done`, and each
/// fetch clears what it returns. With `manualClear: true` the reply is `dirtyLogStarted(manualClear:)`: true
/// where the kernel can clear chosen pages (KVM_CLEAR_DIRTY_LOG), and then fetches leave the log as it is and
/// the client sends `dirtyLogClear` for exactly the pages it is about to copy: a write before a page's clear is
/// carried by that copy and not reported again; only writes after it are. A vmrun older than this answers `done`: the client then relies
/// on clearing at fetch. Both old and new clients and servers keep working, so this needed no new version.
///
/// `resume` with `stamped: true` gets `resumed(atRealtimeNanoseconds:)`, the moment the vCPUs were let go; a vmrun
/// older than this ignores the flag and answers `done`, and the client then takes the time itself. Without the flag
/// (vmctl) the reply is `done` as before.
///
/// After a `destroy` reply the server removes its socket and the `vmrun` process exits.
///
/// Version 2 adds what keeps exactly one copy of a machine running and says why a machine is stopped:
/// - the states `migrated` (paused after a complete send) and `crashed` (stopped by itself, with `failure`);
/// - `hello`'s `client` (who connects, e.g. `vmsend pid 4242`, for the machine's log and status);
/// - the send's custody: `sendStart(stream:force:)` before anything is sent (refused for a migrated machine unless
///   `force`, for a crashed or incoming one, and while another send runs), `sendCommit` just before END is written
///   (from then on a copy may run), `sendFinish(migrated:destination:)` once the stream was taken or the send
///   failed. A `pause` by the sender is recorded as the send's. Should the sender's connection close without
///   `sendFinish`, vmrun resumes a machine the sender paused if END was not committed (no copy can run), and
///   otherwise keeps it paused and records the outcome as unknown;
/// - `resume(force:)`: a migrated machine, one paused by a send in progress, or one whose send ended with the outcome
///   unknown, is resumed only with `force`; a crashed one never;
/// - `destroy(keepLogs:)`: the machine's console and log are removed, or kept under a new name.
///
/// Resumable transfers, in version 2 as optional requests (an older vmrun answers `unknown request`, and the tools say
/// it cannot resume):
/// - `sendResumable(terms)`, from the sender after `sendStart`: should this send break before it is complete, the
///   machine stays paused and the terms are kept for `terms.windowSeconds` (`status` shows them as `resumable`);
///   after that they are dropped and a machine the send paused is resumed. A `saveState` while terms are kept
///   returns the state saved first, so a stream made again is the same stream.
/// - `sendContinue(stream:attempt:force:)` starts a send that continues `stream` (as `sendStart` does), from a token
///   of send `attempt`; refused with one line when nothing is kept for it (expired, another stream), and unless
///   `force` when a later send of it started since or its last send wrote it whole (the machine is then migrated,
///   but the terms are kept for the window: a writer cannot tell whether END reached its reader). The reply is the
///   kept terms and this send's number.
/// - `sendJournal(stream:attempt:)`, payload the journal of a live resumable send (where its stream stood after each
///   record), from any connection while the terms of `stream` are kept and `attempt` is its newest send (an interrupted vmsend hands it over on a connection of its
///   own), and again after END (should its receiver have missed the end). Should the send break, vmrun keeps dirty
///   logging on while the terms are kept, and gives the journal and the log to the one `sendContinue` of the stream
///   that follows; terms of a live stream whose sender left no journal are dropped, and the log with them.
/// - `keepPartial(partial)`, from the owner of an incoming machine, payload the receiver's checkpoint: the machine
///   holds a partial receive, stays when its owner leaves, and waits for a new owner without a deadline.
///   `partialState`, from a new owner, returns the record and the checkpoint. `restoreState` ends it.
///
/// Compatibility: a version 2 server accepts `hello` of version 1 or 2 and speaks the client's version on that
/// connection; to a version 1 client it shows `migrated` and `crashed` as `paused`, and still refuses to resume them.
/// A version 2 client that a version 1 server refuses says `hello` again, as version 1, and then does without the
/// requests above (a send then leaves its source paused but not `migrated`). New optional fields are ignored by old
/// decoders, and missing ones read as nil, so the old requests keep their form.
public enum ControlProtocol {
    /// Bumped on any incompatible change to messages or their meaning.
    public static let version: UInt32 = 2
    /// The versions a server accepts in `hello`, and speaks back.
    public static let supportedVersions: ClosedRange<UInt32> = 1...2
    /// Size of the fixed message header: two u32 LE lengths.
    public static let headerLength = 8
    public static let maximumJSONLength = 1 << 20
    /// Large enough for the dirty bitmap of a 2 TiB segment.
    /// Holds any state a stream may carry (`StateLimits`), so a state a stream reader accepted is never refused here.
    public static let maximumPayloadLength = max(64 << 20, StateLimits.maximumEncodedBytes)
}

/// What a client asks of a `vmrun`.
public enum ControlRequest: Codable, Sendable, Equatable {
    /// First request on every connection. `ownIncoming` claims an incoming machine; `client` (version 2) says who
    /// connects, e.g. `vmsend pid 4242`.
    case hello(version: UInt32, ownIncoming: Bool, client: String? = nil)
    case status
    /// The `MachineConfig` and `HostSpec` a stream needs.
    case describe
    case pause
    /// `force` (version 2): resume even a migrated machine, or one whose send may have produced a running copy.
    /// `stamped`: reply when the vCPUs were let go (`resumed`); a server that does not know it ignores it.
    case resume(force: Bool? = nil, stamped: Bool? = nil)
    /// `keepLogs` (version 2): keep the console and the log under a new name instead of removing them.
    case destroy(keepLogs: Bool? = nil)
    /// The reply carries the memfd holding guest RAM.
    case memoryFile
    /// `manualClear`: the client clears pages itself (`dirtyLogClear`); nil as older clients send it.
    case dirtyLogStart(manualClear: Bool?)
    /// Reply payload: the segment's bitmap; cleared as fetched unless clearing is manual.
    case dirtyLogFetch(segment: Int)
    /// Payload: the bitmap of pages to clear from `firstPage` (a multiple of 64) on. Manual clearing only.
    case dirtyLogClear(segment: Int, firstPage: UInt64)
    case dirtyLogStop
    /// Slows the vCPUs to (100 - percent) % of their speed so a live send converges; 0 lifts it.
    /// Lifted by itself when the connection that set it closes.
    case throttle(percent: Int)
    /// Reply payload: the state of the paused machine.
    case saveState
    /// Payload: the state to restore into the incoming machine.
    case restoreState
    /// Payload: bytes for the UART.
    case consoleInput
    /// The reply carries disk `disk`'s image file (in `MachineConfig.disks` order), for reading blocks in place.
    case diskFile(disk: Int)
    /// Reply payload: the disk's 4 KiB blocks the guest wrote since the last fetch, one bit each; only on the
    /// connection that started dirty logging, which tracks disk writes too.
    case diskWrittenFetch(disk: Int)
    /// Version 2: this connection starts sending the machine as stream `stream` (a UUID).
    case sendStart(stream: String, force: Bool)
    /// Version 2: the sender is about to write END; from now on a copy may run.
    case sendCommit
    /// Version 2: the send ended; `migrated` when its stream is complete and the machine stays paused for good.
    /// `delivered` (resumable sends): false when not a byte went out, so a continuation that wrote nothing does not
    /// count as a send of its stream.
    case sendFinish(migrated: Bool, destination: String?, delivered: Bool? = nil)
    /// The send in progress may be continued should it break (`vmsend -s`).
    case sendResumable(terms: ResumeTerms)
    /// A send that continues stream `stream` from a token of its send `attempt` (`vmsend -t`).
    case sendContinue(stream: String, attempt: UInt32, force: Bool)
    /// Payload: the journal of live stream `stream` as its send `attempt` wrote it, kept for a continuation.
    case sendJournal(stream: String, attempt: UInt32)
    /// Payload: the receiver's checkpoint. The incoming machine keeps it as a partial receive.
    case keepPartial(partial: PartialReceive)
    /// Reply payload: the checkpoint of the partial receive.
    case partialState

    /// The request's name as it appears on the wire and in errors.
    public var name: String {
        switch self {
        case .hello: "hello"
        case .status: "status"
        case .describe: "describe"
        case .pause: "pause"
        case .resume: "resume"
        case .destroy: "destroy"
        case .memoryFile: "memoryFile"
        case .dirtyLogStart: "dirtyLogStart"
        case .dirtyLogFetch: "dirtyLogFetch"
        case .dirtyLogClear: "dirtyLogClear"
        case .dirtyLogStop: "dirtyLogStop"
        case .throttle: "throttle"
        case .saveState: "saveState"
        case .restoreState: "restoreState"
        case .consoleInput: "consoleInput"
        case .diskFile: "diskFile"
        case .diskWrittenFetch: "diskWrittenFetch"
        case .sendStart: "sendStart"
        case .sendCommit: "sendCommit"
        case .sendFinish: "sendFinish"
        case .sendResumable: "sendResumable"
        case .sendContinue: "sendContinue"
        case .sendJournal: "sendJournal"
        case .keepPartial: "keepPartial"
        case .partialState: "partialState"
        }
    }

    /// Every request name on the wire, to tell an unknown request from a malformed one.
    package static let allNames: Set<String> = [
        "hello", "status", "describe", "pause", "resume", "destroy", "memoryFile", "dirtyLogStart",
        "dirtyLogFetch", "dirtyLogClear", "dirtyLogStop", "throttle", "saveState", "restoreState", "consoleInput",
        "diskFile", "diskWrittenFetch",
        "sendStart", "sendCommit", "sendFinish", "sendResumable", "sendContinue", "sendJournal", "keepPartial",
        "partialState",
    ]

    /// The protocol version that introduced the request.
    package var sinceVersion: UInt32 {
        switch self {
        case .sendStart, .sendCommit, .sendFinish, .sendResumable, .sendContinue, .sendJournal, .keepPartial, .partialState:
            2
        default: 1
        }
    }
}

/// The answer to one request.
public enum ControlReply: Codable, Sendable, Equatable {
    case ok(ControlResult)
    /// One line, ready to show a user.
    case error(message: String)
}

/// What a successful request returns besides its payload.
public enum ControlResult: Codable, Sendable, Equatable {
    case done
    /// Dirty logging runs; `manualClear` says whether the client must clear pages itself.
    case dirtyLogStarted(manualClear: Bool)
    /// Who answered: the server's protocol version, the machine's name and state, and vmrun's pid.
    case hello(version: UInt32, name: String, state: RunState, pid: Int32)
    case status(MachineStatus)
    case describe(config: MachineConfig, host: HostSpec)
    /// The memfd rides on the message; `size` is its length in bytes.
    case memoryFile(size: UInt64)
    /// A disk's image file rides on the message; `size` is the disk's size in bytes.
    case diskFile(size: UInt64)
    /// The payload holds `words` LE u64 words.
    case dirtyLog(words: Int)
    /// The payload holds an encoded `MachineState`.
    case state
    /// Version 2, the reply to `destroy(keepLogs: true)`: where the console and the log were kept.
    case kept(paths: [String])
    /// The reply to `sendContinue`: the kept terms, and the number of the send that now starts. For a live stream
    /// the payload holds its journal, and `manualClear` says how the dirty log kept since the break is cleared (nil
    /// when none was kept: the send paused the machine, which stays so).
    case continuing(terms: ResumeTerms, attempt: UInt32, manualClear: Bool? = nil)
    /// The reply to `partialState`; the payload holds the checkpoint.
    case partial(PartialReceive)
    /// The reply to a stamped `resume`: when the vCPUs were let go, CLOCK_REALTIME nanoseconds.
    case resumed(atRealtimeNanoseconds: UInt64)
}
