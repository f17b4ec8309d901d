import SystemSupport

/// The virtio-mmio transport's register file (virtio 1.x §4.2.2, version 2 "modern" only): feature negotiation,
/// device status, queue set-up and the interrupt status a device raises its line for. Pure state: the device that
/// owns it serialises access and acts on the `Effect` each write returns.
public struct VirtioMMIORegisters: Sendable, Equatable {
    /// MagicValue: "virt".
    static let magic: UInt32 = 0x7472_6976
    static let version: UInt32 = 2
    /// VendorID: "vmsd".
    static let vendor: UInt32 = 0x6473_6d76
    /// The register window's size; config space starts at 0x100.
    public static let windowSize: UInt64 = 0x200
    public static let configOffset: UInt64 = 0x100

    /// Feature bits every device offers (§6): VIRTIO_F_VERSION_1 (32) and VIRTIO_RING_F_INDIRECT_DESC (28).
    public static let transportFeatures: UInt64 = 1 << 32 | 1 << 28

    /// Device status bits (§2.1).
    public enum Status {
        public static let acknowledge: UInt32 = 1
        public static let driver: UInt32 = 2
        public static let driverOK: UInt32 = 4
        public static let featuresOK: UInt32 = 8
        public static let needsReset: UInt32 = 64
        public static let failed: UInt32 = 128
    }

    /// InterruptStatus bits: a used buffer, a configuration change.
    public static let usedBufferInterrupt: UInt32 = 1
    public static let configChangeInterrupt: UInt32 = 2

    /// What a register write asks of the device.
    public enum Effect: Equatable, Sendable {
        case none
        /// QueueNotify: the driver made buffers available in this queue.
        case notify(queue: Int)
        /// Status 0: everything was reset; the device drops what it was doing.
        case reset
        /// DRIVER_OK: the driver is ready; the device may use its queues.
        case driverReady
        /// InterruptStatus changed: the line follows it.
        case interruptChanged
    }

    public let deviceID: UInt32
    /// What the device offers, transport bits included.
    public let deviceFeatures: UInt64
    public let queueMaximum: UInt16

    public internal(set) var status: UInt32 = 0
    public internal(set) var driverFeatures: UInt64 = 0
    public internal(set) var interruptStatus: UInt32 = 0
    public internal(set) var configGeneration: UInt32 = 0
    public var queues: [SplitQueue]
    var deviceFeaturesSelect: UInt32 = 0
    var driverFeaturesSelect: UInt32 = 0
    var queueSelect: UInt32 = 0

    public init(deviceID: UInt32, features: UInt64, queues: Int, queueMaximum: UInt16) {
        self.deviceID = deviceID
        deviceFeatures = features | Self.transportFeatures
        self.queueMaximum = queueMaximum
        self.queues = Array(repeating: SplitQueue(), count: queues)
    }

    /// Whether the driver finished initialisation and the device may process queues.
    public var isLive: Bool { status & Status.driverOK != 0 && status & Status.needsReset == 0 }
    /// The level of the interrupt line.
    public var interruptAsserted: Bool { interruptStatus != 0 }

    private var selectedQueue: Int? { Int(queueSelect) < queues.count ? Int(queueSelect) : nil }

    /// A 32-bit register read below the config space (§4.2.2: registers are read 32 bits wide).
    public func read(register offset: UInt64) -> UInt32 {
        switch offset {
        case 0x000: return Self.magic
        case 0x004: return Self.version
        case 0x008: return deviceID
        case 0x00c: return Self.vendor
        case 0x010:
            switch deviceFeaturesSelect {
            case 0: return UInt32(truncatingIfNeeded: deviceFeatures)
            case 1: return UInt32(truncatingIfNeeded: deviceFeatures >> 32)
            default: return 0
            }
        case 0x034: return selectedQueue == nil ? 0 : UInt32(queueMaximum)
        case 0x044: return selectedQueue.map { queues[$0].ready ? 1 : 0 } ?? 0
        case 0x060: return interruptStatus
        case 0x070: return status
        case 0x0b0, 0x0b4, 0x0b8, 0x0bc: return 0xffff_ffff  // SHMLen/SHMBase: no shared memory regions
        case 0x0fc: return configGeneration
        default: return 0
        }
    }

