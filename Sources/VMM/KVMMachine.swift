import CKVM
import Glibc
import KVM
import MachineDescription
import Synchronization

/// How `vmrun` wants a machine set up, beyond its `MachineConfig`.
public struct MachineOptions: Sendable {
    /// File whose bytes preload guest RAM (segments back to back), for benchmarks.
    /// With `startPaused`, RAM holds exactly the image until the first `resume` writes the guest's boot area
    /// (GDT, page tables, code: the first 4 MiB); without it, the boot area is written at once.
    public var memoryImage: String?
    /// Create the machine but do not run its vCPUs (as `qemu -S`).
    public var startPaused: Bool
    /// Where the UART's output is appended.
    public var consoleLog: String
    /// Bytes of guest RAM the bundled guest works over, split between its vCPUs. (An incoming machine takes
    /// this and the rate from its received configuration instead.)
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

/// Whether a dirty-log fetch clears what it returns, or the client clears pages itself just before copying them.
enum DirtyLogMode { case clearOnFetch, manualClear }

/// A machine on KVM running the bundled guest.
///
/// Threads: one pthread per vCPU runs KVM_RUN and emulates the UART and the status device; every other method
/// is called from one control thread and serialised by `control`. `@unchecked Sendable`: the mutable run state
/// is only touched with `gate` held.
public final class KVMMachine: ControlledMachine, @unchecked Sendable {
    public let config: MachineConfig
    public let host: HostSpec
    public let memoryFile: Int32

    /// The signal that interrupts KVM_RUN; its handler does nothing.
    static let kickSignal = SIGUSR2
    static let uartPort: UInt16 = 0x3f8
    static let uartIRQ: UInt32 = 4
    /// Kernel state chunks are raw KVM structs: version 1 is the x86-64 KVM ABI of `linux/kvm.h`.
    static let kernelStateVersion: UInt32 = 1

    private let system: KVMSystem
    private let vm: KVMVirtualMachine
    private let vcpus: [KVMVCPU]
    private let memory: GuestMemory
    private let uart: UART16550
    private let statusDevice: GuestStatusDevice
    private let migratedMSRs: [UInt32]
    private let startTime = monotonicNanoseconds()
    private let control = Mutex(())
    private let gate = Gate()
    /// Mirrors `pauseRequested` for pacing sleeps, which must end early when a pause comes.
    private let pauseFlag = Atomic(true)

    // Guarded by `gate`.
    private var runState: RunState
    private var pauseRequested = true
    private var quitting = false
    private var destroyed = false
    private var parkedCount = 0
    private var threads: [pthread_t] = []
    private var crashed: Set<Int> = []
    private var failureText: String?
    private var awaitingState: Bool
    private var bootArea: (topOfRAM: UInt64, pending: Bool)
    private var dirtyLogging: DirtyLogMode?

    /// Why the guest stopped by itself (triple fault, unmapped memory, a KVM error), if it did.
    public var failure: String? { gate.withLock { failureText } }

    /// Creates and starts (unless `options.startPaused`) a new machine running the bundled guest.
    public static func boot(name: String, vcpus: UInt32, memorySize: UInt64, options: MachineOptions) throws -> KVMMachine {
        guard (1...GuestLayout.maxVCPUs).contains(vcpus) else {
            throw MachineError("--cpus \(vcpus): between 1 and \(GuestLayout.maxVCPUs) vCPUs are supported")
        }
        guard memorySize % 4096 == 0 else { throw MachineError("--memory \(memorySize): not a multiple of 4 KiB") }
        let workingSet = options.guestWorkingSet
        guard workingSet >= UInt64(vcpus) * 4096, workingSet % 4096 == 0 else {
            throw MachineError("--guest-working-set \(workingSet): needs a multiple of 4 KiB, at least one page per vCPU")
        }
        guard memorySize >= GuestLayout.reservedEnd + workingSet else {
            throw MachineError("--memory \(memorySize): too small for the guest (\(GuestLayout.reservedEnd >> 20) MiB plus the working set of \(workingSet) bytes)")
        }
        let segments = MemorySegment.standardLayout(memorySize: memorySize)
        let top = segments[segments.count - 1]
        let usable = top.size - (top.guestPhysicalBase == 0 ? GuestLayout.reservedEnd : 0)
        guard workingSet <= usable else {
            throw MachineError("--guest-working-set \(workingSet): does not fit in the top memory segment (\(top.name), \(usable) bytes usable)")
        }
        let settings = GuestStatusDevice.Settings(workingSet: workingSet, dirtyRate: options.guestDirtyRate, vcpus: vcpus)
        let config = MachineConfig(name: name, vcpuCount: vcpus, segments: segments,
                                   devices: standardDevices(settings), cpuid: [])
        let machine = try KVMMachine(config: config, options: options, settings: settings, incoming: false)
        do {
            try machine.setUpGuest(options: options)
            if !options.startPaused { try machine.resume() }
        } catch {
            machine.destroy()
            throw error
        }
        return machine
    }

