import MachineDescription

/// The machine being sent, as the engine needs it. vmrun reached through its control socket is one conformance
/// (`VMRunBackend`); a bhyve backend would be another target beside it; unit tests use an in-memory fake.
public protocol MigrationSource: AnyObject {
    func describe() throws -> (config: MachineConfig, host: HostSpec)
    /// Whether the guest runs now; a paused one is sent as it is and left paused.
    func isRunning() throws -> Bool
    /// Guest RAM, for reading pages in place.
    func memory(_ config: MachineConfig) throws -> any GuestMemory
    /// Disk `index`'s image as a one-segment store of 4 KiB blocks, for reading them in place.
    func disk(_ index: Int, _ config: DiskConfig) throws -> any GuestMemory
    /// The disk's blocks the guest wrote since the last fetch (or since dirty logging started), one bit each.
    func diskWrittenFetch(_ index: Int) throws -> [UInt64]
    func pause() throws
    func resume() throws
    func saveState() throws -> MachineState
    /// Starts dirty logging; true when the engine clears pages itself (`dirtyLogClear`) just before copying
    /// them, false when each fetch clears what it returns.
    func dirtyLogStart() throws -> Bool
    /// One bit per page of `segment`; cleared at the source as fetched unless clearing is manual.
    func dirtyLogFetch(segment: Int) throws -> [UInt64]
    /// Manual clearing: re-arms page `firstPage + i` of `segment` for each set bit i (`firstPage` a multiple of 64).
    func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws
    func dirtyLogStop() throws
    /// Slows the guest's vCPUs to (100 - percent) % of their speed; 0 lifts the throttle.
    func setThrottle(percent: Int) throws
    /// A send of stream `stream` (its UUID) starts: the source refuses a machine that was migrated already (unless
    /// `force`), and from now on knows whose pause is whose and who to blame should the sender vanish.
    func beginSend(stream: String, force: Bool) throws
    /// END is about to be written: from now on a copy may run, so the source must never resume by itself.
    func commitSend() throws
    /// The send ended: `migrated` when its stream is complete and the source stays paused for good (`migrated`),
    /// to `destination` if known. Returns whether the source recorded the migration.
    @discardableResult
    func finishSend(migrated: Bool, destination: String?) throws -> Bool
    /// The same, saying whether any byte of the stream went out: a continuation that wrote nothing leaves its token good.
    @discardableResult
    func finishSend(migrated: Bool, destination: String?, delivered: Bool) throws -> Bool
    /// The send in progress is resumable: should it break, the source keeps `terms` (paused, or live running with its
    /// dirty log on and the journal `keepJournal` gives).
    func makeResumable(_ terms: ResumeTerms) throws
    /// A send that continues `stream` from a token of its send `attempt`: the kept terms, this send's number, and for
    /// a live stream its journal and the dirty log kept since it broke (now this send's).
    func continueSend(stream: String, attempt: UInt32, force: Bool) throws -> SendContinuation
    /// Keeps the journal of live resumable stream `stream` as its send `attempt` wrote it; should the send break, the
    /// source keeps its dirty log on for a continuation. May come from a connection other than the sender's (an
    /// interrupt).
    func keepJournal(stream: String, attempt: UInt32, journal: [UInt8]) throws
}

extension MigrationSource {
    /// `delivered`: whether any byte of the stream went out; a backend that does not care ignores it.
    @discardableResult
    public func finishSend(migrated: Bool, destination: String?, delivered: Bool) throws -> Bool {
        try finishSend(migrated: migrated, destination: destination)
    }
    /// A backend that cannot keep a stream for continuing says so; the send then is an ordinary one.
    public func makeResumable(_ terms: ResumeTerms) throws {
        throw MigrationError("this source cannot keep a stream for continuing")
    }
    public func continueSend(stream: String, attempt: UInt32, force: Bool) throws -> SendContinuation {
        throw MigrationError("this source cannot continue a stream")
    }
    public func keepJournal(stream: String, attempt: UInt32, journal: [UInt8]) throws {
        throw MigrationError("this source cannot keep a live stream for continuing")
    }
}

/// A machine being received: created from the stream's BEGIN, not yet running.
public protocol MigrationDestination: AnyObject {
    /// Guest RAM and the disks whose data travels (`MachineAreas`); pages and blocks land here straight from the
    /// stream.
    var memory: any GuestMemory { get }
    /// Hands over kernel and device state, after every page has arrived.
    func restore(_ state: MachineState) throws
    /// Starts the machine; it then runs on its own. Returns when its vCPUs were let go (CLOCK_REALTIME nanoseconds),
    /// nil when the backend cannot tell.
    func resume() throws -> UInt64?
    /// Right after `resume`: throws when the machine stopped by itself at once (it crashed), saying why.
    func confirmRunning() throws
    /// Destroys the machine and returns once it is gone: a failed receive leaves nothing behind.
    func abandon()
    /// Keeps the machine, never running, as a partial receive that a continuation can take up (`vmrecv -s`).
    func keepPartial(_ partial: PartialReceive, checkpoint: [UInt8]) throws
}

extension MigrationDestination {
    public func keepPartial(_ partial: PartialReceive, checkpoint: [UInt8]) throws {
        throw MigrationError("this destination cannot keep a partial receive")
    }
}

/// The checks of a receive with nothing created (`vmrecv -n`): the hypervisor side checks the configuration
/// when BEGIN has arrived and the state when END has verified, exactly as a real receive's machine would.
public protocol IncomingCheck: AnyObject {
    func checkConfiguration(_ config: MachineConfig) throws
    /// `diskSamples`: per disk that travels, its blocks a fingerprint reads (`DiskConfig.fingerprintBlocks`) as the
    /// stream left them; the others read as zeroes, as in a receive's new image.
    func checkState(_ state: MachineState, diskSamples: [Int: [UInt64: [UInt8]]]) throws
    /// Ends the checking; called once, whatever happened.
    func finish()
}
