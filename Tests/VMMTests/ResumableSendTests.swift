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
        let (terms, attempt) = try continuing.sendContinue(stream: "s1", attempt: 1, force: false)
        #expect(terms == Self.terms(window: 1) && attempt == 2)
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
}