    /// Creates a machine from a received configuration, in the incoming state: memory and vCPUs
    /// exist, nothing runs until `restoreState` and `resume`. Refuses devices it does not know.
    public static func incoming(config: MachineConfig, options: MachineOptions) throws -> KVMMachine {
        guard (1...GuestLayout.maxVCPUs).contains(config.vcpuCount) else {
            throw MachineError("incoming machine: \(config.vcpuCount) vCPUs; between 1 and \(GuestLayout.maxVCPUs) are supported")
        }
        guard config.segments == MemorySegment.standardLayout(memorySize: config.memorySize),
              config.memorySize % 4096 == 0, config.memorySize >= GuestLayout.reservedEnd else {
            throw MachineError("incoming machine: memory layout \(config.segments.map { "\($0.name)@\($0.guestPhysicalBase)+\($0.size)" }) is not the standard layout")
        }
        var settings: GuestStatusDevice.Settings?
        var names: Set<String> = []
        for device in config.devices {
            guard names.insert(device.name).inserted else { throw MachineError("incoming machine: device \(device.name) listed twice") }
            switch device.kind {
            case UART16550.kind:
                guard device.version == UART16550.stateVersion else {
                    throw MachineError("device \(device.name): \(device.kind) version \(device.version), this vmrun understands \(UART16550.stateVersion)")
                }
            case GuestStatusDevice.kind:
                guard device.version == GuestStatusDevice.stateVersion else {
                    throw MachineError("device \(device.name): \(device.kind) version \(device.version), this vmrun understands \(GuestStatusDevice.stateVersion)")
                }
                settings = try GuestStatusDevice.Settings(configuration: device.configuration)
            default:
                throw MachineError("device \(device.name): unknown kind \(device.kind)")
            }
        }
        guard let settings, config.devices.count == 2 else {
            throw MachineError("incoming machine: needs exactly the devices uart0 (\(UART16550.kind)) and status0 (\(GuestStatusDevice.kind))")
        }
        return try KVMMachine(config: config, options: options, settings: settings, incoming: true)
    }

    static func standardDevices(_ settings: GuestStatusDevice.Settings) -> [DeviceConfig] {
        [DeviceConfig(name: "uart0", kind: UART16550.kind, version: UART16550.stateVersion,
                      configuration: ["port": "0x3f8", "irq": "4"]),
         DeviceConfig(name: "status0", kind: GuestStatusDevice.kind, version: GuestStatusDevice.stateVersion,
                      configuration: settings.configuration)]
    }

