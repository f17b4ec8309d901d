import Devices
import MachineDescription
import Synchronization
import SystemSupport

/// The bundled guest's status and pacing device, at ports 0x500 (status) and 0x501 (check).
///
/// The guest reports each tick by reading the status port (the reply's bit 0 asks for a check) and each check by
/// writing the check port; its counters live in its status block in guest memory, which this device reads at
/// each report. Pacing: the vCPU is put to sleep in the tick report so the guest dirties `dirtyRate` bytes per
/// second in all (each write counts as one 4 KiB page).
///
/// With a disk, vCPU 0's tick reply also says how many disk blocks to write now (bits 8-23), paced to `diskRate`;
/// the guest reads back and checks the block it wrote last before them and a random written one, and keeps its disk
/// counters in its status block.
///
/// Checks are held back while dirty logging is on: under kvm_pvm's shadow paging a read fault on a page whose
/// guest PTE is dirty maps it writable and logs it dirty, so a full-slice check would mark the whole working set
/// dirty in every round and live migration would never converge. The destination checks after it resumes.
final class GuestStatusDevice: Device {
    static let kind = "guest-status"
    static let stateVersion: UInt32 = 1
    static let settingKeys: Set<String> = ["port", "working-set", "dirty-rate", "writes-per-tick", "disk-rate"]
    /// How often the VMM asks each vCPU to check its slice.
    static let checkInterval: UInt64 = 200_000_000
    /// Writes per tick when not paced: large enough that the tick exit is cheap next to the work.
    static let flatOutWritesPerTick: UInt64 = 4096
    /// How fast the guest writes its disk unless told: 1 MiB/s.
    static let defaultDiskRate: UInt64 = 1 << 20
    /// Disk blocks vCPU 0 writes in one tick at most: 4 MiB, so the rate holds when disk writes slow the ticks down.
    static let maximumDiskWritesPerTick: UInt64 = 1024

    /// What migrates with the device, in its configuration.
    struct Settings: Equatable {
        var workingSet: UInt64
        var dirtyRate: UInt64
        var writesPerTick: UInt64
        /// Bytes per second written to the disk; 0 without one.
        var diskRate: UInt64

        /// Ticks of about 10 ms when paced: short enough for a smooth rate, long next to a tick's exit and sleep overhead.
        init(workingSet: UInt64, dirtyRate: UInt64, vcpus: UInt32, diskRate: UInt64 = 0) {
            self.workingSet = workingSet
            self.dirtyRate = dirtyRate
            self.diskRate = diskRate
            if dirtyRate == 0 {
                writesPerTick = GuestStatusDevice.flatOutWritesPerTick
            } else {
                let pagesPerSecondPerVCPU = dirtyRate / 4096 / UInt64(max(vcpus, 1))
                writesPerTick = min(max(pagesPerSecondPerVCPU / 100, 1), GuestStatusDevice.flatOutWritesPerTick)
            }
        }

        init(_ config: DeviceConfig) throws {
            workingSet = try config.number("working-set")
            dirtyRate = try config.number("dirty-rate")
            writesPerTick = try config.number("writes-per-tick", in: 1...(1 << 20))
            diskRate = config.configuration["disk-rate"] == nil ? 0 : try config.number("disk-rate")
        }

        var configuration: [String: String] {
            [
                "port": "0x500", "working-set": String(workingSet), "dirty-rate": String(dirtyRate),
                "writes-per-tick": String(writesPerTick), "disk-rate": String(diskRate),
            ]
        }
    }

    private struct VCPUReport {
        var status = VCPUStatus(tick: 0, checksPassed: 0, checksFailed: 0)
        var lastCheck: UInt64?
        var paceEpoch: UInt64?
        var ticksSinceEpoch: UInt64 = 0
        /// vCPU 0: when disk pacing started, and the blocks asked for since.
        var diskEpoch: UInt64?
        var diskBlocksAsked: UInt64 = 0
    }

    let name: String
    let regions = [IORegion(.port, base: UInt64(GuestLayout.statusPort), length: 2)]
    let settings: Settings
    private let memory: any GuestMemoryAccess
    private let pacer: any Pacer
    private let reports: Mutex<[VCPUReport]>
    private let vcpuCount: Int
    /// Set while dirty logging is on; see the type's comment.
    private let holdChecks = Atomic(false)

    init(config: DeviceConfig, context: DeviceContext) throws {
        name = config.name
        guard try config.number("port") == UInt64(GuestLayout.statusPort) else {
            throw DeviceError(config.name, "the bundled guest reports at port 0x500 only")
        }
        settings = try Settings(config)
        memory = context.memory
        pacer = context.pacer
        vcpuCount = context.vcpuCount
        reports = Mutex(Array(repeating: VCPUReport(), count: context.vcpuCount))
    }

    static func configuration(name: String = "status0", _ settings: Settings) -> DeviceConfig {
        DeviceConfig(name: name, kind: kind, version: stateVersion, configuration: settings.configuration)
    }

    var statuses: [VCPUStatus] { reports.withLock { $0.map(\.status) } }

    /// The guest's disk counters (vCPU 0's status block, after its own), once it has found its disk.
    var diskStatus: DiskCheckStatus? {
        guard settings.diskRate > 0,
            let block = memory.pointer(guestPhysical: GuestLayout.statusBlocks + 24, length: 32),
            block.load(fromByteOffset: 24, as: UInt64.self) == GuestLayout.diskReady
        else { return nil }
        return DiskCheckStatus(
            writes: block.load(as: UInt64.self), checksPassed: block.load(fromByteOffset: 8, as: UInt64.self),
            checksFailed: block.load(fromByteOffset: 16, as: UInt64.self))
    }

