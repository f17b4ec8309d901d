import MachineDescription
import Synchronization

/// The two address spaces devices answer in: x86 port I/O and memory-mapped I/O.
public enum IOSpace: String, Sendable, Hashable {
    case port, mmio
}

/// A range a device claims on the bus.
public struct IORegion: Sendable, Hashable {
    public var space: IOSpace
    public var base: UInt64
    public var length: UInt64

    public init(_ space: IOSpace, base: UInt64, length: UInt64) {
        self.space = space
        self.base = base
        self.length = length
    }

    public func contains(_ address: UInt64) -> Bool { address >= base && address - base < length }
    func overlaps(_ other: IORegion) -> Bool {
        space == other.space && base < other.base + other.length && other.base < base + length
    }
}

/// One access as the bus delivers it to a device.
public struct IOAccess: Sendable {
    /// Which of the device's `regions` was hit.
    public var region: Int
    /// Bytes from the region's base.
    public var offset: UInt64
    /// The vCPU that made the access.
    public var vcpu: Int

    public init(region: Int, offset: UInt64, vcpu: Int) {
        self.region = region
        self.offset = offset
        self.vcpu = vcpu
    }
}

/// Dispatches port and MMIO accesses by address to the devices that claimed them.
///
/// An access nobody claims is answered as an open bus does (reads all ones, writes dropped) and noted once per
/// address, never a crash: a guest probing for hardware we do not emulate keeps running.
public final class IOBus: Sendable {
    private struct Claim {
        let region: IORegion
        let index: Int
        let device: any Device
    }

    private let claims: [Claim]
    private let note: @Sendable (String) -> Void
    /// Unclaimed addresses already noted; bounded so a probing guest cannot grow it.
    private let noted = Mutex<Set<String>>([])
    static let maximumNotes = 64

    /// Refuses two devices claiming one address.
    public init(devices: [any Device], note: @escaping @Sendable (String) -> Void) throws {
        var claims: [Claim] = []
        for device in devices {
            for (index, region) in device.regions.enumerated() {
                if let other = claims.first(where: { $0.region.overlaps(region) }) {
                    throw DeviceError(
                        device.name,
                        "\(region.space) range 0x\(String(region.base, radix: 16)) overlaps device \(other.device.name)")
                }
                claims.append(Claim(region: region, index: index, device: device))
            }
        }
        self.claims = claims
        self.note = note
    }

    public func read(_ space: IOSpace, address: UInt64, vcpu: Int, into data: UnsafeMutableRawBufferPointer) {
        guard let claim = claim(space, address) else {
            data.initializeMemory(as: UInt8.self, repeating: 0xff)
            unclaimed(space, address, "read")
            return
        }
        claim.device.read(IOAccess(region: claim.index, offset: address - claim.region.base, vcpu: vcpu), into: data)
    }

    public func write(_ space: IOSpace, address: UInt64, vcpu: Int, from data: UnsafeRawBufferPointer) {
        guard let claim = claim(space, address) else {
            unclaimed(space, address, "write")
            return
        }
        claim.device.write(IOAccess(region: claim.index, offset: address - claim.region.base, vcpu: vcpu), from: data)
    }

    private func claim(_ space: IOSpace, _ address: UInt64) -> Claim? {
        claims.first { $0.region.space == space && $0.region.contains(address) }
    }

    private func unclaimed(_ space: IOSpace, _ address: UInt64, _ what: String) {
        let key = "\(space) \(what) at 0x\(String(address, radix: 16))"
        let first = noted.withLock { noted in
            guard noted.count < Self.maximumNotes else { return false }
            return noted.insert(key).inserted
        }
        if first { note("no device answers \(key); treated as open bus") }
    }
}