    private init(config: MachineConfig, options: MachineOptions, settings: GuestStatusDevice.Settings, incoming: Bool) throws {
        let physical = HostProbe.physicalMemory
        guard config.memorySize <= physical else {
            throw MachineError("--memory \(config.memorySize): more than this host's \(physical) bytes of RAM")
        }
        let topOfRAM = config.segments.map { $0.guestPhysicalBase + $0.size }.max() ?? 0
        guard topOfRAM <= GuestLayout.maxAddressableBytes else {
            throw MachineError("--memory \(config.memorySize): more than the guest can address (\(GuestLayout.maxAddressableBytes >> 30) GiB)")
        }
        if ckvm_install_kick_handler(Self.kickSignal) != 0 {
            throw MachineError("sigaction: \(String(cString: strerror(errno)))")
        }
        system = try KVMSystem()
        vm = try system.createVirtualMachine()
        try vm.setTSSAddress(GuestLayout.tssAddress)
        try vm.createIRQChip()
        try vm.createPIT2()
        let vm = self.vm
        var described = config
        memory = try GuestMemory(name: config.name, segments: config.segments)
        memoryFile = memory.fileDescriptor
        do {
            for (slot, segment) in config.segments.enumerated() {
                try vm.setMemoryRegion(slot: UInt32(slot), guestPhysical: segment.guestPhysicalBase, size: segment.size,
                                       userAddress: memory.base + memory.fileOffset(ofSegment: slot), logDirtyPages: false)
            }
            vcpus = try (0..<config.vcpuCount).map { try vm.createVCPU(id: $0) }
            if incoming && !config.cpuid.isEmpty {
                // Compare with what a vCPU here reports once given everything KVM supports: kvm_pvm's GET_CPUID2
                // adds the host CPU's own bits to what was set, so the supported list alone would understate it.
                // The restore's SET_CPUID2 replaces this (the vCPU has not run).
                try vcpus[0].setCPUID(try system.supportedCPUID())
                if let missing = CPUIDCompatibility.missingFeatures(guest: config.cpuid, host: try vcpus[0].cpuid()) {
                    throw MachineError("this host cannot run the incoming guest: its CPU lacks features the guest uses (\(missing))")
                }
            }
            if !incoming {
                // Before any vCPU runs: KVM refuses SET_CPUID2 afterwards. `describe` reports vCPU 0's.
                let supported = try system.supportedCPUID()
                for (index, vcpu) in vcpus.enumerated() { try vcpu.setCPUID(GuestLayout.cpuid(supported, index: UInt32(index))) }
                described.cpuid = try vcpus[0].cpuid().filter { !$0.isPadding }.map {
                    CPUIDLeaf(function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
                }
            }
            let candidates = try system.msrIndexList().filter(MSRList.isMigrated)
            migratedMSRs = vcpus[0].readableMSRs(candidates)
            let line = Self.uartIRQ
            uart = try UART16550(consoleLogPath: options.consoleLog) { high in
                try? vm.setIRQLine(line, high: high)
            }
        } catch {
            memory.release()
            throw error
        }
        statusDevice = GuestStatusDevice(settings: settings, memory: memory, vcpus: config.vcpuCount)
        host = HostProbe.hostSpec(system: system)
        self.config = described
        runState = incoming ? .incoming : .paused
        awaitingState = incoming
        bootArea = (topOfRAM, false)
        for index in vcpus.indices {
            let thread = try startThread { [self] in runVCPU(index) }
            gate.withLock { threads.append(thread) }
        }
    }

    /// Boot-only set-up: ring-3 registers, the working-set slices, the boot area in RAM.
    private func setUpGuest(options: MachineOptions) throws {
        let settings = statusDevice.settings
        let top = config.segments[config.segments.count - 1]
        let workingSetBase = top.guestPhysicalBase + top.size - settings.workingSet
        let sliceSize = (settings.workingSet / UInt64(vcpus.count)) & ~4095
        for (index, vcpu) in vcpus.enumerated() {
            // With the in-kernel LAPIC, vCPUs other than 0 would wait for INIT/SIPI; the guest has no boot CPU code.
            try vcpu.setState(.mpState, withUnsafeBytes(of: UInt32(KVM_MP_STATE_RUNNABLE)) { Array($0) })
            try vcpu.setSregs(GuestLayout.startSregs(from: try vcpu.sregs()))
            let seed = (UInt64(index) + 1) &* 0x9e37_79b9_7f4a_7c15 ^ 0x5dee_ce66_d
            try vcpu.setRegs(GuestLayout.startRegs(index: UInt32(index),
                                                   slice: (workingSetBase + UInt64(index) * sliceSize, sliceSize),
                                                   seed: seed, writesPerTick: settings.writesPerTick))
        }
        if let image = options.memoryImage { try memory.load(imagePath: image) }
        if options.memoryImage != nil && options.startPaused {
            gate.withLock { bootArea.pending = true }
        } else {
            try GuestLayout.writeBootArea(into: memory, topOfRAM: bootArea.topOfRAM)
        }
    }

    // MARK: vCPU threads

    private func runVCPU(_ index: Int) {
        var unblock = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, Self.kickSignal)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        let vcpu = vcpus[index]
        var ioPending = false
        while true {
            gate.lock()
            if pauseRequested || quitting || crashed.contains(index) {
                if ioPending && !crashed.contains(index) {
                    gate.unlock()
                    // Re-enter with immediate_exit set: KVM completes the half-done I/O, then returns EINTR.
                    vcpu.setImmediateExit(true)
                    _ = try? vcpu.runOnce()
                    ioPending = false
                    continue
                }
                if quitting {
                    gate.unlock()
                    return
                }
                parkedCount += 1
                gate.broadcast()
                while (pauseRequested || crashed.contains(index)) && !quitting { gate.wait() }
                parkedCount -= 1
                gate.unlock()
                continue
            }
            vcpu.setImmediateExit(false)
            gate.unlock()

            let exit: VCPUExit
            do { exit = try vcpu.runOnce() } catch {
                crash(index, "\(error)")
                continue
            }
            switch exit {
            case .interrupted, .halt:
                ioPending = false
            case let .io(port, isWrite, size, count, dataOffset):
                ioPending = true
                guard let data = vcpu.ioData(offset: dataOffset, count: size * count) else {
                    crash(index, "KVM_EXIT_IO with data outside kvm_run")
                    continue
                }
                for item in 0..<count {
                    emulateIO(vcpu: index, port: port, isWrite: isWrite,
                              data: UnsafeMutableRawBufferPointer(rebasing: data[item * size..<(item + 1) * size]))
                }
            case let .mmio(address):
                crash(index, "the guest touched unmapped memory at 0x\(String(address, radix: 16))")
            case .shutdown:
                crash(index, "the guest crashed (triple fault: KVM_EXIT_SHUTDOWN)")
            case let .failEntry(reason):
                crash(index, "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, reason 0x\(String(reason, radix: 16)))")
            case let .internalError(suberror):
                crash(index, "KVM internal error (suberror \(suberror))")
            case let .other(reason):
                crash(index, "unexpected exit reason \(reason)")
            }
        }
    }

