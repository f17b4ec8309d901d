import CKVM
import KVM
import MachineDescription
import SystemSupport

/// What this host offers, for checking received kernel chunks: its CPU's features and XSAVE components as KVM
/// reports them, and its TSC.
struct HostLimits {
    var cpuid: [kvm_cpuid_entry2]
    var xcr0: UInt64
    var tscKHz: UInt32
    var tscScaling: Bool

    /// KVM_MAX_CPUID_ENTRIES and the most MSRs KVM_SET_MSRS takes in one call.
    static let maxCPUIDEntries = 256
    static let maxMSRs = 255
}

/// Kernel chunks are raw KVM structs: version 1 is the x86-64 KVM ABI of `linux/kvm.h`, and every length is
/// checked against this host's structs.
let kernelStateVersion: UInt32 = 1

/// One vCPU's state: `vcpuN/mpstate`, `regs`, `sregs`, `xsave` (XSAVE2-sized), `xcrs`, `debugregs`, `lapic`,
/// `tsc-khz` (u32 LE), `cpuid` (kvm_cpuid2), `msrs` (kvm_msrs over the migration allow-list), `events`.
struct VCPUStateSection: StateSection {
    let vcpu: KVMVCPU
    let index: Int
    /// The MSRs saved: the allow-list, less what this host's KVM refuses.
    let migratedMSRs: [UInt32]
    /// What a received chunk is checked against: this host's CPU and its KVM.
    let host: HostLimits

    /// Saved in this order: MP_STATE first (reading it can change LAPIC state), events last.
    static let structItems: [VCPUStateItem] = [.mpState, .regs, .sregs, .xsave, .xcrs, .debugregs, .lapic]

    var isDevice: Bool { false }
    private var prefix: String { "vcpu\(index)/" }

    var chunkVersions: [(name: String, version: UInt32)] {
        (Self.structItems.map(\.rawValue) + ["tsc-khz", "cpuid", "msrs", VCPUStateItem.events.rawValue])
            .map { (prefix + $0, kernelStateVersion) }
    }

    func save() throws -> [StateChunk] {
        var chunks: [StateChunk] = []
        func add(_ name: String, _ data: [UInt8]) {
            chunks.append(StateChunk(name: prefix + name, version: kernelStateVersion, data: data))
        }
        for item in Self.structItems { add(item.rawValue, try vcpu.state(item)) }
        var khz = ByteWriter()
        khz.u32(try vcpu.tscKHz())
        add("tsc-khz", khz.bytes)
        add("cpuid", try vcpu.cpuidState())
        add("msrs", MSRList.encode(try vcpu.msrs(migratedMSRs)))
        add(VCPUStateItem.events.rawValue, try vcpu.state(.events))
        return chunks
    }

    func check(_ chunks: [String: StateChunk]) throws {
        for item in Self.structItems + [.events] {
            let count = chunks.data(prefix + item.rawValue).count
            guard count == vcpu.size(of: item) else {
                throw MachineError(
                    "state chunk \(prefix)\(item.rawValue): \(count) bytes, this host's KVM expects \(vcpu.size(of: item))")
            }
        }
        guard let cpuid = CPUIDList.decode(chunks.data(prefix + "cpuid")), cpuid.count <= HostLimits.maxCPUIDEntries else {
            throw MachineError(
                "state chunk \(prefix)cpuid: not a kvm_cpuid2 of at most \(HostLimits.maxCPUIDEntries) entries (\(chunks.data(prefix + "cpuid").count) bytes)"
            )
        }
        if let missing = CPUIDCompatibility.missingFeatures(guest: cpuid.map(CPUIDLeaf.init), host: host.cpuid) {
            throw MachineError("state chunk \(prefix)cpuid: this host's CPU lacks features it gives the guest (\(missing))")
        }
        let xcr0 = KernelStateShape.allowedXCR0(guest: cpuid, hostXCR0: host.xcr0)
        try shape(.mpState) { try KernelStateShape.mpState($0) }
        try shape(.sregs) { try KernelStateShape.sregs($0) }
        try shape(.xsave) { try KernelStateShape.xsave($0, allowed: xcr0) }
        try shape(.xcrs) { try KernelStateShape.xcrs($0, allowed: xcr0) }
        try shape(.debugregs) { try KernelStateShape.debugregs($0) }
        try shape(.events) { try KernelStateShape.events($0) }
        try checkTSC(chunks.data(prefix + "tsc-khz"))
        guard let msrs = MSRList.decode(chunks.data(prefix + "msrs")), msrs.count <= HostLimits.maxMSRs else {
            throw MachineError("state chunk \(prefix)msrs: not a kvm_msrs of at most \(HostLimits.maxMSRs) entries")
        }
        // Only MSRs a sender may migrate (never MCG_CTL), and only those this host's KVM takes.
        if let foreign = msrs.first(where: { !MSRList.isMigrated($0.index) }) {
            throw MachineError("state chunk \(prefix)msrs: MSR 0x\(String(foreign.index, radix: 16)) is not one that migrates")
        }
        if let unknown = msrs.first(where: { !migratedMSRs.contains($0.index) }) {
            throw MachineError(
                "state chunk \(prefix)msrs: MSR 0x\(String(unknown.index, radix: 16)) is not one this host's KVM has")
        }

        func shape(_ item: VCPUStateItem, _ check: ([UInt8]) throws -> Void) throws {
            do { try check(chunks.data(prefix + item.rawValue)) } catch {
                throw MachineError("state chunk \(prefix)\(item.rawValue): \(error)")
            }
        }
    }