    /// A 32-bit register write below the config space; returns what the device must do about it.
    public mutating func write(register offset: UInt64, _ value: UInt32) -> Effect {
        switch offset {
        case 0x014: deviceFeaturesSelect = value
        case 0x020:
            // Only before FEATURES_OK (§3.1.1); the upper half is selected with DriverFeaturesSel 1.
            guard status & Status.featuresOK == 0 else { return .none }
            switch driverFeaturesSelect {
            case 0: driverFeatures = driverFeatures & ~0xffff_ffff | UInt64(value)
            case 1: driverFeatures = driverFeatures & 0xffff_ffff | UInt64(value) << 32
            default: break
            }
        case 0x024: driverFeaturesSelect = value
        case 0x030: queueSelect = value
        case 0x038:
            // QueueNum: a power of two up to the maximum, so ring positions wrap with the 16-bit indices.
            if let queue = selectedQueue, !queues[queue].ready, value > 0, value <= UInt32(queueMaximum), value & (value - 1) == 0
            {
                queues[queue].size = UInt16(value)
            }
        case 0x044:
            if let queue = selectedQueue {
                queues[queue].ready = value == 1 && queues[queue].size > 0
                if queues[queue].ready {
                    queues[queue].nextAvailable = 0
                    queues[queue].nextUsed = 0
                }
            }
        case 0x050: return Int(value) < queues.count ? .notify(queue: Int(value)) : .none
        case 0x064:
            interruptStatus &= ~value
            return .interruptChanged
        case 0x070: return writeStatus(value)
        case 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4:
            guard let queue = selectedQueue, !queues[queue].ready else { return .none }
            let high = offset & 4 != 0
            func merge(_ old: UInt64) -> UInt64 {
                high ? old & 0xffff_ffff | UInt64(value) << 32 : old & ~0xffff_ffff | UInt64(value)
            }
            switch offset & ~4 {
            case 0x080: queues[queue].descriptorTable = merge(queues[queue].descriptorTable)
            case 0x090: queues[queue].driverArea = merge(queues[queue].driverArea)
            default: queues[queue].deviceArea = merge(queues[queue].deviceArea)
            }
        default: break
        }
        return .none
    }

    /// Status writes (§2.1.2, §3.1.1): 0 resets; FEATURES_OK sticks only for features the device offered, with
    /// VERSION_1; DRIVER_OK makes the device live.
    private mutating func writeStatus(_ value: UInt32) -> Effect {
        if value == 0 {
            self = VirtioMMIORegisters(
                deviceID: deviceID, features: deviceFeatures, queues: queues.count, queueMaximum: queueMaximum)
            return .reset
        }
        var accepted = value
        if value & Status.featuresOK != 0 && status & Status.featuresOK == 0 {
            let valid = driverFeatures & ~deviceFeatures == 0 && driverFeatures & (1 << 32) != 0
            if !valid { accepted &= ~Status.featuresOK }
        }
        let becameLive = accepted & Status.driverOK != 0 && status & Status.driverOK == 0
        status = accepted | (status & Status.needsReset)
        return becameLive ? .driverReady : .none
    }

    /// The device added used buffers (or must signal a configuration change): the line goes up.
    public mutating func raise(_ bits: UInt32) { interruptStatus |= bits }

    /// The device cannot go on (§2.1.2): DEVICE_NEEDS_RESET, and a configuration change interrupt if it was live.
    public mutating func needsReset() {
        status |= Status.needsReset
        if status & Status.driverOK != 0 { interruptStatus |= Self.configChangeInterrupt }
    }

    /// Version 1 of the transport's part of a device's state: status, features, selectors, interrupt status, config
    /// generation, then per queue its size, readiness, three areas and the device's two ring positions.
    func encode(into out: inout ByteWriter) {
        for value in [status, deviceFeaturesSelect] { out.u32(value) }
        out.u64(driverFeatures)
        for value in [driverFeaturesSelect, queueSelect, interruptStatus, configGeneration] { out.u32(value) }
        out.u16(UInt16(queues.count))
        for queue in queues {
            out.u16(queue.size)
            out.bool(queue.ready)
            for area in [queue.descriptorTable, queue.driverArea, queue.deviceArea] { out.u64(area) }
            out.u16(queue.nextAvailable)
            out.u16(queue.nextUsed)
        }
    }

    /// Reads what `encode` wrote; nil when it does not fit this device (queue count, sizes, features).
    func decoded(from reader: inout ByteReader) -> VirtioMMIORegisters? {
        var copy = VirtioMMIORegisters(
            deviceID: deviceID, features: deviceFeatures, queues: queues.count, queueMaximum: queueMaximum)
        guard let status = reader.u32(), let deviceSelect = reader.u32(), let driverFeatures = reader.u64(),
            let driverSelect = reader.u32(), let queueSelect = reader.u32(), let interrupts = reader.u32(),
            let generation = reader.u32(), let count = reader.u16(), Int(count) == queues.count,
            driverFeatures & ~deviceFeatures == 0, interrupts & ~3 == 0
        else { return nil }
        (copy.status, copy.deviceFeaturesSelect, copy.driverFeatures) = (status, deviceSelect, driverFeatures)
        (copy.driverFeaturesSelect, copy.queueSelect, copy.interruptStatus) = (driverSelect, queueSelect, interrupts)
        copy.configGeneration = generation
        for index in copy.queues.indices {
            guard let size = reader.u16(), size <= queueMaximum, size & (size &- 1) == 0, let ready = reader.bool(),
                let table = reader.u64(), let driver = reader.u64(), let device = reader.u64(),
                let nextAvailable = reader.u16(), let nextUsed = reader.u16(), !ready || size > 0
            else { return nil }
            copy.queues[index].size = size
            copy.queues[index].ready = ready
            (copy.queues[index].descriptorTable, copy.queues[index].driverArea, copy.queues[index].deviceArea) = (
                table, driver, device
            )
            (copy.queues[index].nextAvailable, copy.queues[index].nextUsed) = (nextAvailable, nextUsed)
        }
        return copy
    }
}