    private func emulateIO(vcpu index: Int, port: UInt16, isWrite: Bool, data: UnsafeMutableRawBufferPointer) {
        switch port {
        case Self.uartPort..<Self.uartPort + 8:
            let value = uart.access(offset: port - Self.uartPort, isWrite: isWrite, value: isWrite ? data[0] : 0)
            if !isWrite {
                data.initializeMemory(as: UInt8.self, repeating: 0)
                data[0] = value
            }
        case GuestLayout.statusPort where !isWrite:
            let (reply, sleep) = statusDevice.tick(vcpu: index)
            withUnsafeBytes(of: reply.littleEndian) { reply in
                data.copyMemory(from: UnsafeRawBufferPointer(rebasing: reply.prefix(data.count)))
            }
            pace(nanoseconds: sleep)
        case GuestLayout.checkPort where isWrite:
            statusDevice.check(vcpu: index)
        default:
            if !isWrite { data.initializeMemory(as: UInt8.self, repeating: 0xff) }
        }
    }

    /// Sleeps for pacing in short steps, ending early when a pause is requested.
    private func pace(nanoseconds: UInt64) {
        var remaining = nanoseconds
        while remaining > 0 && !pauseFlag.load(ordering: .relaxed) {
            let step = min(remaining, 5_000_000)
            var request = timespec(tv_sec: 0, tv_nsec: Int(step))
            nanosleep(&request, nil)
            remaining -= step
        }
    }

    private func crash(_ index: Int, _ reason: String) {
        let text = "vcpu\(index): \(reason)"
        gate.withLock {
            crashed.insert(index)
            if failureText == nil { failureText = text }
            gate.broadcast()
        }
        uart.logNote("vmrun: \(text)\n")
    }

    // MARK: ControlledMachine

    public func status() -> MachineStatus {
        let state = gate.withLock { runState }
        return MachineStatus(name: config.name, state: state, memorySize: config.memorySize, vcpus: statusDevice.statuses,
                             uptimeSeconds: Double(monotonicNanoseconds() - startTime) / 1e9, pid: getpid())
    }

