import MachineDescription
import Migration
import Synchronization
import SystemPackage
import VMControl

#if canImport(Glibc)
    import Glibc
#endif

/// A running vmrun, sent through its control socket. Pages are read from its memfd, mapped here;
/// bitmaps and state come over the socket because KVM answers VM ioctls only in vmrun's process.
public final class ControlSocketSource: MigrationSource {
    private let client: ControlClient
    /// Resume even a machine whose send is in progress: for the interrupt handler, which undoes its own send's
    /// pause over a connection of its own.
    private let resumesWithForce: Bool

    public init(name: String, runDirectory: RunDirectory, resumesWithForce: Bool = false) throws {
        client = try ControlClient.connect(name: name, runDirectory: runDirectory)
        self.resumesWithForce = resumesWithForce
    }

    deinit { client.close() }

    public func describe() throws -> (config: MachineConfig, host: HostSpec) { try client.describe() }
    public func isRunning() throws -> Bool { try client.status().state == .running }
    public func memory(_ config: MachineConfig) throws -> any GuestMemory {
        try MemoryFileGuestMemory(descriptor: try client.memoryFile(), segments: config.segments, writable: false)
    }
    public func disk(_ index: Int, _ config: DiskConfig) throws -> any GuestMemory {
        try MemoryFileGuestMemory(
            descriptor: try client.diskFile(index),
            segments: [MemorySegment(name: config.name, guestPhysicalBase: 0, size: config.size)],
            writable: false)
    }
    public func diskWrittenFetch(_ index: Int) throws -> [UInt64] { try client.diskWrittenFetch(index) }
    public func pause() throws { try client.pause() }
    public func resume() throws { try client.resume(force: resumesWithForce) }
    public func saveState() throws -> MachineState { try client.saveState() }
    public func dirtyLogStart() throws -> Bool { try client.dirtyLogStart(manualClear: true) }
    public func dirtyLogFetch(segment: Int) throws -> [UInt64] { try client.dirtyLogFetch(segment: segment) }
    public func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        try client.dirtyLogClear(segment: segment, firstPage: firstPage, bitmap: bitmap)
    }
    public func dirtyLogStop() throws { try client.dirtyLogStop() }
    public func setThrottle(percent: Int) throws { try client.setThrottle(percent: percent) }

    /// A vmrun of protocol version 1 knows no send custody: the send goes on without it (see `ControlProtocol`).
    public func beginSend(stream: String, force: Bool) throws {
        if client.knowsSendCustody { try client.sendStart(stream: stream, force: force) }
    }
    public func commitSend() throws {
        if client.knowsSendCustody { try client.sendCommit() }
    }
    public func finishSend(migrated: Bool, destination: String?) throws -> Bool {
        guard client.knowsSendCustody else { return false }
        try client.sendFinish(migrated: migrated, destination: destination)
        return migrated
    }
    public func finishSend(migrated: Bool, destination: String?, delivered: Bool) throws -> Bool {
        guard client.knowsSendCustody else { return false }
        try client.sendFinish(migrated: migrated, destination: destination, delivered: delivered)
        return migrated
    }
    public func makeResumable(_ terms: ResumeTerms) throws {
        guard client.knowsSendCustody else { throw MigrationError("vmrun (pid \(client.pid)) cannot keep a resumable send") }
        try client.sendResumable(terms)
    }
    public func continueSend(stream: String, attempt: UInt32, force: Bool) throws -> SendContinuation {
        guard client.knowsSendCustody else { throw MigrationError("vmrun (pid \(client.pid)) cannot continue a stream") }
        return try client.sendContinue(stream: stream, attempt: attempt, force: force)
    }
    public func keepJournal(stream: String, attempt: UInt32, journal: [UInt8]) throws {
        guard client.knowsSendCustody else { throw MigrationError("vmrun (pid \(client.pid)) cannot keep a resumable send") }
        try client.sendJournal(stream: stream, attempt: attempt, journal: journal)
    }
}