    /// The guest's TSC must tick as it did: within 250 ppm of this host's (nothing is set then), or at a rate this
    /// host's KVM scales to (KVM_CAP_TSC_CONTROL), no further than 8 times off. Without scaling KVM would take a
    /// faster rate and make the guest's TSC jump to catch up, so that is refused too.
    private func checkTSC(_ bytes: [UInt8]) throws {
        guard let khz = Self.tscKHz(bytes) else {
            throw MachineError("state chunk \(prefix)tsc-khz: \(bytes.count) bytes, expected 4")
        }
        let here = Double(host.tscKHz)
        if khz > 0, abs(Double(khz) - here) / here <= 250e-6 { return }
        let name = "state chunk \(prefix)tsc-khz"
        guard host.tscScaling else {
            throw MachineError(
                "\(name): the guest's TSC runs at \(khz) kHz, this host's at \(host.tscKHz) kHz, and this host's KVM cannot scale it"
            )
        }
        guard Double(khz) >= here / 8, Double(khz) <= here * 8 else {
            throw MachineError("\(name): \(khz) kHz, expected within 8 times this host's \(host.tscKHz) kHz")
        }
    }

    /// In the order of docs/kvm-state.md: TSC frequency, CPUID, then the structs (LAPIC after SREGS, which carries
    /// the APIC base), MSRs after the LAPIC with TSC_DEADLINE last and alone, events after REGS (which clears them).
    func restore(_ chunks: [String: StateChunk]) throws {
        // The TSC frequency only when it differs by more than 250 ppm from this host's.
        let saved = Self.tscKHz(chunks.data(prefix + "tsc-khz"))!
        let here = try vcpu.tscKHz()
        if abs(Double(saved) - Double(here)) / Double(here) > 250e-6 { try vcpu.setTSCKHz(saved) }
        try vcpu.setCPUIDState(chunks.data(prefix + "cpuid"))
        for item in Self.structItems { try vcpu.setState(item, chunks.data(prefix + item.rawValue)) }
        let msrs = MSRList.decode(chunks.data(prefix + "msrs"))!
        try vcpu.setMSRs(msrs.filter { $0.index != MSRList.tscDeadline })
        try vcpu.setMSRs(msrs.filter { $0.index == MSRList.tscDeadline })
        try vcpu.setState(.events, chunks.data(prefix + VCPUStateItem.events.rawValue))
    }

    private static func tscKHz(_ bytes: [UInt8]) -> UInt32? {
        var reader = ByteReader(bytes)
        guard let value = reader.u32(), reader.atEnd else { return nil }
        return value
    }
}

/// The VM's in-kernel devices: `vm/pit`, `vm/clock`, `vm/irqchip0..2` (PIC master, PIC slave, IOAPIC). Restored
/// after every vCPU, and the clock before any vCPU runs.
struct VMStateSection: StateSection {
    let vm: KVMVirtualMachine

    var isDevice: Bool { false }
    private static var irqchips: [String] { (0..<KVMVirtualMachine.irqchipCount).map { "vm/irqchip\($0)" } }

    var chunkVersions: [(name: String, version: UInt32)] {
        (["vm/pit", "vm/clock"] + Self.irqchips).map { ($0, kernelStateVersion) }
    }

    func save() throws -> [StateChunk] {
        var chunks = [
            StateChunk(name: "vm/pit", version: kernelStateVersion, data: try vm.pitState()),
            StateChunk(name: "vm/clock", version: kernelStateVersion, data: try vm.clock()),
        ]
        for chip in 0..<KVMVirtualMachine.irqchipCount {
            chunks.append(StateChunk(name: "vm/irqchip\(chip)", version: kernelStateVersion, data: try vm.irqchip(chip)))
        }
        return chunks
    }

    func check(_ chunks: [String: StateChunk]) throws {
        let sizes =
            [("vm/pit", KVMVirtualMachine.pitSize), ("vm/clock", KVMVirtualMachine.clockSize)]
            + Self.irqchips.map { ($0, KVMVirtualMachine.irqchipSize) }
        for (name, size) in sizes where chunks.data(name).count != size {
            throw MachineError("state chunk \(name): \(chunks.data(name).count) bytes, this host's KVM expects \(size)")
        }
        for (chip, name) in Self.irqchips.enumerated() {
            let id = chunks.data(name).withUnsafeBytes { loadLE($0, 0, as: UInt32.self) }
            guard id == UInt32(chip) else { throw MachineError("state chunk \(name): holds chip \(id), expected chip \(chip)") }
        }
        do { try KernelStateShape.clock(chunks.data("vm/clock")) } catch {
            throw MachineError("state chunk vm/clock: \(error)")
        }
    }

    func restore(_ chunks: [String: StateChunk]) throws {
        try vm.setPITState(chunks.data("vm/pit"))
        try vm.setClock(chunks.data("vm/clock"))
        for name in Self.irqchips { try vm.setIRQChip(chunks.data(name)) }
    }
}
