import MachineDescription
import Migration
import SystemPackage
import VMControl

#if canImport(Glibc)
    import Glibc
#endif

/// A running vmrun, sent through its control socket. Pages are read from its memfd, mapped here;
/// bitmaps and state come over the socket because KVM answers VM ioctls only in vmrun's process.
public final class ControlSocketSource: MigrationSource {
    private let client: ControlClient

    public init(name: String, runDirectory: RunDirectory) throws {
        client = try ControlClient.connect(name: name, runDirectory: runDirectory)
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
    public func resume() throws { try client.resume() }
    public func saveState() throws -> MachineState { try client.saveState() }
    public func dirtyLogStart() throws -> Bool { try client.dirtyLogStart(manualClear: true) }
    public func dirtyLogFetch(segment: Int) throws -> [UInt64] { try client.dirtyLogFetch(segment: segment) }
    public func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        try client.dirtyLogClear(segment: segment, firstPage: firstPage, bitmap: bitmap)
    }
    public func dirtyLogStop() throws { try client.dirtyLogStop() }
    public func setThrottle(percent: Int) throws { try client.setThrottle(percent: percent) }
}

/// A machine created by `vmrun --incoming` for a stream being received. This connection owns it:
/// should vmrecv die before `resume`, vmrun sees the connection close and destroys the machine.
///
/// Its disks are files this receiver creates (`IncomingDisks`) before vmrun starts: blocks land in them here,
/// they reach stable storage before the state goes in, and a receive that fails removes them.
public final class IncomingMachine: MigrationDestination {
    public let memory: any GuestMemory
    private let client: ControlClient
    private let disks: IncomingDisks

    /// Creates the disks, starts `vmrun --incoming NAME` with `config` and connects to it as its owner.
    public init(config: MachineConfig, runDirectory: RunDirectory, vmrun: String, disks placement: DiskPlacementChoice) throws {
        let disks = try IncomingDisks(config: config, placement: placement)
        do {
            let json = try MachineConfigJSON.encode(disks.config)
            let result = try ChildProcess.run(
                vmrun, arguments: ["--incoming", "--run-dir", runDirectory.path, config.name],
                input: json)
            guard result.status == 0 else {
                let reason = result.lastErrorLine ?? "vmrun exited with status \(result.status)"
                throw MigrationError(reason)
            }
        } catch {
            disks.remove()
            throw error
        }
        let client: ControlClient
        do {
            client = try ControlClient.connect(name: config.name, runDirectory: runDirectory, ownIncoming: true)
        } catch {
            disks.remove()
            throw error
        }
        do {
            let ram = try MemoryFileGuestMemory(descriptor: try client.memoryFile(), segments: config.segments, writable: true)
            memory = MachineAreas(memory: ram, disks: disks.config.disks, stores: try disks.stores())
        } catch {
            try? client.destroy()
            client.close()
            disks.remove()
            throw error
        }
        self.client = client
        self.disks = disks
    }

    deinit { client.close() }

    /// The disks reach stable storage first: the guest must never run ahead of its disk.
    public func restore(_ state: MachineState) throws {
        try disks.sync()
        try client.restoreState(state)
    }

    public func resume() throws { try client.resume() }

    public func abandon() {
        try? client.destroy()
        client.close()
        disks.remove()
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
