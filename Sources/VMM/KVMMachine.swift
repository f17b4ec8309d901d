import CKVM
import Devices
import Glibc
import KVM
import MachineDescription
import Synchronization
import SystemSupport

/// A machine on KVM: guest RAM, vCPU threads, devices on a bus, dirty logging and a state registry.
///
/// Every public method is called from one control thread at a time and serialised by `lifecycle`; the vCPU threads
/// live in `runner`, the devices' own threads (if any) in the devices.
public final class KVMMachine: ControlledMachine, @unchecked Sendable {
    public let config: MachineConfig
    public let host: HostSpec

    private let system: KVMSystem
    private let vm: KVMVirtualMachine
    private let vcpus: [KVMVCPU]
    private let ram: GuestRAM
    private let console: ConsoleLog
    private let runner: VCPURunner
    private let devices: [any Device]
    private let disks: [DiskImage]
    private let heartbeats: HeartbeatMonitor
    /// Where the vCPUs' port and MMIO accesses go.
    let bus: IOBus
    private let registry: StateRegistry
    private let dirtyLog: DirtyLog
    private let startTime = HostClock.monotonicNanoseconds()

    private struct Lifecycle {
        var state: RunState
        var destroyed = false
        /// Work for the first resume (the bundled guest's boot area after a memory image).
        var beforeFirstRun: (@Sendable () throws -> Void)?
    }
    private let lifecycle: Mutex<Lifecycle>

    /// The memory file holding guest RAM, segments back to back (see `MemorySegment`).
    public var memoryFile: Int32 { ram.descriptor }

    /// Why the guest stopped by itself (triple fault, a KVM error), if it did.
    public var failure: String? { runner.failure }

    /// Creates and starts (unless `options.startPaused`) a new machine running the bundled guest, or the Linux kernel
    /// of `options.linux`. `extraDevices` join the standard ones; `catalog` must know their kinds.
    public static func boot(
        name: String, vcpus: UInt32, memorySize: UInt64, options: MachineOptions,
        extraDevices: [DeviceConfig] = [], catalog: DeviceCatalog = .standard
    ) throws -> KVMMachine {
        guard options.disks.count <= DiskPlacement.maximumDisks else {
            throw MachineError("\(options.disks.count) disks: a machine has at most \(DiskPlacement.maximumDisks)")
        }
        let disks = options.disks.enumerated().map { DiskPlacement.device(for: $1, index: $0) }
        var settings: GuestStatusDevice.Settings?
        if options.linux == nil {
            try BundledGuestBoot.checkFits(vcpus: vcpus, memorySize: memorySize, workingSet: options.guestWorkingSet)
            settings = GuestStatusDevice.Settings(
                workingSet: options.guestWorkingSet, dirtyRate: options.guestDirtyRate, vcpus: vcpus,
                diskRate: options.disks.isEmpty
                    ? 0 : options.guestDiskRate == 0 ? GuestStatusDevice.defaultDiskRate : options.guestDiskRate)
        } else {
            guard (1...GuestLayout.maxVCPUs).contains(vcpus) else {
                throw MachineError("--cpus \(vcpus): between 1 and \(GuestLayout.maxVCPUs) vCPUs are supported")
            }
        }
        let config = MachineConfig(
            name: name, vcpuCount: vcpus, segments: MemorySegment.standardLayout(memorySize: memorySize),
            devices: [UART16550.com1()] + settings.map { [GuestStatusDevice.configuration($0)] }.orEmpty + disks + extraDevices,
            cpuid: [], disks: options.disks)
        try catalog.check(config.devices)
        let machine = try KVMMachine(config: config, options: options, catalog: catalog, incoming: false)
        do {
            if let linux = options.linux {
                try LinuxBoot.prepare(vcpus: machine.vcpus, ram: machine.ram, config: machine.config, options: linux)
            } else if let settings {
                let pending = try BundledGuestBoot.prepare(
                    vcpus: machine.vcpus, ram: machine.ram, config: config, settings: settings, options: options)
                machine.lifecycle.withLock { $0.beforeFirstRun = pending }
            }
            if !options.startPaused { try machine.resume() }
        } catch {
            machine.destroy()
            options.memoryFile?.putBack()
            throw error
        }
        return machine
    }