    public func pause() throws {
        try control.withLock { _ in
            gate.lock()
            defer { gate.unlock() }
            try checkAlive()
            guard runState == .running else { return }
            pauseRequested = true
            pauseFlag.store(true, ordering: .relaxed)
            for vcpu in vcpus { vcpu.setImmediateExit(true) }
            while parkedCount < vcpus.count {
                for thread in threads { pthread_kill(thread, Self.kickSignal) }
                gate.wait(nanoseconds: 10_000_000)
            }
            runState = .paused
            uart.flush()
        }
    }

    public func resume() throws {
        try control.withLock { _ in
            gate.lock()
            defer { gate.unlock() }
            try checkAlive()
            if awaitingState { throw MachineError("the incoming machine has no state yet: restore its state before resuming") }
            guard runState != .running else { return }
            if bootArea.pending {
                try GuestLayout.writeBootArea(into: memory, topOfRAM: bootArea.topOfRAM)
                bootArea.pending = false
            }
            for vcpu in vcpus { try? vcpu.kvmclockCtrl() }   // best effort: EINVAL without a kvmclock guest
            statusDevice.resetTiming()
            pauseRequested = false
            pauseFlag.store(false, ordering: .relaxed)
            runState = .running
            gate.broadcast()
        }
    }

    public func destroy() {
        control.withLock { _ in
            gate.lock()
            if destroyed {
                gate.unlock()
                return
            }
            destroyed = true
            quitting = true
            pauseRequested = true
            pauseFlag.store(true, ordering: .relaxed)
            for vcpu in vcpus { vcpu.setImmediateExit(true) }
            let running = threads
            threads = []
            gate.broadcast()
            gate.unlock()
            for thread in running {
                pthread_kill(thread, Self.kickSignal)
                pthread_join(thread, nil)
            }
            uart.flush()
            for vcpu in vcpus { vcpu.close() }
            vm.close()
            system.close()
            memory.release()
        }
    }

    public func dirtyLogStart(manualClear: Bool) throws -> Bool {
        let manual = manualClear && vm.manualDirtyProtect
        try setDirtyLogging(true, manualClear: manual)
        return manual
    }
    public func setThrottle(percent: Int) throws { statusDevice.throttlePercent.store(max(0, min(99, percent)), ordering: .relaxed) }
    public func dirtyLogStop() throws { try setDirtyLogging(false, manualClear: false) }

    private func setDirtyLogging(_ on: Bool, manualClear: Bool) throws {
        try control.withLock { _ in
            try gate.withLock { try checkAlive() }
            for (slot, segment) in config.segments.enumerated() {
                try vm.setMemoryRegion(slot: UInt32(slot), guestPhysical: segment.guestPhysicalBase, size: segment.size,
                                       userAddress: memory.base + memory.fileOffset(ofSegment: slot), logDirtyPages: on)
            }
            gate.withLock { dirtyLogging = on ? (manualClear ? .manualClear : .clearOnFetch) : nil }
            statusDevice.holdChecks.store(on, ordering: .relaxed)
        }
    }

    public func dirtyLogFetch(segment: Int) throws -> [UInt64] {
        try control.withLock { _ in
            let mode = try loggingMode()
            let pages = try loggedSegmentPages(segment)
            if mode == .manualClear { return try vm.dirtyLog(slot: UInt32(segment), pageCount: pages) }
            return try vm.fetchAndClearDirtyLog(slot: UInt32(segment), pageCount: pages)
        }
    }

    public func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        try control.withLock { _ in
            guard try loggingMode() == .manualClear else {
                throw MachineError("dirty logging was started without manual clearing: fetches clear the log")
            }
            let pages = try loggedSegmentPages(segment)
            guard firstPage % 64 == 0, firstPage < pages else {
                throw MachineError("dirty log clear: first page \(firstPage) is not a multiple of 64 inside segment \(segment) (\(pages) pages)")
            }
            let count = min(UInt64(bitmap.count) * 64, pages - firstPage)
            guard !bitmap.isEmpty, UInt64(bitmap.count) == (count + 63) / 64 else {
                throw MachineError("dirty log clear: \(bitmap.count) bitmap words from page \(firstPage) do not fit segment \(segment) (\(pages) pages)")
            }
            if count % 64 != 0, bitmap[bitmap.count - 1] >> (count % 64) != 0 {
                throw MachineError("dirty log clear: bits set beyond the end of segment \(segment) (\(pages) pages)")
            }
            try vm.clearDirtyLog(slot: UInt32(segment), firstPage: firstPage, pageCount: count, bitmap: bitmap)
        }
    }

