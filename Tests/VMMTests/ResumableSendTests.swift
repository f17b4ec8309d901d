import Glibc
import MachineDescription
import Testing
import VMControl

@testable import VMM

/// A resumable send's terms kept by the control server: paused and kept when the send breaks, continued once per
/// token, refused by name, dropped when the window passes (and the machine its send paused resumed).
@Suite struct ResumableSendTests {
    static func terms(window: Double, stream: String = "s1") -> ResumeTerms {
        ResumeTerms(
            stream: stream, uuid: Array(repeating: 1, count: 16), creationTime: 1, pauseTime: 2, mode: "warm",
            compression: "none", sharedStorage: false, diskAllocation: [], windowSeconds: window)
    }

    @Test func aBrokenResumableSendKeepsItsSourcePausedUntilTheWindowPasses() throws {
        let machine = try SendCustodyTests.Served()
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.pause()
        try sender.sendResumable(Self.terms(window: 1))
        let first = try sender.saveState()
        try sender.sendFinish(migrated: false, destination: nil, delivered: true)
        sender.close()

        let user = try machine.connect()
        defer { user.close() }
        #expect(machine.state == .paused)
        #expect(try user.status().resumable?.stream == "s1")
        #expect(try user.status().resumable?.expires != nil)
        #expect { try user.sendStart(stream: "s2", force: false) } throws: { "\($0)".contains("a new send would drop it") }
        #expect { try user.sendContinue(stream: "s9", attempt: 1, force: false) } throws: {
            "\($0)".contains("keeps resume state for stream s1")
        }
        // A continuation gets the terms and the state saved first, whatever the machine would save now.
        let continuing = try machine.connect()
        let continued = try continuing.sendContinue(stream: "s1", attempt: 1, force: false)
        #expect(continued.terms == Self.terms(window: 1) && continued.attempt == 2 && continued.journal == nil)
        #expect(try continuing.saveState() == first)
        try continuing.sendFinish(migrated: false, destination: nil, delivered: false)
        // It wrote nothing, so the token it came with is still good; one that delivered makes it stale.
        let again = try machine.connect()
        #expect(try again.sendContinue(stream: "s1", attempt: 1, force: false).attempt == 2)
        try again.sendFinish(migrated: false, destination: nil, delivered: true)
        #expect { try user.sendContinue(stream: "s1", attempt: 1, force: false) } throws: { "\($0)".contains("stale token") }
        #expect { try user.sendContinue(stream: "s1", attempt: 5, force: false) } throws: { "\($0)".contains("never started") }
        again.close()
        continuing.close()

        #expect(SendCustodyTests().eventually { machine.state == .running }, "resumed when the window passed")
        #expect(try user.status().resumable == nil)
        #expect { try user.sendContinue(stream: "s1", attempt: 2, force: false) } throws: {
            "\($0)".contains("whose resume state expired at ")
        }
    }

    @Test func aCompletedContinuationUsesTheTokenUp() throws {
        let machine = try SendCustodyTests.Served()
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.pause()
        try sender.sendResumable(Self.terms(window: 60))
        sender.close()
        // The sender vanished before END: the source stays paused for a continuation, not resumed.
        #expect(SendCustodyTests().eventually { (try? machine.connect().status().resumable?.expires) != nil })
        #expect(machine.state == .paused)
        let continuing = try machine.connect()
        _ = try continuing.sendContinue(stream: "s1", attempt: 1, force: false)
        try continuing.sendCommit()
        try continuing.sendFinish(migrated: true, destination: nil)
        #expect { try continuing.sendContinue(stream: "s1", attempt: 2, force: false) } throws: {
            "\($0)".contains("the token was used: stream s1 went out whole") && "\($0)".contains("continue with --force")
        }
        #expect(try continuing.status().state == .migrated)
        #expect(try continuing.status().resumable?.completed == true)
        // The receiver may have missed END all the same: forced, it goes on, and the machine stays migrated.
        #expect(try continuing.sendContinue(stream: "s1", attempt: 2, force: true).attempt == 3)
        try continuing.sendFinish(migrated: false, destination: nil, delivered: true)
        #expect(try continuing.status().state == .migrated)
        continuing.close()
    }

    /// A live resumable send that breaks leaves the guest running with its dirty log on, for the one continuation
    /// that takes the journal and the log over; a sender that leaves no journal takes the terms and the log with it.
    @Test func aBrokenLiveSendKeepsTheDirtyLogAndJournalForItsContinuation() throws {
        let machine = try SendCustodyTests.Served()
        defer { machine.close() }
        var live = Self.terms(window: 60)
        live.mode = "live"
        live.pauseTime = 0
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.sendResumable(live)
        _ = try sender.dirtyLogStart(manualClear: true)
        #expect { try sender.sendJournal(stream: "s1", attempt: 2, journal: [9]) } throws: { "\($0)".contains("whose send 2") }
        try sender.sendJournal(stream: "s1", attempt: 1, journal: [1, 2, 3])
        try sender.sendFinish(migrated: false, destination: nil, delivered: true)
        sender.close()
        #expect(SendCustodyTests().eventually { (try? machine.connect().status().resumable?.expires) != nil })
        #expect(machine.state == .running)
        #expect(machine.served.machine.record.withLock { $0.dirtyLogging }, "the log outlives the send")
        let intruder = try machine.connect()
        #expect { try intruder.dirtyLogStart(manualClear: true) } throws: { "\($0)".contains("kept for a continuation") }
        intruder.close()

        let continuing = try machine.connect()
        let continued = try continuing.sendContinue(stream: "s1", attempt: 1, force: false)
        #expect(continued.journal == [1, 2, 3] && continued.manualClear != nil && continued.attempt == 2)
        _ = try continuing.dirtyLogFetch(segment: 0)
        // Nobody else may take the kept log meanwhile, nor a second continuation start.
        let other = try machine.connect()
        #expect { try other.sendContinue(stream: "s1", attempt: 2, force: true) } throws: {
            "\($0)".contains("being sent already")
        }
        other.close()
        // Killed without a journal: the terms go, and the log with them.
        continuing.close()
        #expect(SendCustodyTests().eventually { !machine.served.machine.record.withLock { $0.dirtyLogging } })
        let user = try machine.connect()
        defer { user.close() }
        #expect(try user.status().resumable == nil)
        #expect { try user.sendContinue(stream: "s1", attempt: 2, force: false) } throws: {
            "\($0)".contains("its sender left no journal of what it sent")
        }
    }
}