    /// Creates a machine from a received configuration, in the incoming state: memory, vCPUs and devices exist,
    /// nothing runs until `restoreState` and `resume`. Refuses what it cannot build before creating anything.
    /// Every refusal reads `this host cannot run VM 'NAME': why`, the same whether it comes from a receive or from
    /// `vmrun --check` (`vmrecv -n`), which creates the machine this way too and throws it away.
    public static func incoming(
        config: MachineConfig, options: MachineOptions,
        catalog: DeviceCatalog = .standard
    ) throws -> KVMMachine {
        do {
            guard (1...GuestLayout.maxVCPUs).contains(config.vcpuCount) else {
                throw MachineError("it has \(config.vcpuCount) vCPUs; this vmrun runs 1 to \(GuestLayout.maxVCPUs)")
            }
            guard config.segments == MemorySegment.standardLayout(memorySize: config.memorySize),
                config.memorySize % 4096 == 0, config.memorySize >= GuestLayout.reservedEnd
            else {
                let layout = config.segments.map { "\(UntrustedText.quote($0.name))@\($0.guestPhysicalBase)+\($0.size)" }
                throw MachineError("its memory layout \(layout.joined(separator: ", ")) is not the standard layout")
            }
            try catalog.check(config.devices)
            return try KVMMachine(config: config, options: options, catalog: catalog, incoming: true)
        } catch {
            throw MachineError.hostRefusal(config.name, error)
        }
    }

    /// The devices of a machine running the bundled guest: COM1 and the guest's status device.
    static func standardDevices(_ settings: GuestStatusDevice.Settings) -> [DeviceConfig] {
        [UART16550.com1(), GuestStatusDevice.configuration(settings)]
    }

    private init(config: MachineConfig, options: MachineOptions, catalog: DeviceCatalog, incoming: Bool) throws {
        let physical = HostProbe.physicalMemory
        guard config.memorySize <= physical else {
            throw MachineError("--memory \(config.memorySize): more than this host's \(physical) bytes of RAM")
        }
        let topOfRAM = config.segments.map { $0.guestPhysicalBase + $0.size }.max() ?? 0
        guard topOfRAM <= GuestLayout.maxAddressableBytes else {
            throw MachineError(
                "--memory \(config.memorySize): more than the guest can address (\(GuestLayout.maxAddressableBytes >> 30) GiB)")
        }
        system = try KVMSystem()
        vm = try system.createVirtualMachine()
        try vm.setTSSAddress(GuestLayout.tssAddress)
        try vm.createIRQChip()
        try vm.createPIT2()
        ram = try GuestRAM(
            name: config.name, segments: config.segments, hugePages: options.hugePages, memoryFile: options.memoryFile)
        var described = config
        do {
            try ram.register(with: vm, logDirtyPages: false)
            let vm = self.vm
            vcpus = try (0..<config.vcpuCount).map { try vm.createVCPU(id: $0) }
            let supported = try system.supportedCPUID()
            let offered: [kvm_cpuid_entry2]
            if incoming {
                offered = try Self.offeredCPUID(supported, vcpu: vcpus[0])
                if let missing = CPUIDCompatibility.missingFeatures(guest: config.cpuid, host: offered) {
                    throw MachineError("its CPU lacks features the guest uses (\(missing))")
                }
            } else {
                described.cpuid = try Self.giveCPUID(vcpus, supported: supported)
                offered = try vcpus[0].cpuid()
            }
            let xsaveLeaf = supported.first { $0.function == 0xd && $0.index == 0 }
            let hostLimits = HostLimits(
                cpuid: offered, xcr0: xsaveLeaf.map { UInt64($0.edx) << 32 | UInt64($0.eax) } ?? 3,
                tscKHz: try vcpus[0].tscKHz(), tscScaling: system.checkExtension(Int32(KVM_CAP_TSC_CONTROL)) > 0)
            let migratedMSRs = vcpus[0].readableMSRs(try system.msrIndexList().filter(MSRList.isMigrated))
            disks = try config.disks.map { try DiskImage($0) }
            let heartbeats = HeartbeatMonitor()
            self.heartbeats = heartbeats
            console = try ConsoleLog(path: options.consoleLog) { heartbeats.observe($0) }
            let console = self.console
            let name = config.name
            runner = try VCPURunner(vcpus: vcpus) { reason in
                console.note(reason)
                EventLog.note(machine: name, "crashed: \(reason); every vCPU is stopped")
            }
            let context = DeviceContext(
                memory: ram, vcpuCount: Int(config.vcpuCount), console: console,
                interruptLine: { irq in
                    guard KVMInterruptLine.lines.contains(irq) else {
                        throw MachineError("interrupt line \(irq) does not exist (0 to 23)")
                    }
                    return KVMInterruptLine(vm: vm, irq: irq)
                },
                pacer: runner, disks: Dictionary(uniqueKeysWithValues: disks.map { ($0.config.name, $0) }))
            devices = try catalog.build(config.devices, context: context)
            dirtyLog = DirtyLog(vm: vm, ram: ram)
            registry = StateRegistry(
                sections: vcpus.enumerated().map {
                    VCPUStateSection(vcpu: $1, index: $0, migratedMSRs: migratedMSRs, host: hostLimits)
                }
                    + [VMStateSection(vm: vm)] + devices.map { DeviceStateSection(device: $0) })
            bus = try IOBus(devices: devices) { console.note($0) }
            try runner.start(bus: bus)
        } catch {
            ram.release()
            options.memoryFile?.putBack()  // opened: so created or sized here
            throw error
        }
        host = HostProbe.hostSpec(system: system)
        self.config = described
        lifecycle = Mutex(Lifecycle(state: incoming ? .incoming : .paused))
    }