    /// How dirty logging runs; throws unless it does.
    private func loggingMode() throws -> DirtyLogMode {
        try gate.withLock {
            try checkAlive()
            guard let mode = dirtyLogging else { throw MachineError("dirty logging is not started") }
            return mode
        }
    }

    /// Pages of `segment`, or a clear error for a segment the machine does not have.
    private func loggedSegmentPages(_ segment: Int) throws -> UInt64 {
        guard config.segments.indices.contains(segment) else {
            throw MachineError("no memory segment \(segment) (the machine has \(config.segments.count))")
        }
        return config.segments[segment].size / 4096
    }

    public func consoleInput(_ bytes: [UInt8]) throws {
        try gate.withLock { try checkAlive() }
        try uart.receive(bytes)
    }

    private func checkAlive() throws {
        if destroyed { throw MachineError("the machine has been destroyed") }
    }

    // MARK: State

    /// Kernel chunks, in save order (kvm-state.md), each the raw bytes of the kernel struct its ioctl fills:
    /// per vCPU `vcpuN/mpstate`, `regs`, `sregs`, `xsave` (XSAVE2-sized), `xcrs`, `debugregs`, `lapic`,
    /// `tsc-khz` (u32 LE), `cpuid` (kvm_cpuid2), `msrs` (kvm_msrs over the allow-list), `events`; then `vm/pit`,
    /// `vm/clock`, `vm/irqchip0..2`. Raw structs tie a chunk to the x86-64 KVM ABI: version 1 is that ABI, and a
    /// receiver checks every length. Device chunks `uart0` and `status0` are our own little-endian layouts.
    public func saveState() throws -> MachineState {
        try control.withLock { _ in
            try gate.withLock {
                try checkAlive()
                guard runState == .paused, !awaitingState else {
                    throw MachineError("the machine must be paused to save its state (it is \(runState.rawValue))")
                }
            }
            var kernel: [StateChunk] = []
            func add(_ name: String, _ data: [UInt8]) {
                kernel.append(StateChunk(name: name, version: Self.kernelStateVersion, data: data))
            }
            for (index, vcpu) in vcpus.enumerated() {
                let prefix = "vcpu\(index)/"
                // MP_STATE first: reading it can change LAPIC state.
                for item in [VCPUStateItem.mpState, .regs, .sregs, .xsave, .xcrs, .debugregs, .lapic] {
                    add(prefix + item.rawValue, try vcpu.state(item))
                }
                withUnsafeBytes(of: try vcpu.tscKHz().littleEndian) { add(prefix + "tsc-khz", Array($0)) }
                add(prefix + "cpuid", try vcpu.cpuidState())
                add(prefix + "msrs", MSRList.encode(try vcpu.msrs(migratedMSRs)))
                add(prefix + VCPUStateItem.events.rawValue, try vcpu.state(.events))
            }
            add("vm/pit", try vm.pitState())
            add("vm/clock", try vm.clock())
            for chip in 0..<KVMVirtualMachine.irqchipCount { add("vm/irqchip\(chip)", try vm.irqchip(chip)) }
            uart.flush()
            let devices = [StateChunk(name: "uart0", version: UART16550.stateVersion, data: uart.encodeState()),
                           StateChunk(name: "status0", version: GuestStatusDevice.stateVersion, data: statusDevice.encodeState())]
            return MachineState(kernel: kernel, devices: devices)
        }
    }

