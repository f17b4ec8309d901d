import Glibc
import MachineDescription
import Testing
import VMControl

@testable import VMM

/// What the control server does with sends, over real sockets: exactly one copy runs whatever clients do, and a
/// sender that vanishes leaves its source resumed (before END) or paused with the outcome on record (after).
@Suite struct SendCustodyTests {
    /// A served fake machine and a connection to it; everything is ended by `close`.
    final class Served {
        let directory = TemporaryDirectory()
        let served: ServerThread
        init(state: RunState = .running) throws {
            served = try ServerThread(directory: directory, machine: FakeMachine(state: state))
        }
        func connect() throws -> ControlClient { try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory) }
        var state: RunState { served.machine.record.withLock { $0.state } }
        func close() {
            _ = served.finish()
            directory.remove()
        }
    }

    /// Waits until the server has seen a connection close (it polls the socket on its own thread).
    func eventually(_ condition: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<200 {
            if try condition() { return true }
            usleep(10_000)
        }
        return try condition()
    }

    @Test func aCompleteSendMakesTheSourceMigratedAndResumeOrResendRefuseIt() throws {
        let machine = try Served()
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.pause()
        #expect(try sender.status().send?.pausedBySender == true)
        try sender.sendCommit()
        try sender.sendFinish(migrated: true, destination: "file /tmp/x.vms")
        sender.close()

        let user = try machine.connect()
        let status = try user.status()
        #expect(status.state == .migrated)
        #expect(status.migration?.stream == "s1")
        #expect(status.stateDescription.hasPrefix("migrated (stream s1, "))
        #expect(status.stateDescription.hasSuffix(", to file /tmp/x.vms)"))
        #expect { try user.resume() } throws: {
            "\($0)".contains("VM 'fake' was migrated (stream s1") && "\($0)".contains("use vmctl resume --force")
        }
        #expect { try user.sendStart(stream: "s2", force: false) } throws: {
            "\($0)".contains("sending it again could start a second copy; if that copy is gone, use --force")
        }
        #expect(machine.state == .paused, "a refused resume changes nothing")
        // A client that skips custody (as one of protocol 1 does) cannot read a stream's makings either.
        #expect { try user.saveState() } throws: { "\($0)".contains("saveState is refused outside a send of it") }
        #expect { try user.dirtyLogStart(manualClear: false) } throws: {
            "\($0)".contains("dirtyLogStart is refused outside a send of it")
        }
        try user.resume(force: true)
        #expect(machine.state == .running)
        #expect(try user.status().state == .running)
        #expect(try user.status().migration == nil)
    }

    @Test func aSenderThatVanishesBeforeEndLeavesItsSourceRunning() throws {
        let machine = try Served()
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.pause()
        #expect(machine.state == .paused)
        sender.close()  // as if killed with SIGKILL in the final round
        #expect(eventually { machine.state == .running }, "no copy can run from a stream without END")
        let status = try machine.connect().status()
        #expect(status.state == .running)
        #expect(status.send == nil)
    }

    @Test func aSenderThatVanishesAfterCommitLeavesItsSourcePausedWithTheOutcomeUnknown() throws {
        let machine = try Served()
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.pause()
        try sender.sendCommit()
        sender.close()
        let user = try machine.connect()
        #expect(try eventually { try user.status().send?.senderGone == true })
        let status = try user.status()
        #expect(status.state == .paused)
        #expect(
            status.stateDescription.contains(
                "paused by \(ControlClient.identity) for stream s1, sender gone after the stream was complete, outcome unknown: check the destination before resuming"
            ))
        #expect { try user.resume() } throws: { "\($0)".contains("use vmctl resume --force") }
        #expect { try user.sendStart(stream: "s2", force: false) } throws: { "\($0)".contains("use --force") }
        try user.resume(force: true)
        #expect(machine.state == .running)
        #expect(try user.status().send == nil)
    }

    @Test func onlyTheSenderOrAForcedResumeUndoesTheSendsPause() throws {
        let machine = try Served()
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.pause()
        let user = try machine.connect()
        #expect { try user.resume() } throws: { "\($0)".contains("interrupt the sender instead") }
        #expect { try user.sendStart(stream: "s2", force: true) } throws: { "\($0)".contains("is being sent already") }
        #expect { try user.sendCommit() } throws: { "\($0)".contains("only from the connection that started the send") }
        try sender.resume()  // the sender undoing its own pause (a failed send)
        #expect(machine.state == .running)
        try sender.sendFinish(migrated: false, destination: nil)
        #expect(try user.status().send == nil)
        #expect(try user.status().state == .running)
    }

    @Test func aSourcePausedBeforeTheSendStaysPausedWhenTheSenderVanishes() throws {
        let machine = try Served(state: .paused)
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        sender.close()
        let user = try machine.connect()
        #expect(try eventually { try user.status().send == nil })
        #expect(machine.state == .paused, "vmrun never resumes what the sender did not pause")
        try user.resume()
        #expect(machine.state == .running)
    }

    @Test func aVersion1ClientSeesMigratedAsPausedAndStillCannotResumeIt() throws {
        let machine = try Served()
        defer { machine.close() }
        let sender = try machine.connect()
        try sender.sendStart(stream: "s1", force: false)
        try sender.pause()
        try sender.sendCommit()
        try sender.sendFinish(migrated: true, destination: nil)
        let socket = try UnixSocket.connect(path: machine.directory.runDirectory.socketPath(for: "fake"))
        let old = try ControlClient.handshake(socket: socket, ownIncoming: false, version: 1)
        defer { old.close() }
        #expect(old.version == 1)
        #expect(old.initialState == .paused)
        #expect(try old.status().state == .paused)
        #expect { try old.resume() } throws: { "\($0)".contains("was migrated") }
        #expect { try old.sendStart(stream: "s2", force: true) } throws: { "\($0)".contains("speaks control protocol 1") }
    }

    @Test func aCrashedMachineIsNeitherResumedNorSent() throws {
        let machine = try Served(state: .crashed)
        defer { machine.close() }
        let user = try machine.connect()
        #expect(try user.status().state == .crashed)
        #expect { try user.resume(force: true) } throws: { "\($0)".contains("has crashed") }
        #expect { try user.sendStart(stream: "s1", force: true) } throws: { "\($0)".contains("has crashed") }
    }
}
