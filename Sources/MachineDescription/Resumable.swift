/// What a source keeps after a resumable send (`vmsend -s`) broke, so that `vmsend -t` can make the same stream
/// again: the stream's identity and every choice that shaped its bytes.
public struct ResumeTerms: Codable, Sendable, Equatable {
    /// The stream's UUID as text, and its 16 bytes.
    public var stream: String
    public var uuid: [UInt8]
    /// BEGIN's creation time and END's pause time, ns since the Unix epoch.
    public var creationTime: UInt64
    public var pauseTime: UInt64
    /// cold, warm or live.
    public var mode: String
    /// The page codec's name, or `none`.
    public var compression: String
    public var sharedStorage: Bool
    /// BEGIN's bytes held per disk, taken before the pause: a stream made again must say the same.
    public var diskAllocation: [UInt64]
    /// How long the source keeps these terms after a send of the stream breaks.
    public var windowSeconds: Double

    public init(
        stream: String, uuid: [UInt8], creationTime: UInt64, pauseTime: UInt64, mode: String, compression: String,
        sharedStorage: Bool, diskAllocation: [UInt64], windowSeconds: Double
    ) {
        self.diskAllocation = diskAllocation
        self.stream = stream
        self.uuid = uuid
        self.creationTime = creationTime
        self.pauseTime = pauseTime
        self.mode = mode
        self.compression = compression
        self.sharedStorage = sharedStorage
        self.windowSeconds = windowSeconds
    }
}

/// A source's resume state as `vmctl status` shows it.
public struct ResumableSend: Codable, Sendable, Equatable {
    public var stream: String
    /// Sends of the stream started so far: 1, plus one per continuation.
    public var attempts: UInt32
    public var windowSeconds: Double
    /// When the terms are dropped (and the machine resumed, if the send paused it), ns since the Unix epoch; nil
    /// while a send of the stream runs.
    public var expires: UInt64?
    /// The last send wrote the whole stream, END included: the machine is migrated, and a continuation needs
    /// `--force` (its receiver may have missed the end all the same, the sender cannot tell).
    public var completed: Bool?

    public init(stream: String, attempts: UInt32, windowSeconds: Double, expires: UInt64?, completed: Bool = false) {
        self.stream = stream
        self.attempts = attempts
        self.windowSeconds = windowSeconds
        self.expires = expires
        self.completed = completed
    }

    public var summary: String {
        let window = "window \(Int(windowSeconds.rounded())) s"
        guard let expires else { return "stream \(stream), send \(attempts) of it in progress (\(window))" }
        if completed == true {
            return "stream \(stream) went out whole; kept for vmsend -t --force, should its receiver have missed "
                + "the end, until \(UTCTime.format(expires)) (\(window))"
        }
        return "stream \(stream) broke after \(attempts) send\(attempts == 1 ? "" : "s"); kept for vmsend -t until "
            + "\(UTCTime.format(expires)) (\(window))"
    }
}

/// An incoming machine that holds a partial receive (`vmrecv -s`): what arrived verified, and the token that
/// continues it.
public struct PartialReceive: Codable, Sendable, Equatable {
    public var stream: String
    /// The source machine's name, for the `vmsend -t TOKEN NAME` line.
    public var sourceMachine: String
    public var token: String
    /// Records and stream bytes verified.
    public var records: UInt64
    public var bytes: UInt64
    /// The round under way, and the pages and blocks its list still misses; nil once the state had started.
    public var round: UInt32?
    public var unitsExpected: UInt64
    /// When it was kept, ns since the Unix epoch.
    public var kept: UInt64

    public init(
        stream: String, sourceMachine: String, token: String, records: UInt64, bytes: UInt64, round: UInt32?,
        unitsExpected: UInt64, kept: UInt64
    ) {
        self.stream = stream
        self.sourceMachine = sourceMachine
        self.token = token
        self.records = records
        self.bytes = bytes
        self.round = round
        self.unitsExpected = unitsExpected
        self.kept = kept
    }

    public var summary: String {
        let place = round.map { "in round \($0), \(unitsExpected) pages still expected" } ?? "in the state"
        return "stream \(stream): \(records) records (\(ByteSize.format(bytes))) verified, \(place)"
    }
}

/// What a source gives a send that continues a stream: its kept terms, the number of this send, and for a live stream
/// the journal of what was sent and how the dirty log kept since the break is cleared.
public struct SendContinuation: Sendable {
    public var terms: ResumeTerms
    public var attempt: UInt32
    public var journal: [UInt8]?
    public var manualClear: Bool?

    public init(terms: ResumeTerms, attempt: UInt32, journal: [UInt8]? = nil, manualClear: Bool? = nil) {
        self.terms = terms
        self.attempt = attempt
        self.journal = journal
        self.manualClear = manualClear
    }
}
