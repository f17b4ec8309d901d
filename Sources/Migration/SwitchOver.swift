import SystemSupport

/// The parts of a downtime, in the order they happen: the source's from its pause request to END written, then the
/// destination's from END read to the resume.
public enum SwitchOverPhase: String, CaseIterable, Sendable {
    /// The source's vCPUs stopped and its devices drained.
    case pause
    /// The last dirty bitmaps fetched (live only; logging stops after END, outside the pause).
    case dirtyLog = "dirty log"
    /// The final round's pages and disk blocks written.
    case finalPages = "final pages"
    /// The source's state saved and written.
    case state
    /// The send's custody committed and END written.
    case end = "END"
    /// From the source's pause to END read here, on the two hosts' clocks: everything above plus the transport.
    case arrival = "END read"
    /// The state loaded into the incoming machine.
    case restore
    /// The incoming machine's vCPUs started.
    case resume
}

/// Where a downtime went, phase by phase, each lap measured from the end of the one before.
public struct SwitchOverTimes: Sendable, Equatable {
    public private(set) var seconds: [SwitchOverPhase: Double] = [:]
    private var lapStart = ContinuousClock.now

    public init() {}

    mutating func start() { lapStart = .now }

    /// Ends `phase` now; the next one starts.
    mutating func lap(_ phase: SwitchOverPhase) {
        record(phase, HostClock.seconds(since: lapStart))
        lapStart = .now
    }

    mutating func record(_ phase: SwitchOverPhase, _ value: Double) { seconds[phase, default: 0] += value }

    /// `pause 4 ms, dirty log 1 ms, final pages 12 ms, state 3 ms, END 1 ms`: the phases measured, in order.
    var text: String {
        SwitchOverPhase.allCases.compactMap { phase in seconds[phase].map { "\(phase.rawValue) \(milliseconds($0))" } }
            .joined(separator: ", ")
    }

    /// Microseconds of every phase, in order, `-` for one not measured: the end of a `-P` summary line.
    var parsableFields: [String] { SwitchOverPhase.allCases.map { seconds[$0].map(microseconds) ?? "-" } }
}
