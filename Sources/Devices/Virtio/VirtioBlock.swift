import Glibc
import MachineDescription
import Synchronization
import SystemSupport

/// A virtio-blk device (virtio 1.x §5.2) on the virtio-mmio transport, backed by a raw image file. Configuration:
/// `mmio` (the register window's base), `irq`, and `disk` (a disk of the machine, by name).
///
/// Register accesses come from vCPU threads; requests run on a worker thread of the device's own, so a slow disk
/// never holds a vCPU. A pause drains: the worker finishes the requests it took and takes no more, so nothing
/// changes guest memory or the image afterwards; requests still in the available ring stay there, travel with guest
/// memory, and are taken on the destination after it resumes.
///
/// `@unchecked Sendable`: the worker's flags are only touched with `work` held, the registers behind their mutex.
public final class VirtioBlock: Device, @unchecked Sendable {
    public static let kind = "virtio-blk"
    public static let stateVersion: UInt32 = 1
    public static let settingKeys: Set<String> = ["mmio", "irq", "disk"]
    public static let deviceID: UInt32 = 2
    public static let queueSize: UInt16 = 256
    /// Data segments per request without indirect descriptors' help; the queue holds two such requests.
    static let segmentsPerRequest: UInt32 = 126

    /// Feature bits (§5.2.3): SEG_MAX 2, RO 5, BLK_SIZE 6, FLUSH 9, DISCARD 13, WRITE_ZEROES 14.
    static func features(readOnly: Bool) -> UInt64 {
        1 << 2 | 1 << 6 | 1 << 9 | 1 << 13 | 1 << 14 | (readOnly ? 1 << 5 : 0)
    }

    public let name: String
    public let regions: [IORegion]
    private let disk: DiskImage
    private let memory: any GuestMemoryAccess
    private let line: any InterruptLine
    private let registers: Mutex<VirtioMMIORegisters>
    private let config: [UInt8]
    private let work = Gate()
    // Guarded by `work`.
    private var pending = false
    private var paused = false
    private var busy = false
    private var stopping = false
    private var worker: pthread_t?

    public init(config: DeviceConfig, context: DeviceContext) throws {
        name = config.name
        let base = try config.number("mmio", in: 0x1_0000...0xffff_f000)
        guard base % 0x1000 == 0 else { throw DeviceError(config.name, "mmio 0x\(String(base, radix: 16)) is not 4 KiB aligned") }
        guard let diskName = config.configuration["disk"], let disk = context.disks[diskName] else {
            throw DeviceError(
                config.name, "names no disk the machine has (disk \(UntrustedText.quote(config.configuration["disk"] ?? "")))")
        }
        regions = [IORegion(.mmio, base: base, length: VirtioMMIORegisters.windowSize)]
        line = try context.interruptLine(UInt32(try config.number("irq", in: 1...23)))
        self.disk = disk
        memory = context.memory
        registers = Mutex(
            VirtioMMIORegisters(
                deviceID: Self.deviceID, features: Self.features(readOnly: disk.config.readOnly),
                queues: 1, queueMaximum: Self.queueSize))
        self.config = Self.configSpace(disk: disk.config)
        worker = try startThread("the worker of \(config.name)") { [self] in serve() }
    }

    /// The device configuration for `disk` at `mmio`, raising `irq`; named after the disk.
    public static func configuration(disk: DiskConfig, mmio: UInt64, irq: UInt32) -> DeviceConfig {
        DeviceConfig(
            name: disk.name, kind: kind, version: stateVersion,
            configuration: ["mmio": "0x" + String(mmio, radix: 16), "irq": String(irq), "disk": disk.name])
    }

    /// The config space (§5.2.4): capacity in 512-byte sectors, seg_max, blk_size, one queue, and the limits of
    /// discard and write zeroes; the rest zero.
    static func configSpace(disk: DiskConfig) -> [UInt8] {
        var out = ByteWriter(capacity: 64)
        out.u64(disk.size / BlockRequest.sectorSize)  // capacity
        out.u32(0)  // size_max (not offered)
        out.u32(segmentsPerRequest)  // seg_max
        out.u32(0)  // geometry
        out.u32(UInt32(BlockRequest.sectorSize))  // blk_size
        out.raw([3, 0, 0, 0, 0, 0, 0, 0])  // topology: 4 KiB physical blocks
        out.u8(0)  // writeback
        out.u8(0)
        out.u16(1)  // num_queues
        out.u32(BlockRequest.maximumRangeSectors)  // max_discard_sectors
        out.u32(BlockRequest.maximumRanges)  // max_discard_seg
        out.u32(8)  // discard_sector_alignment: 4 KiB
        out.u32(BlockRequest.maximumRangeSectors)  // max_write_zeroes_sectors
        out.u32(BlockRequest.maximumRanges)  // max_write_zeroes_seg
        out.u8(1)  // write_zeroes_may_unmap
        out.raw([0, 0, 0])
        return out.bytes
    }

    // MARK: Registers (vCPU threads)