    public func restoreState(_ state: MachineState) throws {
        try control.withLock { _ in
            try gate.withLock {
                try checkAlive()
                guard awaitingState else { throw MachineError("state can only be restored into an incoming machine") }
            }
            let chunks = try Self.index(state.kernel, kind: "kernel")
            let devices = try Self.index(state.devices, kind: "device")
            var expected: Set<String> = ["vm/pit", "vm/clock"]
            for chip in 0..<KVMVirtualMachine.irqchipCount { expected.insert("vm/irqchip\(chip)") }
            for index in vcpus.indices {
                for item in VCPUStateItem.allCases { expected.insert("vcpu\(index)/\(item.rawValue)") }
                for extra in ["tsc-khz", "cpuid", "msrs"] { expected.insert("vcpu\(index)/\(extra)") }
            }
            if let unknown = Set(chunks.keys).subtracting(expected).sorted().first {
                throw MachineError("state chunk \(unknown) is not known to this vmrun")
            }
            if let missing = expected.subtracting(chunks.keys).sorted().first {
                throw MachineError("state chunk \(missing) is missing")
            }
            for chunk in state.kernel where chunk.version != Self.kernelStateVersion {
                throw MachineError("state chunk \(chunk.name): version \(chunk.version), this vmrun understands \(Self.kernelStateVersion)")
            }
            guard let uartState = devices["uart0"], let statusState = devices["status0"], devices.count == 2 else {
                throw MachineError("device state must hold exactly uart0 and status0 (got \(devices.keys.sorted()))")
            }
            func data(_ name: String) -> [UInt8] { chunks[name]!.data }

            // TSC frequency: only when it differs by more than 250 ppm from this host's.
            let savedKHz = data("vcpu0/tsc-khz")
            guard savedKHz.count == 4 else { throw MachineError("state chunk vcpu0/tsc-khz: \(savedKHz.count) bytes, expected 4") }
            let saved = UInt32(savedKHz[0]) | UInt32(savedKHz[1]) << 8 | UInt32(savedKHz[2]) << 16 | UInt32(savedKHz[3]) << 24
            let here = try vcpus[0].tscKHz()
            if saved != 0, abs(Double(saved) - Double(here)) / Double(here) > 250e-6 {
                for vcpu in vcpus { try vcpu.setTSCKHz(saved) }
            }
            for (index, vcpu) in vcpus.enumerated() {
                let prefix = "vcpu\(index)/"
                try vcpu.setCPUIDState(data(prefix + "cpuid"))
                for item in [VCPUStateItem.mpState, .regs, .sregs, .xsave, .xcrs, .debugregs, .lapic] {
                    try vcpu.setState(item, data(prefix + item.rawValue))
                }
                guard let msrs = MSRList.decode(data(prefix + "msrs")) else {
                    throw MachineError("state chunk \(prefix)msrs: malformed kvm_msrs")
                }
                // Only MSRs a sender may migrate: a stream must not set MCG_CTL or anything else off the list.
                if let foreign = msrs.first(where: { !MSRList.isMigrated($0.index) }) {
                    throw MachineError("state chunk \(prefix)msrs: MSR 0x\(String(foreign.index, radix: 16)) is not one that migrates")
                }
                // TSC_DEADLINE after TSC, in its own call (Firecracker #4099).
                try vcpu.setMSRs(msrs.filter { $0.index != MSRList.tscDeadline })
                try vcpu.setMSRs(msrs.filter { $0.index == MSRList.tscDeadline })
                try vcpu.setState(.events, data(prefix + VCPUStateItem.events.rawValue))
            }
            try vm.setPITState(data("vm/pit"))
            try vm.setClock(data("vm/clock"))
            for chip in 0..<KVMVirtualMachine.irqchipCount { try vm.setIRQChip(data("vm/irqchip\(chip)")) }
            try uart.restoreState(uartState.data, version: uartState.version)
            try statusDevice.restoreState(statusState.data, version: statusState.version)
            gate.withLock {
                awaitingState = false
                runState = .paused
            }
        }
    }

    private static func index(_ chunks: [StateChunk], kind: String) throws -> [String: StateChunk] {
        var byName: [String: StateChunk] = [:]
        for chunk in chunks {
            guard byName.updateValue(chunk, forKey: chunk.name) == nil else {
                throw MachineError("\(kind) state chunk \(chunk.name) appears twice")
            }
        }
        return byName
    }
}

extension kvm_cpuid_entry2 {
    /// An all-zero entry, as KVM_GET_CPUID2 may leave at the end of its array.
    var isPadding: Bool { function == 0 && index == 0 && flags == 0 && eax == 0 && ebx == 0 && ecx == 0 && edx == 0 }
}
