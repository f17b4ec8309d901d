import Glibc
import MachineDescription
import SystemSupport
import Testing
import VMControl

@testable import VMM

/// The control server against a fake machine, over real sockets in a temporary run directory.
@Suite struct ControlServerTests {
    @Test func everyRequestRoundTrips() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory)
        let client = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(client.pid == getpid())
        #expect(client.name == "fake")

        #expect(try client.status().vcpus == [VCPUStatus(tick: 7, checksPassed: 3, checksFailed: 0)])
        let (config, host) = try client.describe()
        #expect(config == served.machine.config)
        #expect(host == served.machine.host)

        let memory = try client.memoryFile()
        #expect(lseek(memory.rawValue, 0, SEEK_END) == 1 << 20)
        let marker: [UInt8] = [1, 2, 3]
        _ = marker.withUnsafeBytes { pwrite(served.machine.memoryFile, $0.baseAddress, 3, 4096) }
        var readBack = [UInt8](repeating: 0, count: 3)
        _ = readBack.withUnsafeMutableBytes { pread(memory.rawValue, $0.baseAddress, 3, 4096) }
        #expect(readBack == marker)
        try memory.close()

        #expect(try client.dirtyLogStart(manualClear: true))
        #expect(try client.dirtyLogFetch(segment: 0) == [0x8000_0000_0000_0001, 0])
        try client.dirtyLogClear(segment: 0, firstPage: 64, bitmap: [0b101])
        #expect(served.machine.record.withLock { $0.clears } == [.init(segment: 0, firstPage: 64, bitmap: [0b101])])
        try client.dirtyLogStop()
        #expect(served.machine.record.withLock { $0.dirtyLogging } == false)

        try client.pause()
        #expect(try client.status().state == .paused)
        #expect(try client.saveState() == served.machine.saved)
        try client.resume()
        #expect(try client.status().state == .running)
        try client.pause()
        let requested = HostClock.realtimeNanoseconds()
        let resumedAt = try #require(try client.resumeStamped(), "a stamped resume says when the vCPUs went")
        #expect((requested...HostClock.realtimeNanoseconds()).contains(resumedAt))
        #expect(try client.status().state == .running)

        try client.consoleInput(Array("hi\n".utf8))
        #expect(served.machine.record.withLock { $0.console } == Array("hi\n".utf8))

        try client.destroy()
        #expect(served.finish(stopping: false) == .destroyed)
        #expect(served.machine.record.withLock { $0.destroyed } >= 1)
        #expect(!directory.exists("fake.sock"))
    }

    @Test func aDifferentVersionIsRefused() throws {
        let connection = try RawConnection()
        defer { connection.close() }
        let socket = connection.socket
        try socket.send(ControlRequest.hello(version: 99, ownIncoming: false))
        #expect(
            try replyError(socket)?.contains(
                "protocol version mismatch: vmrun speaks \(ControlProtocol.version), the client speaks 99") == true)
        #expect(try socket.receive() == nil)
    }

    @Test func anOversizeLengthIsRefusedBeforeAllocating() throws {
        let connection = try RawConnection()
        defer { connection.close() }
        let socket = connection.socket
        let header: [UInt8] = [0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]
        _ = header.withUnsafeBytes { send(socket.fd, $0.baseAddress, 8, 0) }
        #expect(try replyError(socket)?.hasPrefix("bad message: JSON length 2147483647") == true)
        #expect(try socket.receive() == nil)
    }

    @Test func unknownAndMalformedRequestsAreErrorsThatKeepTheConnection() throws {
        let connection = try RawConnection()
        defer { connection.close() }
        let socket = connection.socket
        try socket.send(ControlRequest.hello(version: ControlProtocol.version, ownIncoming: false))
        #expect(try replyError(socket) == nil)
        try socket.send(json: Array(#"{"frobnicate":{}}"#.utf8))
        #expect(try replyError(socket) == "unknown request 'frobnicate'")
        try socket.send(json: Array(#"{"dirtyLogFetch":{"segment":"zero"}}"#.utf8))
        #expect(try replyError(socket) == "bad request: malformed arguments for dirtyLogFetch")
        try socket.send(json: Array("[1,2]".utf8))
        #expect(try replyError(socket) == "bad request: not a JSON object naming a request")
        try socket.send(ControlRequest.status)
        #expect(try replyError(socket) == nil)
    }

    @Test func theFirstRequestMustBeHello() throws {
        let connection = try RawConnection()
        defer { connection.close() }
        let (served, socket) = (connection.served, connection.socket)
        try socket.send(ControlRequest.destroy())
        #expect(try replyError(socket) == "the first request must be hello, not destroy")
        #expect(try socket.receive() == nil)
        #expect(served.machine.record.withLock { $0.destroyed } == 0)
    }

    @Test func requestsInTheWrongStateAreErrors() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory)
        defer { _ = served.finish() }
        let client = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(throws: ControlError("cannot saveState 'fake': it is running; pause it first")) { try client.saveState() }
        #expect(throws: ControlError("cannot restoreState 'fake': it is not incoming")) {
            try client.restoreState(MachineState(kernel: [], devices: []))
        }
        #expect(throws: ControlError("dirty logging is not started on this connection")) { try client.dirtyLogFetch(segment: 0) }
        try client.dirtyLogStart(manualClear: false)
        #expect(throws: ControlError("no memory segment 5: 'fake' has 1")) { try client.dirtyLogFetch(segment: 5) }
        #expect(throws: ControlError("'fake' is not an incoming machine")) {
            try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory, ownIncoming: true)
        }
        let other = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(throws: ControlError("dirty logging on 'fake' is already in use by another connection")) {
            try other.dirtyLogStart(manualClear: true)
        }
        client.close()
        // The connection that started dirty logging is gone, so logging stops and is free again.
        try other.dirtyLogStart(manualClear: true)
        #expect(served.machine.record.withLock { $0.dirtyLogging })
    }

    @Test func dirtyLogClearingIsManualOnlyWhenAskedForAndSupported() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory)
        defer { _ = served.finish() }
        let client = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(throws: ControlError("dirty logging is not started on this connection")) {
            try client.dirtyLogClear(segment: 0, firstPage: 0, bitmap: [1])
        }
        #expect(try client.dirtyLogStart(manualClear: false) == false)
        #expect(
            throws: ControlError("dirtyLogClear failed: dirty logging was started without manual clearing: fetches clear the log")
        ) {
            try client.dirtyLogClear(segment: 0, firstPage: 0, bitmap: [1])
        }
        #expect(try client.dirtyLogStart(manualClear: true))
        #expect(throws: ControlError("no memory segment 3: 'fake' has 1")) {
            try client.dirtyLogClear(segment: 3, firstPage: 0, bitmap: [1])
        }
        let other = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(throws: ControlError("dirty logging is not started on this connection")) {
            try other.dirtyLogClear(segment: 0, firstPage: 0, bitmap: [1])
        }
        #expect(served.machine.record.withLock { $0.clears.isEmpty })
    }

    /// A client from before manual clearing says `{"dirtyLogStart":{}}`, gets `done`, and its fetches clear.
    @Test func anOldClientGetsClearingAtFetch() throws {
        let connection = try RawConnection()
        defer { connection.close() }
        let (served, socket) = (connection.served, connection.socket)
        try socket.send(ControlRequest.hello(version: ControlProtocol.version, ownIncoming: false))
        #expect(try replyError(socket) == nil)
        try socket.send(json: Array(#"{"dirtyLogStart":{}}"#.utf8))
        let reply = try #require(try socket.receive())
        #expect(try MessageSocket.decode(ControlReply.self, from: reply.json) == .ok(.done))
        #expect(served.machine.record.withLock { $0.dirtyLogging && !$0.manualClear })
        try socket.send(json: Array(#"{"dirtyLogClear":{"segment":0,"firstPage":0}}"#.utf8), payload: [1, 2, 3])
        #expect(try replyError(socket) == "bad dirty bitmap: 3 bytes is not a whole number of 64-bit words")
    }

    @Test func aMachineWithoutManualClearingSaysSo() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory, machine: FakeMachine(supportsManualClear: false))
        defer { _ = served.finish() }
        let client = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(try client.dirtyLogStart(manualClear: true) == false)
    }

    @Test func anIncomingMachineIsRestoredOnlyByItsOwner() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory, machine: FakeMachine(state: .incoming))
        let owner = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory, ownIncoming: true)
        #expect(owner.initialState == .incoming)
        #expect(throws: ControlError("the incoming machine 'fake' is already owned by another connection")) {
            try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory, ownIncoming: true)
        }
        let onlooker = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(throws: ControlError("only the connection that owns the incoming machine 'fake' may write its memory")) {
            try onlooker.memoryFile()
        }
        #expect(throws: ControlError("cannot resume 'fake': its state has not been restored yet")) { try owner.resume() }
        #expect(throws: ControlError("cannot dirtyLogStart 'fake': it is incoming")) {
            try owner.dirtyLogStart(manualClear: true)
        }
        #expect(throws: ControlError("only the connection that owns the incoming machine 'fake' may restore it")) {
            try onlooker.restoreState(served.machine.saved)
        }
        try owner.memoryFile().close()
        try owner.restoreState(served.machine.saved)
        #expect(served.machine.record.withLock { $0.restored } == served.machine.saved)
        #expect(throws: ControlError("cannot restoreState 'fake': it is not incoming")) {
            try owner.restoreState(served.machine.saved)
        }
        owner.close()
        // Restored whole, it is an ordinary paused machine: its owner leaving no longer matters.
        try onlooker.resume()
        #expect(try onlooker.status().state == .running)
        #expect(served.machine.record.withLock { $0.destroyed } == 0)
        #expect(served.finish() == .stopped)
    }

    @Test func anOwnerLeavingBeforeRestoreDestroysTheIncomingMachine() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory, machine: FakeMachine(state: .incoming))
        let owner = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory, ownIncoming: true)
        try owner.memoryFile().close()
        owner.close()
        #expect(served.finish(stopping: false) == .ownerLeft)
        #expect(served.machine.record.withLock { $0.destroyed } == 1)
        #expect(!directory.exists("fake.sock"))
    }

    @Test func anIncomingMachineNobodyClaimsIsDestroyed() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(
            directory: directory, machine: FakeMachine(state: .incoming), ownerTimeout: .milliseconds(300))
        // An onlooker does not count as an owner.
        let onlooker = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        defer { onlooker.close() }
        #expect(served.finish(stopping: false) == .ownerNeverCame)
        #expect(served.machine.record.withLock { $0.destroyed } == 1)
        #expect(!directory.exists("fake.sock"))
    }

    @Test func aTakenNameIsRefusedWithTheOwnersPid() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory)
        defer { _ = served.finish() }
        #expect(throws: ControlError("a VM named 'fake' already exists (running, pid \(getpid()))")) {
            try ControlSocket.claim(name: "fake", runDirectory: directory.runDirectory)
        }
    }

    @Test func aSocketLeftByADeadProcessIsTakenOver() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        // A bound socket nobody listens on is what a killed vmrun leaves behind.
        let path = directory.runDirectory.socketPath(for: "fake")
        let stale = try UnixSocket.listen(path: path)
        close(stale)
        #expect(throws: ControlError("no VM named 'fake' (its vmrun is gone; stale socket at \(path))", code: .connectionRefused))
        {
            try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        }
        let served = try ServerThread(directory: directory)
        let client = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(try client.status().name == "fake")
        #expect(served.finish() == .stopped)
        #expect(served.machine.record.withLock { $0.destroyed } == 1)
        #expect(!directory.exists("fake.sock"))
    }

    @Test func anUnknownMachineIsAClearError() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.runDirectory.socketPath(for: "nosuch")
        #expect(throws: ControlError("no VM named 'nosuch' (no socket at \(path))", code: .noSuchFileOrDirectory)) {
            try ControlClient.connect(name: "nosuch", runDirectory: directory.runDirectory)
        }
        #expect(throws: ControlError.self) { try ControlClient.connect(name: "../etc", runDirectory: directory.runDirectory) }
    }

    @Test func aStalledClientDoesNotBlockOthers() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let served = try ServerThread(directory: directory)
        defer { _ = served.finish() }
        let staller = try UnixSocket.connect(path: directory.runDirectory.socketPath(for: "fake"))
        defer { staller.close() }
        // Half a header: the server waits for the rest only up to its stall limit, per connection.
        let half: [UInt8] = [5, 0, 0, 0]
        _ = half.withUnsafeBytes { send(staller.fd, $0.baseAddress, 4, 0) }
        let start = ContinuousClock.now
        let client = try ControlClient.connect(name: "fake", runDirectory: directory.runDirectory)
        #expect(try client.status().state == .running)
        #expect(ContinuousClock.now - start < .seconds(ControlServer.stallSeconds + 5))
    }

    /// The error message of the next reply, or nil for an ok reply.
    private func replyError(_ socket: MessageSocket) throws -> String? {
        guard let message = try socket.receive() else { throw ControlError("no reply") }
        if case .error(let text) = try MessageSocket.decode(ControlReply.self, from: message.json) { return text }
        return nil
    }
}