    /// Before any vCPU runs (KVM refuses SET_CPUID2 afterwards): each vCPU gets the host's supported CPUID with its
    /// own APIC id. Returns vCPU 0's, which `describe` reports.
    private static func giveCPUID(_ vcpus: [KVMVCPU], supported: [kvm_cpuid_entry2]) throws -> [CPUIDLeaf] {
        for (index, vcpu) in vcpus.enumerated() { try vcpu.setCPUID(GuestLayout.cpuid(supported, index: UInt32(index))) }
        return try vcpus[0].cpuid().filter { !$0.isPadding }.map(CPUIDLeaf.init)
    }

    /// What a guest may be given here, to refuse one whose CPU features this host lacks: what a vCPU reports once
    /// given everything KVM supports (kvm_pvm's GET_CPUID2 adds the host CPU's own bits to what was set, so the
    /// supported list alone would understate it). The restore's SET_CPUID2 replaces this (the vCPU has not run).
    private static func offeredCPUID(_ supported: [kvm_cpuid_entry2], vcpu: KVMVCPU) throws -> [kvm_cpuid_entry2] {
        try vcpu.setCPUID(supported)
        return try vcpu.cpuid()
    }

    // MARK: ControlledMachine

    /// A machine a vCPU of which stopped by itself is `crashed`, whatever it was doing: its guest cannot go on.
    public func status() -> MachineStatus {
        let failure = runner.failure
        let state = failure == nil ? lifecycle.withLock { $0.state } : .crashed
        let guest = devices.lazy.compactMap { $0 as? GuestStatusDevice }.first
        return MachineStatus(
            name: config.name, state: state, memorySize: config.memorySize, vcpus: guest?.statuses ?? [],
            uptimeSeconds: Double(HostClock.monotonicNanoseconds() - startTime) / 1e9, pid: getpid(), disk: guest?.diskStatus,
            heartbeat: heartbeats.heartbeat, failure: failure, hugePageSize: ram.file.hugePageSize)
    }

    public func pause() throws {
        try lifecycle.withLock { (life: inout Lifecycle) throws -> Void in
            try Self.checkAlive(life)
            guard life.state == .running else { return }
            runner.pause()
            for device in devices { device.pause() }
            life.state = .paused
        }
    }

    public func resume() throws {
        try lifecycle.withLock { (life: inout Lifecycle) throws -> Void in
            try Self.checkAlive(life)
            if life.state == .incoming {
                throw MachineError("the incoming machine has no state yet: restore its state before resuming")
            }
            if let failure = runner.failure { throw MachineError("it has crashed (\(failure)) and cannot run again") }
            guard life.state != .running else { return }
            if let work = life.beforeFirstRun {
                try work()
                life.beforeFirstRun = nil
            }
            for vcpu in vcpus { try? vcpu.kvmclockCtrl() }  // best effort: EINVAL without a kvmclock guest
            for device in devices { device.resume() }
            runner.resume()
            life.state = .running
        }
    }

