import Glibc
import MachineDescription
import Synchronization

/// The bundled guest's status and pacing device.
///
/// The guest reports each tick by reading `GuestLayout.statusPort` (the reply's bit 0 asks for a check) and each
/// check by writing `GuestLayout.checkPort`; its counters live in its status block in guest memory, which this
/// device reads at each report. Pacing: the vCPU is put to sleep in the tick report so the guest dirties
/// `dirtyRate` bytes per second in all (each write counts as one 4 KiB page).
///
/// Checks are held back while dirty logging is on: under kvm_pvm's shadow paging a read fault on a page whose
/// guest PTE is dirty maps it writable and logs it dirty, so a full-slice check would mark the whole working set
/// dirty in every round and live migration would never converge. The destination checks after it resumes.
final class GuestStatusDevice: Sendable {
    static let kind = "guest-status"
    static let stateVersion: UInt32 = 1
    /// How often the VMM asks each vCPU to check its slice.
    static let checkInterval: UInt64 = 200_000_000
    /// Writes per tick when not paced: large enough that the tick exit is cheap next to the work.
    static let flatOutWritesPerTick: UInt64 = 4096

    /// What migrates with the device.
    struct Settings: Equatable {
        var workingSet: UInt64
        var dirtyRate: UInt64
        var writesPerTick: UInt64

        /// Ticks of about 10 ms when paced: short enough for a smooth rate, long next to a tick's exit and sleep overhead.
        init(workingSet: UInt64, dirtyRate: UInt64, vcpus: UInt32) {
            self.workingSet = workingSet
            self.dirtyRate = dirtyRate
            if dirtyRate == 0 {
                writesPerTick = GuestStatusDevice.flatOutWritesPerTick
            } else {
                let pagesPerSecondPerVCPU = dirtyRate / 4096 / UInt64(max(vcpus, 1))
                writesPerTick = min(max(pagesPerSecondPerVCPU / 100, 1), GuestStatusDevice.flatOutWritesPerTick)
            }
        }

        init(configuration: [String: String]) throws {
            func number(_ key: String) throws -> UInt64 {
                guard let text = configuration[key], let value = UInt64(text) else {
                    throw MachineError("device \(GuestStatusDevice.kind): configuration has no valid \(key)")
                }
                return value
            }
            workingSet = try number("working-set")
            dirtyRate = try number("dirty-rate")
            writesPerTick = try number("writes-per-tick")
            guard writesPerTick > 0, writesPerTick <= 1 << 20 else {
                throw MachineError("device \(GuestStatusDevice.kind): writes-per-tick \(writesPerTick) out of range")
            }
        }

        var configuration: [String: String] {
            ["port": "0x500", "working-set": String(workingSet), "dirty-rate": String(dirtyRate),
             "writes-per-tick": String(writesPerTick)]
        }
    }

    private struct VCPUReport {
        var status = VCPUStatus(tick: 0, checksPassed: 0, checksFailed: 0)
        var lastCheck: UInt64?
        var paceEpoch: UInt64?
        var ticksSinceEpoch: UInt64 = 0
        /// When the vCPU went back into the guest after its last tick, to measure how long it ran.
        var resumedAt: UInt64?
    }

    let settings: Settings
    private let memory: GuestMemory
    private let reports: Mutex<[VCPUReport]>
    private let vcpuCount: UInt32
    /// Set while dirty logging is on; see the type's comment.
    let holdChecks = Atomic(false)
    /// Percent of each vCPU's time spent asleep so a live migration converges (auto-converge).
    let throttlePercent = Atomic(0)

    init(settings: Settings, memory: GuestMemory, vcpus: UInt32) {
        self.settings = settings
        self.memory = memory
        vcpuCount = vcpus
        reports = Mutex(Array(repeating: VCPUReport(), count: Int(vcpus)))
    }

    var statuses: [VCPUStatus] { reports.withLock { $0.map(\.status) } }

    /// A tick report from vCPU `index`: returns the reply for the guest and how long to sleep, for pacing
    /// and for the throttle: a vCPU throttled p % sleeps p / (100 - p) of the time it ran since its last tick.
    func tick(vcpu index: Int) -> (reply: UInt32, sleepNanoseconds: UInt64) {
        let now = monotonicNanoseconds()
        let (reply, paceSleep) = paceTick(vcpu: index, now: now)
        let throttle = UInt64(throttlePercent.load(ordering: .relaxed))
        return reports.withLock { all in
            var sleep = paceSleep
            if throttle > 0, let resumed = all[index].resumedAt, now > resumed {
                sleep += (now - resumed) * throttle / (100 - throttle)
            }
            all[index].resumedAt = now + sleep
            return (reply, sleep)
        }
    }

    private func paceTick(vcpu index: Int, now: UInt64) -> (reply: UInt32, sleepNanoseconds: UInt64) {
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
            if now - due > 1_000_000_000 {          // fell far behind (paused, descheduled): no catch-up burst
                all[index].paceEpoch = now
                all[index].ticksSinceEpoch = 0
            }
            return (reply, 0)
        }
    }

    /// A check report from vCPU `index` (the counters are in its status block).
    func check(vcpu index: Int) {
        guard let block = readBlock(vcpu: index) else { return }
        reports.withLock { $0[index].status = block }
    }

    /// Restarts pacing and check timing, e.g. after a pause, so no burst follows.
    func resetTiming() {
        reports.withLock { all in
            for index in all.indices {
                all[index].paceEpoch = nil
                all[index].lastCheck = nil
                all[index].resumedAt = nil
            }
        }
    }

    private func readBlock(vcpu index: Int) -> VCPUStatus? {
        let address = GuestLayout.statusBlocks + UInt64(index) * GuestLayout.statusBlockSize
        guard let block = memory.pointer(guestPhysical: address, length: 24) else { return nil }
        return VCPUStatus(tick: block.load(as: UInt64.self), checksPassed: block.load(fromByteOffset: 8, as: UInt64.self),
                          checksFailed: block.load(fromByteOffset: 16, as: UInt64.self))
    }

    /// Version 1: vCPU count (u32), then tick, checks passed, checks failed (u64 each) per vCPU, little-endian.
    func encodeState() -> [UInt8] {
        reports.withLock { all in
            var bytes: [UInt8] = []
            withUnsafeBytes(of: UInt32(all.count).littleEndian) { bytes.append(contentsOf: $0) }
            for report in all {
                for value in [report.status.tick, report.status.checksPassed, report.status.checksFailed] {
                    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
                }
            }
            return bytes
        }
    }

    func restoreState(_ bytes: [UInt8], version: UInt32) throws {
        guard version == Self.stateVersion else {
            throw MachineError("device status0: state version \(version), this vmrun understands \(Self.stateVersion)")
        }
        let expected = 4 + Int(vcpuCount) * 24
        guard bytes.count == expected else {
            throw MachineError("device status0: state is \(bytes.count) bytes, expected \(expected) for \(vcpuCount) vCPUs")
        }
        bytes.withUnsafeBytes { raw in
            reports.withLock { all in
                for index in all.indices {
                    let at = 4 + index * 24
                    all[index].status = VCPUStatus(
                        tick: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt64.self)),
                        checksPassed: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self)),
                        checksFailed: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at + 16, as: UInt64.self)))
                }
            }
        }
    }
}

func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
