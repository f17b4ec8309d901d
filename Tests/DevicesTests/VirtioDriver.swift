import Devices
import Foundation
import MachineDescription
import Synchronization

/// 4 MiB of "guest RAM" at guest-physical 0, plain memory.
final class TestMemory: GuestMemoryAccess, @unchecked Sendable {
    static let size = 4 << 20
    let base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
    let writes = Mutex<[ClosedRange<UInt64>]>([])

    init() { base.initializeMemory(as: UInt8.self, repeating: 0, count: Self.size) }
    deinit { base.deallocate() }

    func pointer(guestPhysical address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        address + UInt64(length) <= UInt64(Self.size) ? base + Int(address) : nil
    }
    func noteWritten(guestPhysical address: UInt64, length: Int) {
        writes.withLock { $0.append(address...(address + UInt64(length) - 1)) }
    }
    func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        (base + Int(address)).storeBytes(of: value.littleEndian, as: T.self)
    }
    func load<T: FixedWidthInteger>(_: T.Type, at address: UInt64) -> T {
        T(littleEndian: (base + Int(address)).loadUnaligned(as: T.self))
    }
    func bytes(at address: UInt64, count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: base + Int(address), count: count))
    }
    func fill(at address: UInt64, with bytes: [UInt8]) {
        bytes.withUnsafeBytes { (base + Int(address)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
}

/// An interrupt line that remembers its level.
final class TestLine: InterruptLine, @unchecked Sendable {
    let level = Mutex(false)
    func set(_ high: Bool) { level.withLock { $0 = high } }
    var high: Bool { level.withLock { $0 } }
}

/// A driver for one virtio-mmio device, doing what Linux's virtio_mmio and virtio_blk do, in their order.
struct VirtioTestDriver {
    let device: any Device
    let memory: TestMemory
    let base: UInt64
    /// Queue areas and request buffers in the test memory.
    static let descriptors: UInt64 = 0x10000
    static let driverArea: UInt64 = 0x11000
    static let deviceArea: UInt64 = 0x12000
    static let buffers: UInt64 = 0x100000
    var queueSize: UInt16 = 16
    var nextDescriptor: UInt16 = 0
    var availableIndex: UInt16 = 0
    var usedSeen: UInt16 = 0

    func read(_ offset: UInt64) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { device.read(IOAccess(region: 0, offset: offset, vcpu: 0), into: $0) }
        return UInt32(littleEndian: value)
    }

    func write(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { device.write(IOAccess(region: 0, offset: offset, vcpu: 0), from: $0) }
    }

    func configByte(_ offset: UInt64) -> UInt8 {
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { device.read(IOAccess(region: 0, offset: 0x100 + offset, vcpu: 0), into: $0) }
        return byte
    }

    func config64(_ offset: UInt64) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(configByte(offset + UInt64($1))) << (8 * UInt64($1)) }
    }

    func features() -> UInt64 {
        write(0x014, 1)
        let high = UInt64(read(0x010))
        write(0x014, 0)
        return high << 32 | UInt64(read(0x010))
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (checked), one queue, DRIVER_OK (§3.1.1).
    mutating func initialise(accepting wanted: UInt64) -> Bool {
        write(0x070, 0)
        write(0x070, 1)
        write(0x070, 3)
        let accepted = features() & wanted
        write(0x024, 1)
        write(0x020, UInt32(accepted >> 32))
        write(0x024, 0)
        write(0x020, UInt32(truncatingIfNeeded: accepted))
        write(0x070, 11)
        guard read(0x070) & 8 != 0 else { return false }
        write(0x030, 0)
        guard read(0x044) == 0, read(0x034) >= UInt32(queueSize) else { return false }
        write(0x038, UInt32(queueSize))
        for (offset, address) in [(UInt64(0x080), Self.descriptors), (0x090, Self.driverArea), (0x0a0, Self.deviceArea)] {
            write(offset, UInt32(truncatingIfNeeded: address))
            write(offset + 4, UInt32(address >> 32))
        }
        write(0x044, 1)
        write(0x070, 15)
        return true
    }

    /// Writes a descriptor; returns its index.
    mutating func descriptor(_ address: UInt64, _ length: UInt32, writable: Bool, next: Bool) -> UInt16 {
        let index = nextDescriptor
        nextDescriptor = (nextDescriptor + 1) % queueSize
        let entry = Self.descriptors + UInt64(index) * 16
        memory.store(address, at: entry)
        memory.store(length, at: entry + 8)
        memory.store(UInt16((next ? 1 : 0) | (writable ? 2 : 0)), at: entry + 12)
        memory.store(next ? nextDescriptor : 0, at: entry + 14)
        return index
    }

    /// Makes a chain available and notifies.
    mutating func submit(head: UInt16) {
        memory.store(head, at: Self.driverArea + 4 + UInt64(availableIndex % queueSize) * 2)
        availableIndex &+= 1
        memory.store(availableIndex, at: Self.driverArea + 2)
        write(0x050, 0)
    }

    /// Waits for the next used entry: (id, length).
    mutating func waitUsed(seconds: Double = 5) -> (UInt16, UInt32)? {
        let deadline = Date().addingTimeInterval(seconds)
        while memory.load(UInt16.self, at: Self.deviceArea + 2) == usedSeen {
            if Date() > deadline { return nil }
            usleep(200)
        }
        let element = Self.deviceArea + 4 + UInt64(usedSeen % queueSize) * 8
        usedSeen &+= 1
        return (UInt16(memory.load(UInt32.self, at: element)), memory.load(UInt32.self, at: element + 4))
    }

    /// A block request: header, then data (readable for writes, writable for reads), then the status byte.
    /// Returns the status and the used length.
    mutating func request(type: UInt32, sector: UInt64, data: [UInt8] = [], readBack: Int = 0) -> (status: UInt8, used: UInt32)? {
        let header = Self.buffers
        memory.store(type, at: header)
        memory.store(UInt32(0), at: header + 4)
        memory.store(sector, at: header + 8)
        let dataAddress = Self.buffers + 0x1000
        let statusAddress = Self.buffers + 0x800
        memory.store(UInt8(0xee), at: statusAddress)
        memory.fill(at: dataAddress, with: data)
        let head = descriptor(header, 16, writable: false, next: true)
        if !data.isEmpty { _ = descriptor(dataAddress, UInt32(data.count), writable: false, next: true) }
        if readBack > 0 { _ = descriptor(dataAddress, UInt32(readBack), writable: true, next: true) }
        _ = descriptor(statusAddress, 1, writable: true, next: false)
        submit(head: head)
        guard let (id, used) = waitUsed(), id == head else { return nil }
        return (memory.load(UInt8.self, at: statusAddress), used)
    }
}
