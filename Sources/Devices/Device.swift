import MachineDescription

/// An emulated device: the ranges it answers on the bus, and its state as one versioned chunk named after it.
///
/// A device never sees KVM: it reaches guest memory through `GuestMemoryAccess` and raises interrupts through
/// `InterruptLine`s from its `DeviceContext`. Adding one is a new conformance plus a line in the VMM's catalog.
public protocol Device: AnyObject, Sendable {
    /// The model name a `DeviceConfig` carries, e.g. `uart16550`; a receiver refuses kinds it does not know.
    static var kind: String { get }
    /// Version of the state layout `saveState` writes; a chunk of another version is refused by name.
    static var stateVersion: UInt32 { get }
    /// The configuration keys the device understands; a configuration with any other is refused, since the device
    /// could not honour it.
    static var settingKeys: Set<String> { get }

    /// Builds the device a configuration describes; refuses settings it cannot honour, in one line.
    init(config: DeviceConfig, context: DeviceContext) throws

    /// The instance name, unique in a machine (`uart0`); its state chunk carries it.
    var name: String { get }
    /// Where the device answers; the bus refuses overlaps.
    var regions: [IORegion] { get }

    /// A read at `access`; fills all of `data` (the access width).
    func read(_ access: IOAccess, into data: UnsafeMutableRawBufferPointer)
    func write(_ access: IOAccess, from data: UnsafeRawBufferPointer)

    /// The machine is pausing: finish or park work that would change guest memory or device state.
    func pause()
    /// The machine runs again.
    func resume()
    /// The machine is destroyed: end the device's threads. Nothing is called afterwards.
    func stop()
    /// Dirty logging (a live migration) starts or stops: a device that changes guest state behind KVM's back
    /// tracks what it changes while this is on.
    func setDirtyLogging(_ on: Bool)

    /// The device's state, to be carried as one chunk of version `stateVersion`.
    func saveState() -> [UInt8]
    /// Refuses a chunk that does not fit this device, saying what was expected; changes nothing. Every device has
    /// one (there is no default): a received chunk is never restored unchecked.
    func checkState(_ bytes: [UInt8]) throws
    /// Restores a checked chunk and re-raises any interrupt line it had asserted.
    func restoreState(_ bytes: [UInt8]) throws
}

extension Device {
    public func pause() {}
    public func resume() {}
    public func stop() {}
    public func setDirtyLogging(_ on: Bool) { _ = on }
}

/// What a machine lends its devices.
public struct DeviceContext: Sendable {
    /// Guest RAM by guest-physical address.
    public var memory: any GuestMemoryAccess
    public var vcpuCount: Int
    /// Where serial output and notes go.
    public var console: ConsoleLog
    /// The machine's interrupt line `irq` (a GSI of its interrupt controller).
    public var interruptLine: @Sendable (UInt32) throws -> any InterruptLine
    /// Sleeps a vCPU thread, ending early when the machine pauses.
    public var pacer: any Pacer
    /// The machine's disks by name, opened.
    public var disks: [String: DiskImage]

    public init(
        memory: any GuestMemoryAccess, vcpuCount: Int, console: ConsoleLog,
        interruptLine: @escaping @Sendable (UInt32) throws -> any InterruptLine, pacer: any Pacer,
        disks: [String: DiskImage] = [:]
    ) {
        self.memory = memory
        self.vcpuCount = vcpuCount
        self.console = console
        self.interruptLine = interruptLine
        self.pacer = pacer
        self.disks = disks
    }
}

/// Guest RAM as devices see it: by guest-physical address.
public protocol GuestMemoryAccess: Sendable {
    /// Host address of `length` bytes at guest-physical `address`, when they lie inside one RAM segment.
    func pointer(guestPhysical address: UInt64, length: Int) -> UnsafeMutableRawPointer?
    /// A device wrote these bytes: KVM's dirty log cannot see writes made outside the guest, so a live
    /// migration learns of them here.
    func noteWritten(guestPhysical address: UInt64, length: Int)
}

/// A level-triggered interrupt line of the machine's interrupt controller.
public protocol InterruptLine: Sendable {
    func set(_ high: Bool)
}

/// Sleeps the calling vCPU thread, for devices that pace their guest.
public protocol Pacer: Sendable {
    /// Sleeps up to `nanoseconds`, returning early when the machine pauses.
    func sleep(nanoseconds: UInt64)
}

/// Why a device refused its configuration or a state chunk; names the device.
public struct DeviceError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ device: String, _ message: String) { description = "device \(UntrustedText.quote(device)): \(message)" }
}

extension DeviceConfig {
    /// A numeric setting (`0x3f8` or `1016`); throws naming the device and the key when absent or not a number.
    public func number(_ key: String, in range: ClosedRange<UInt64> = 0...UInt64.max) throws -> UInt64 {
        guard let text = configuration[key] else { throw DeviceError(name, "configuration has no \(key)") }
        let value = text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
        guard let value, range.contains(value) else {
            throw DeviceError(
                name,
                "\(UntrustedText.escape(key)) \(UntrustedText.quote(text)) is not a number in \(range.lowerBound)...\(range.upperBound)"
            )
        }
        return value
    }
}