    func read(_ access: IOAccess, into data: UnsafeMutableRawBufferPointer) {
        guard access.offset == 0, access.vcpu < vcpuCount else {
            data.initializeMemory(as: UInt8.self, repeating: 0xff)
            return
        }
        let (reply, sleep) = tick(vcpu: access.vcpu)
        data.initializeMemory(as: UInt8.self, repeating: 0)
        withUnsafeBytes(of: reply.littleEndian) { data.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(data.count))) }
        pacer.sleep(nanoseconds: sleep)
    }

    func write(_ access: IOAccess, from data: UnsafeRawBufferPointer) {
        guard access.offset == 1, access.vcpu < vcpuCount, let block = readBlock(vcpu: access.vcpu) else { return }
        reports.withLock { $0[access.vcpu].status = block }
    }

    func resume() { resetTiming() }
    func setDirtyLogging(_ on: Bool) { holdChecks.store(on, ordering: .relaxed) }

    /// A tick report from vCPU `index`: the reply for the guest and how long to sleep for pacing.
    private func tick(vcpu index: Int) -> (reply: UInt32, sleepNanoseconds: UInt64) {
        let now = HostClock.monotonicNanoseconds()
        let block = readBlock(vcpu: index)
        return reports.withLock { all in
            if let block { all[index].status = block }
            var reply: UInt32 = 0
            if let last = all[index].lastCheck {
                if now &- last >= Self.checkInterval && !holdChecks.load(ordering: .relaxed) {
                    reply |= 1
                    all[index].lastCheck = now
                }
            } else {
                all[index].lastCheck = now
            }
            if index == 0 { reply |= UInt32(diskBlocksDue(&all[0], now: now)) << 8 }
            guard settings.dirtyRate > 0 else { return (reply, 0) }
            let ratePerVCPU = max(settings.dirtyRate / UInt64(vcpuCount), 1)
            guard let epoch = all[index].paceEpoch else {
                all[index].paceEpoch = now
                all[index].ticksSinceEpoch = 0
                return (reply, 0)
            }
            all[index].ticksSinceEpoch += 1
            let bytes = Double(all[index].ticksSinceEpoch) * Double(settings.writesPerTick * 4096)
            let due = epoch + UInt64(bytes / Double(ratePerVCPU) * 1e9)
            if due > now { return (reply, due - now) }
            if now - due > 1_000_000_000 {  // fell far behind (paused, descheduled): no catch-up burst
                all[index].paceEpoch = now
                all[index].ticksSinceEpoch = 0
            }
            return (reply, 0)
        }
    }

    /// Disk blocks vCPU 0 should write now to keep `diskRate`, at most `maximumDiskWritesPerTick`.
    private func diskBlocksDue(_ report: inout VCPUReport, now: UInt64) -> UInt64 {
        guard settings.diskRate > 0 else { return 0 }
        guard let epoch = report.diskEpoch, now - epoch < 60_000_000_000 else {
            report.diskEpoch = now
            report.diskBlocksAsked = 0
            return 1
        }
        let due = UInt64(Double(now - epoch) / 1e9 * Double(settings.diskRate) / 4096)
        let blocks = min(due > report.diskBlocksAsked ? due - report.diskBlocksAsked : 0, Self.maximumDiskWritesPerTick)
        report.diskBlocksAsked += blocks
        if due > report.diskBlocksAsked + 1024 { report.diskBlocksAsked = due }  // fell far behind: no catch-up burst
        return blocks
    }

    /// Restarts pacing and check timing, e.g. after a pause, so no burst follows.
    private func resetTiming() {
        reports.withLock { all in
            for index in all.indices {
                all[index].paceEpoch = nil
                all[index].lastCheck = nil
                all[index].diskEpoch = nil
            }
        }
    }

    private func readBlock(vcpu index: Int) -> VCPUStatus? {
        let address = GuestLayout.statusBlocks + UInt64(index) * GuestLayout.statusBlockSize
        guard let block = memory.pointer(guestPhysical: address, length: 24) else { return nil }
        return VCPUStatus(
            tick: block.load(as: UInt64.self), checksPassed: block.load(fromByteOffset: 8, as: UInt64.self),
            checksFailed: block.load(fromByteOffset: 16, as: UInt64.self))
    }

    /// Version 1: vCPU count (u32), then tick, checks passed, checks failed (u64 each) per vCPU, little-endian.
    func saveState() -> [UInt8] {
        reports.withLock { all in
            var out = ByteWriter(capacity: 4 + all.count * 24)
            out.u32(UInt32(all.count))
            for report in all {
                for value in [report.status.tick, report.status.checksPassed, report.status.checksFailed] { out.u64(value) }
            }
            return out.bytes
        }
    }

    private func decode(_ bytes: [UInt8]) throws -> [VCPUStatus] {
        var reader = ByteReader(bytes)
        guard let count = reader.u32(), Int(count) == vcpuCount, bytes.count == 4 + vcpuCount * 24 else {
            throw DeviceError(name, "state is \(bytes.count) bytes, expected \(4 + vcpuCount * 24) for \(vcpuCount) vCPUs")
        }
        return (0..<vcpuCount).map { _ in
            VCPUStatus(tick: reader.u64()!, checksPassed: reader.u64()!, checksFailed: reader.u64()!)
        }
    }

    func checkState(_ bytes: [UInt8]) throws { _ = try decode(bytes) }

    func restoreState(_ bytes: [UInt8]) throws {
        let statuses = try decode(bytes)
        reports.withLock { all in
            for index in all.indices { all[index].status = statuses[index] }
        }
    }
}