    public func read(_ access: IOAccess, into data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
        if access.offset >= VirtioMMIORegisters.configOffset {
            let start = Int(access.offset - VirtioMMIORegisters.configOffset)
            for index in 0..<data.count where start + index < config.count { data[index] = config[start + index] }
            return
        }
        // Registers are 32 bits wide and aligned (§4.2.2); anything else reads as zero.
        guard data.count == 4, access.offset % 4 == 0 else { return }
        let value = registers.withLock { $0.read(register: access.offset) }
        withUnsafeBytes(of: value.littleEndian) { data.copyMemory(from: $0) }
    }

    public func write(_ access: IOAccess, from data: UnsafeRawBufferPointer) {
        // The config space of virtio-blk is read-only for us: writeback (CONFIG_WCE) is not offered.
        guard access.offset < VirtioMMIORegisters.configOffset, data.count == 4, access.offset % 4 == 0 else { return }
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        let (effect, asserted) = registers.withLock { ($0.write(register: access.offset, value), $0.interruptAsserted) }
        switch effect {
        case .notify, .driverReady: wake()
        case .interruptChanged, .reset: line.set(asserted)
        case .none: break
        }
    }

    // MARK: Worker

    private func wake() {
        work.withLock {
            pending = true
            work.broadcast()
        }
    }

    private func serve() {
        while true {
            work.lock()
            while !(pending && !paused) && !stopping { work.wait() }
            if stopping {
                work.unlock()
                return
            }
            pending = false
            busy = true
            work.unlock()
            drainQueue()
            work.withLock {
                busy = false
                work.broadcast()
            }
        }
    }

    /// Takes and performs every available request, then raises the line once.
    private func drainQueue() {
        var completed = false
        while true {
            let taken: DescriptorChain?
            do {
                taken = try registers.withLock { registers throws(VirtqueueError) -> DescriptorChain? in
                    guard registers.isLive else { return nil }
                    return try registers.queues[0].takeChain(memory)
                }
            } catch {
                fail(error)
                break
            }
            guard let chain = taken else { break }
            let request = BlockRequest(chain: chain, memory: memory, disk: disk)
            guard let written = request.perform() else {
                fail(VirtqueueError(description: "a request without room for its status byte"))
                break
            }
            do {
                try registers.withLock { registers throws(VirtqueueError) in
                    // A reset while the request ran: the driver no longer expects it.
                    guard registers.isLive else { return }
                    try registers.queues[0].complete(chain, written: written, memory)
                }
                completed = true
            } catch {
                fail(error)
                break
            }
        }
        guard completed else { return }
        let asserted = registers.withLock { registers in
            if !registers.queues[0].interruptSuppressed(memory) { registers.raise(VirtioMMIORegisters.usedBufferInterrupt) }
            return registers.interruptAsserted
        }
        if asserted { line.set(true) }
    }

    private func fail(_ error: VirtqueueError) {
        let asserted = registers.withLock { registers in
            registers.needsReset()
            return registers.interruptAsserted
        }
        if asserted { line.set(true) }
        _ = error
    }

    // MARK: Machine life

    /// Finishes the requests in progress and takes no more; the image's data reaches the disk.
    public func pause() {
        work.withLock {
            paused = true
            while busy { work.wait() }
        }
        try? disk.flush()
    }

    /// Takes requests again, including any the driver made available while paused or before a migration.
    public func resume() {
        work.withLock {
            paused = false
            pending = true
            work.broadcast()
        }
    }

    public func stop() {
        let thread: pthread_t? = work.withLock {
            stopping = true
            work.broadcast()
            defer { worker = nil }
            return worker
        }
        if let thread { pthread_join(thread, nil) }
    }

    public func setDirtyLogging(_ on: Bool) { disk.trackWrites(on) }

    // MARK: State

    /// Version 1: the transport's registers and queues (`VirtioMMIORegisters.encode`), then the disk's size and its
    /// fingerprint, taken paused: the destination's image must match it before the guest may run.
    public func saveState() -> [UInt8] {
        var out = ByteWriter(capacity: 128)
        registers.withLock { $0.encode(into: &out) }
        out.u64(disk.config.size)
        out.u64((try? disk.fingerprint()) ?? 0)
        return out.bytes
    }

    private func decode(_ bytes: [UInt8]) throws -> VirtioMMIORegisters {
        var reader = ByteReader(bytes)
        guard let decoded = registers.withLock({ $0.decoded(from: &reader) }), let size = reader.u64(),
            let fingerprint = reader.u64(), reader.atEnd
        else { throw DeviceError(name, "malformed virtio-blk state (\(bytes.count) bytes)") }
        guard size == disk.config.size else {
            throw DeviceError(name, "the state is for a disk of \(size) bytes, this disk has \(disk.config.size)")
        }
        let local = try disk.fingerprint()
        guard fingerprint == local else {
            throw DeviceError(
                name,
                "its image does not hold the sender's disk (fingerprint \(hex(local)), expected \(hex(fingerprint)))"
            )
        }
        return decoded
    }

    public func checkState(_ bytes: [UInt8]) throws { _ = try decode(bytes) }

    public func restoreState(_ bytes: [UInt8]) throws {
        let decoded = try decode(bytes)
        registers.withLock { $0 = decoded }
        line.set(decoded.interruptAsserted)
    }

    private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}
