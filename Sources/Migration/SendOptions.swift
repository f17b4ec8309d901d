import MachineDescription
import VMStream

/// When a live send stops copying while the guest runs.
public struct Convergence: Sendable {
    /// Switch over once the pages still dirty can be sent in this time at the measured bandwidth.
    public var downtimeTarget: Duration
    /// Switch over after this many rounds whatever is left (round 0 included; at least 2).
    public var maxRounds: Int
    /// Slow the guest's vCPUs step by step when rounds stop shrinking.
    public var autoConverge: Bool
    /// The pause's fixed cost besides sending pages; nil measures it from the source's answers.
    public var switchOverCost: Duration?

    public static let defaultDowntimeTarget: Duration = .milliseconds(20)
    public static let defaultMaxRounds = 30

    public init(
        downtimeTarget: Duration = Convergence.defaultDowntimeTarget,
        maxRounds: Int = Convergence.defaultMaxRounds, autoConverge: Bool = true,
        switchOverCost: Duration? = nil
    ) {
        self.downtimeTarget = downtimeTarget
        self.maxRounds = max(2, maxRounds)
        self.autoConverge = autoConverge
        self.switchOverCost = switchOverCost
    }

    /// Throttle steps as QEMU's auto-converge takes them: 20 %, then +10 % a step, up to 99 %.
    static func nextThrottle(after percent: Int) -> Int {
        percent == 0 ? 20 : min(99, percent + 10)
    }
}

#if DEBUG
    /// Deliberate faults, for tests that must prove they can fail. Compiled into debug builds only.
    public enum SendFault: String, Sendable {
        /// Live: the final round sends none of the pages dirtied since the last round, so the copy is stale.
        case dropFinalDirtyPages = "drop-final-dirty-pages"
        /// Live: the final round sends none of the disk blocks written since the last round.
        case dropFinalDirtyBlocks = "drop-final-dirty-blocks"
    }
#endif

/// How `vmsend` sends.
public struct SendOptions: Sendable {
    public var mode: MigrationMode
    public var compression: Compression
    /// Resume the source after a successful send (a consistent snapshot, like `bhyvectl --checkpoint`).
    public var keepRunning: Bool
    /// Both hosts reach the machine's disk images at the same paths: send their identity, not their data.
    public var sharedStorage = false
    public var convergence: Convergence
    public var tool: String
    public var toolVersion: String
    /// Send a source that was migrated already (its copy is known to be gone).
    public var force = false
    /// Where the stream goes, as far as the sender can tell, for the source's record.
    public var destination: String?
    /// Should the stream break, the source stays paused and keeps what a continuation needs for `resumeWindow`
    /// (`vmsend -s`); BEGIN says so, so a receiver may keep what arrived. Live streams are marked, not kept.
    public var resumable = false
    public var resumeWindow: Duration = .seconds(600)
    /// Continue the stream this token names (`vmsend -t`) instead of starting one.
    public var continuation: ResumeToken?
    #if DEBUG
        public var fault: SendFault?
    #endif

    public init(
        mode: MigrationMode, compression: Compression, keepRunning: Bool,
        convergence: Convergence = Convergence(),
        tool: String = "vmsend", toolVersion: String = Release.version
    ) {
        self.mode = mode
        self.compression = compression
        self.keepRunning = keepRunning
        self.convergence = convergence
        self.tool = tool
        self.toolVersion = toolVersion
    }
}