/// A machine created by `vmrun --incoming` for a stream being received. This connection owns it:
/// should vmrecv die before `resume`, vmrun sees the connection close and destroys the machine.
///
/// Its disks are files this receiver creates (`IncomingDisks`) before vmrun starts: blocks land in them here,
/// they reach stable storage before the state goes in, and a receive that fails removes them.
public final class IncomingMachine: MigrationDestination {
    private let abandoned = Mutex(false)
    public let memory: any GuestMemory
    private let client: ControlClient
    private let disks: IncomingDisks
    private let name: String

    /// Creates the disks, starts `vmrun --incoming NAME` with `config` (on huge pages with `hugePages`) and connects
    /// to it as its owner. Its refusals come back as they are (`this host cannot run VM 'NAME': why`), without
    /// vmrun's name in front.
    public init(
        config: MachineConfig, runDirectory: RunDirectory, vmrun: String, disks placement: DiskPlacementChoice,
        hugePages: Bool = false
    ) throws {
        let disks = try IncomingDisks(config: config, placement: placement)
        let started: Int32?
        do {
            let json = try MachineConfigJSON.encode(disks.config)
            let result = try ChildProcess.run(
                vmrun,
                arguments: ["--incoming"] + (hugePages ? ["--hugepages"] : []) + ["--run-dir", runDirectory.path, config.name],
                input: json)
            guard result.status == 0 else {
                throw MigrationError(result.lastErrorLine ?? "vmrun exited with status \(result.status)")
            }
            started = Self.startedPid(result.standardOutput)
        } catch {
            disks.remove()
            throw error
        }
        let client: ControlClient
        do {
            client = try ControlClient.connect(name: config.name, runDirectory: runDirectory, ownIncoming: true)
        } catch {
            // Someone else's machine may answer on the name by now: end only the process we started.
            if let started {
                kill(started, SIGTERM)
                waitUntilGone(started)
            }
            disks.remove()
            throw error
        }
        do {
            let ram = try MemoryFileGuestMemory(
                descriptor: try client.memoryFile(), segments: config.segments, writable: true, storingBehind: true)
            memory = MachineAreas(memory: ram, disks: disks.config.disks, stores: try disks.stores())
        } catch {
            _ = try? client.destroy()
            client.close()
            waitUntilGone(client.pid)
            disks.remove()
            throw error
        }
        self.client = client
        self.disks = disks
        name = config.name
    }

    /// Takes up the partial receive the incoming machine `name` holds (`vmrecv -s` before): owns it again, maps its
    /// memory and reopens its disks. Returns it with the receiver's checkpoint.
    public static func takeUp(name: String, runDirectory: RunDirectory) throws -> (IncomingMachine, [UInt8]) {
        try checkHoldsPartial(name: name, runDirectory: runDirectory, doing: "to continue")
        let client: ControlClient
        do {
            client = try ControlClient.connect(name: name, runDirectory: runDirectory, ownIncoming: true)
        } catch {
            throw MigrationError("there is no partial receive named '\(name)' here to continue (\(error))")
        }
        do {
            guard client.knowsSendCustody else { throw MigrationError("vmrun (pid \(client.pid)) keeps no partial receive") }
            let (partial, checkpoint) = try client.partialState()
            let (config, _) = try client.describe()
            let disks = try IncomingDisks(reopening: config)
            // Pages still to come are fresh only in the first round (vmsend numbers it 0).
            let ram = try MemoryFileGuestMemory(
                descriptor: try client.memoryFile(), segments: config.segments, writable: true,
                storingBehind: partial.round == 0)
            let memory = MachineAreas(memory: ram, disks: config.disks, stores: try disks.stores())
            return (IncomingMachine(client: client, memory: memory, disks: disks, name: name), checkpoint)
        } catch {
            // The partial receive stays as it was: closing the connection leaves it to the next owner.
            client.close()
            throw error
        }
    }

    private init(client: ControlClient, memory: any GuestMemory, disks: IncomingDisks, name: String) {
        self.client = client
        self.memory = memory
        self.disks = disks
        self.name = name
    }