    public func destroy() {
        let first = lifecycle.withLock { life in
            defer { life.destroyed = true }
            return !life.destroyed
        }
        guard first else { return }
        runner.stop()
        for device in devices { device.stop() }
        for vcpu in vcpus { vcpu.close() }
        vm.close()
        system.close()
        ram.release()
    }

    public func dirtyLogStart(manualClear: Bool) throws -> Bool {
        try lifecycle.withLock { try Self.checkAlive($0) }
        let manual = try dirtyLog.start(manualClear: manualClear)
        for device in devices { device.setDirtyLogging(true) }
        return manual
    }

    public func dirtyLogStop() throws {
        try lifecycle.withLock { try Self.checkAlive($0) }
        try dirtyLog.stop()
        for device in devices { device.setDirtyLogging(false) }
    }

    public func dirtyLogFetch(segment: Int) throws -> [UInt64] {
        try lifecycle.withLock { try Self.checkAlive($0) }
        return try dirtyLog.fetch(segment: segment)
    }

    public func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        try lifecycle.withLock { try Self.checkAlive($0) }
        try dirtyLog.clear(segment: segment, firstPage: firstPage, bitmap: bitmap)
    }

    public func setThrottle(percent: Int) throws { runner.setThrottle(percent: percent) }

    public func consoleInput(_ bytes: [UInt8]) throws {
        try lifecycle.withLock { try Self.checkAlive($0) }
        guard let uart = devices.lazy.compactMap({ $0 as? UART16550 }).first else {
            throw MachineError("the machine has no serial port to type into")
        }
        try uart.receive(bytes)
    }

    public func diskFile(_ disk: Int) throws -> Int32 {
        try lifecycle.withLock { try Self.checkAlive($0) }
        return try checkedDisk(disk).file.rawValue
    }

    public func diskWrittenFetch(_ disk: Int) throws -> [UInt64] {
        try lifecycle.withLock { try Self.checkAlive($0) }
        guard dirtyLog.isOn else { throw MachineError("dirty logging is not started") }
        return try checkedDisk(disk).fetchWritten()
    }

    private func checkedDisk(_ index: Int) throws -> DiskImage {
        guard disks.indices.contains(index) else { throw MachineError("no disk \(index) (the machine has \(disks.count))") }
        return disks[index]
    }

    /// Kernel and device state of a paused machine, section by section (see `StateRegistry`).
    public func saveState() throws -> MachineState {
        try lifecycle.withLock { (life: inout Lifecycle) throws -> MachineState in
            try Self.checkAlive(life)
            guard life.state == .paused else {
                throw MachineError("the machine must be paused to save its state (it is \(life.state.rawValue))")
            }
            return try registry.save()
        }
    }

    /// Restores an incoming machine: every chunk is checked before any is restored. Leaves it paused.
    public func restoreState(_ state: MachineState) throws {
        try lifecycle.withLock { (life: inout Lifecycle) throws -> Void in
            try Self.checkAlive(life)
            guard life.state == .incoming else { throw MachineError("state can only be restored into an incoming machine") }
            let chunks = try checked(state)
            do {
                try registry.restore(chunks)
            } catch {
                throw MachineError("this host's KVM refused the state of VM '\(config.name)' while it was restored: \(error)")
            }
            life.state = .paused
        }
    }

    /// Checks `state` as `restoreState` would, restoring nothing: what `vmrun --check` answers for `vmrecv -n`.
    public func checkState(_ state: MachineState) throws {
        try lifecycle.withLock { (life: inout Lifecycle) throws -> Void in
            try Self.checkAlive(life)
            guard life.state == .incoming else { throw MachineError("state can only be checked for an incoming machine") }
            _ = try checked(state)
        }
    }

    private func checked(_ state: MachineState) throws -> [String: StateChunk] {
        do { return try registry.check(state) } catch { throw MachineError.hostRefusal(config.name, error) }
    }

    private static func checkAlive(_ life: Lifecycle) throws {
        if life.destroyed { throw MachineError("the machine has been destroyed") }
    }
}

extension kvm_cpuid_entry2 {
    /// An all-zero entry, as KVM_GET_CPUID2 may leave at the end of its array.
    var isPadding: Bool { function == 0 && index == 0 && flags == 0 && eax == 0 && ebx == 0 && ecx == 0 && edx == 0 }
}

extension Optional where Wrapped: RangeReplaceableCollection {
    /// The collection, or an empty one.
    var orEmpty: Wrapped { self ?? Wrapped() }
}
