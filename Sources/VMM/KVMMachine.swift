import MachineDescription

/// How `vmrun` wants a machine set up, beyond its `MachineConfig`.
public struct MachineOptions: Sendable {
    /// File whose bytes preload guest RAM (segments back to back), for benchmarks.
    public var memoryImage: String?
    /// Create the machine but do not run its vCPUs (as `qemu -S`).
    public var startPaused: Bool
    /// Where the UART's output is appended.
    public var consoleLog: String
    /// Bytes of guest RAM the bundled guest works over, split between its vCPUs.
    public var guestWorkingSet: UInt64
    /// Bytes per second the guest dirties in all; 0 means as fast as it can.
    public var guestDirtyRate: UInt64

    public init(memoryImage: String? = nil, startPaused: Bool = false, consoleLog: String,
                guestWorkingSet: UInt64 = 64 << 20, guestDirtyRate: UInt64 = 0) {
        self.memoryImage = memoryImage
        self.startPaused = startPaused
        self.consoleLog = consoleLog
        self.guestWorkingSet = guestWorkingSet
        self.guestDirtyRate = guestDirtyRate
    }
}

/// A machine on KVM running the bundled guest. (Interface fixed; body lands with the KVM work.)
public final class KVMMachine: ControlledMachine {
    public let config: MachineConfig
    public let host: HostSpec
    public let memoryFile: Int32

    /// Creates and starts (unless `options.startPaused`) a new machine running the bundled guest.
    public static func boot(name: String, vcpus: UInt32, memorySize: UInt64, options: MachineOptions) throws -> KVMMachine {
        throw MachineNotBuilt()
    }

    /// Creates a machine from a received configuration, in the incoming state: memory and vCPUs
    /// exist, nothing runs until `restoreState` and `resume`. Refuses devices it does not know.
    public static func incoming(config: MachineConfig, options: MachineOptions) throws -> KVMMachine {
        throw MachineNotBuilt()
    }

    private init() { fatalError() }

    public func status() -> MachineStatus { fatalError() }
    public func pause() throws {}
    public func resume() throws {}
    public func destroy() {}
    public func dirtyLogStart() throws {}
    public func dirtyLogFetchAndClear(segment: Int) throws -> [UInt64] { [] }
    public func dirtyLogStop() throws {}
    public func setThrottle(percent: Int) throws {}
    public func saveState() throws -> MachineState { MachineState(kernel: [], devices: []) }
    public func restoreState(_ state: MachineState) throws {}
    public func consoleInput(_ bytes: [UInt8]) throws {}
}

struct MachineNotBuilt: Error {}