    deinit { client.close() }

    public func keepPartial(_ partial: PartialReceive, checkpoint: [UInt8]) throws {
        try client.keepPartial(partial, checkpoint: checkpoint)
    }

    /// Aborts the partial receive the incoming machine `name` holds (`vmrecv -A`): its vmrun and the disk images the
    /// receive created go. Returns what it held.
    public static func abortPartial(name: String, runDirectory: RunDirectory) throws -> PartialReceive {
        try checkHoldsPartial(name: name, runDirectory: runDirectory, doing: "to abort")
        let client: ControlClient
        do {
            client = try ControlClient.connect(name: name, runDirectory: runDirectory, ownIncoming: true)
        } catch {
            throw MigrationError("the partial receive '\(name)' is in use (\(error)); nothing was aborted")
        }
        let partial: PartialReceive
        let disks: IncomingDisks
        do {
            partial = try client.partialState().partial
            disks = try IncomingDisks(reopening: try client.describe().config)
        } catch {
            client.close()
            throw MigrationError("VM '\(name)' holds no partial receive; nothing was aborted (\(error))")
        }
        _ = try? client.destroy()
        client.close()
        waitUntilGone(client.pid)
        disks.remove()
        return partial
    }

    /// Asks before claiming: claiming an incoming machine that holds no partial receive (a receive starting up) and
    /// leaving it would end that receive.
    private static func checkHoldsPartial(name: String, runDirectory: RunDirectory, doing: String) throws {
        guard let client = try? ControlClient.connect(name: name, runDirectory: runDirectory) else {
            throw MigrationError("there is no partial receive named '\(name)' here \(doing)")
        }
        defer { client.close() }
        let status = try client.status()
        guard status.partial != nil else {
            throw MigrationError("VM '\(name)' holds no partial receive (it is \(status.state.rawValue)); nothing \(doing)")
        }
    }

    /// The disks reach stable storage first: the guest must never run ahead of its disk.
    public func restore(_ state: MachineState) throws {
        try disks.sync()
        try client.restoreState(state)
    }

    public func resume() throws -> UInt64? { try client.resumeStamped() }

    /// A guest that crashes as it starts (a stale page under its code, a state its CPU cannot take) does so within a
    /// few milliseconds: the machine is watched for a quarter of a second.
    public func confirmRunning() throws {
        let deadline = ContinuousClock.now + .milliseconds(250)
        repeat {
            let status = try client.status()
            if status.state == .crashed {
                throw MachineStoppedError(
                    "VM '\(name)' crashed right after it was resumed (\(UntrustedText.escape(status.failure ?? "no reason given"))); "
                        + "it is kept, stopped, for inspection: 'vmctl destroy \(name)' removes it")
            }
            usleep(25_000)
        } while ContinuousClock.now < deadline
    }

    /// Destroys the machine and its disks, and waits for its vmrun to exit: when this returns, nothing of it is left.
    /// Once, whichever thread comes first (a failed receive, or an interrupt); a second call waits for the first.
    public func abandon() {
        abandoned.withLock { abandoned in
            guard !abandoned else { return }
            abandoned = true
            _ = try? client.destroy()
            client.close()
            waitUntilGone(client.pid)
            disks.remove()
        }
    }

    /// The pid in vmrun's `'NAME' is waiting for its state (pid N)` line.
    static func startedPid(_ output: String) -> Int32? {
        guard let marker = output.split(separator: "(pid ", maxSplits: 1).dropFirst().first else { return nil }
        return Int32(marker.prefix { $0.isNumber })
    }

    /// `vmrun` beside this executable, else the first on PATH.
    public static func locateVMRun() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if count > 0 {
            let own = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if let slash = own.lastIndex(of: "/") {
                let sibling = String(own[..<slash]) + "/vmrun"
                if access(sibling, X_OK) == 0 { return sibling }
            }
        }
        return "vmrun"
    }
}
