import CKVM
import KVM
import MachineDescription

/// Sets a new machine up to run the bundled guest: every vCPU runnable in ring 3 with its slice of the working set,
/// and the boot area (GDT, page tables, code) in RAM.
enum BundledGuestBoot {
    /// Writes the vCPUs' start state and the boot area; when the options defer the boot area (RAM the user gave, in a
    /// machine that starts paused), the returned closure writes it at the first resume.
    static func prepare(
        vcpus: [KVMVCPU], ram: GuestRAM, config: MachineConfig, settings: GuestStatusDevice.Settings,
        options: MachineOptions
    ) throws -> (@Sendable () throws -> Void)? {
        let top = config.segments[config.segments.count - 1]
        let workingSetBase = top.guestPhysicalBase + top.size - settings.workingSet
        let sliceSize = (settings.workingSet / UInt64(vcpus.count)) & ~4095
        for (index, vcpu) in vcpus.enumerated() {
            // With the in-kernel LAPIC, vCPUs other than 0 would wait for INIT/SIPI; the guest has no boot CPU code.
            try vcpu.setState(.mpState, withUnsafeBytes(of: UInt32(KVM_MP_STATE_RUNNABLE)) { Array($0) })
            try vcpu.setSregs(GuestLayout.startSregs(from: try vcpu.sregs()))
            let seed = (UInt64(index) + 1) &* 0x9e37_79b9_7f4a_7c15 ^ 0x5dee_ce66_d
            try vcpu.setRegs(
                GuestLayout.startRegs(
                    index: UInt32(index),
                    slice: (workingSetBase + UInt64(index) * sliceSize, sliceSize),
                    seed: seed, writesPerTick: settings.writesPerTick))
        }
        let topOfRAM = config.segments.map { $0.guestPhysicalBase + $0.size }.max() ?? 0
        if let image = options.memoryImage { try ram.load(imagePath: image) }
        let writeBootArea: @Sendable () throws -> Void = {
            try GuestLayout.writeBootArea(into: ram, topOfRAM: topOfRAM)
            // A resume while the machine is being sent: these stores bypass KVM's dirty log.
            ram.noteWritten(guestPhysical: 0, length: Int(GuestLayout.reservedEnd))
        }
        if options.defersBootArea { return writeBootArea }
        try writeBootArea()
        return nil
    }

    /// Refuses a machine the bundled guest cannot run in, before anything is created.
    static func checkFits(vcpus: UInt32, memorySize: UInt64, workingSet: UInt64) throws {
        guard (1...GuestLayout.maxVCPUs).contains(vcpus) else {
            throw MachineError("--cpus \(vcpus): between 1 and \(GuestLayout.maxVCPUs) vCPUs are supported")
        }
        guard memorySize % 4096 == 0 else { throw MachineError("--memory \(memorySize): not a multiple of 4 KiB") }
        guard workingSet >= UInt64(vcpus) * 4096, workingSet % 4096 == 0 else {
            throw MachineError("--guest-working-set \(workingSet): needs a multiple of 4 KiB, at least one page per vCPU")
        }
        guard memorySize >= GuestLayout.reservedEnd + workingSet else {
            throw MachineError(
                "--memory \(memorySize): too small for the guest (\(GuestLayout.reservedEnd >> 20) MiB plus the working set of \(workingSet) bytes)"
            )
        }
        let segments = MemorySegment.standardLayout(memorySize: memorySize)
        let top = segments[segments.count - 1]
        let usable = top.size - (top.guestPhysicalBase == 0 ? GuestLayout.reservedEnd : 0)
        guard workingSet <= usable else {
            throw MachineError(
                "--guest-working-set \(workingSet): does not fit in the top memory segment (\(top.name), \(usable) bytes usable)")
        }
    }
}
