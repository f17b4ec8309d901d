import CKVM
import Glibc
import KVM
import MachineDescription
import SystemPackage
import SystemSupport

/// What `vmrun --kernel` boots: an uncompressed `vmlinux` with a PVH entry, an optional initramfs, a command line.
public struct LinuxBootOptions: Sendable, Equatable {
    public var kernel: String
    public var initrd: String?
    /// Replaces `LinuxBoot.defaultCommandLine`; the virtio-mmio devices are always appended.
    public var commandLine: String?

    public init(kernel: String, initrd: String? = nil, commandLine: String? = nil) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
    }
}

/// Direct boot of Linux through its PVH entry, with no firmware (Linux's arch/x86/platform/pvh): the kernel's
/// segments at their physical addresses, a version-1 `hvm_start_info` with a memory map, the initramfs as its
/// first module, the command line, an MP table for the CPUs and the IOAPIC, and vCPU 0 in 32-bit protected mode
/// at the entry with EBX pointing at the start info. The other vCPUs wait for INIT/SIPI in the in-kernel LAPIC.
enum LinuxBoot {
    static let gdtAddress: UInt64 = 0x500
    static let startInfoAddress: UInt64 = 0x6000
    static let commandLineAddress: UInt64 = 0x20000
    /// The MP table sits in the last KiB below 640 KiB, where Linux looks for it; the memory map reserves it.
    static let mpTableAddress: UInt64 = 0x9fc00
    static let maximumCommandLine = 2048
    /// XEN_HVM_START_MAGIC_VALUE.
    static let startInfoMagic: UInt32 = 0x336e_c578

    /// The command line when `--cmdline` is not given: the serial console, /init from the initramfs, reboot on
    /// panic; on a host that emulates guest ring 0 (no VT-x or AMD-V), also what such a kernel needs there. Boot is
    /// slow there: a long initcall can outlast the RCU stall timeout, and the stall report's NMI backtrace can hang a
    /// guest with 2 vCPUs, so stall warnings are off until /init starts (and on afterwards, where they matter).
    static func defaultCommandLine(emulatedRingZero: Bool) -> String {
        var line = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 rdinit=/init"
        if emulatedRingZero {
            line +=
                " nokaslr lpj=1000000 tsc=reliable no_timer_check mitigations=off rodata=off"
                + " clearcpuid=xsave,cx16,popcnt,smap,erms,fsrm"
        }
        return line
    }

    /// Loads everything into `ram` and puts vCPU 0 at the kernel's PVH entry.
    static func prepare(vcpus: [KVMVCPU], ram: GuestRAM, config: MachineConfig, options: LinuxBootOptions) throws {
        let kernel = try ELFKernel(path: options.kernel)
        try kernel.load(into: ram)
        let low = config.segments[0].size
        var modules: [(address: UInt64, size: UInt64)] = []
        if let initrd = options.initrd {
            modules.append(try loadInitrd(initrd, ram: ram, below: min(low, 2 << 30), above: kernel.end))
        }
        let commandLine =
            (options.commandLine ?? defaultCommandLine(emulatedRingZero: HostProbe.emulatesRingZero))
            + (config.disks.isEmpty ? "" : " " + DiskPlacement.kernelCommandLine(diskCount: config.disks.count))
        guard commandLine.utf8.count < maximumCommandLine else {
            throw MachineError("--cmdline: \(commandLine.utf8.count) bytes; Linux takes at most \(maximumCommandLine - 1)")
        }
        try write(Array(commandLine.utf8) + [0], at: commandLineAddress, ram)
        let leaf1 = config.cpuid.first { $0.function == 1 && $0.index == 0 }
        try write(
            MPTable.build(
                vcpus: vcpus.count, address: mpTableAddress, cpuSignature: leaf1?.eax ?? 0x600,
                cpuFeatures: leaf1?.edx ?? 0x201), at: mpTableAddress, ram)
        try write(startInfo(config: config, modules: modules), at: startInfoAddress, ram)
        try write(gdt.flatMap { descriptor in withUnsafeBytes(of: descriptor.littleEndian) { Array($0) } }, at: gdtAddress, ram)
        try vcpus[0].setSregs(entrySregs(from: try vcpus[0].sregs()))
        var regs = kvm_regs()
        regs.rip = kernel.entry
        regs.rbx = startInfoAddress
        regs.rflags = 0x2
        try vcpus[0].setRegs(regs)
    }

    /// The initramfs, page-aligned at the top of RAM below `below`, above the kernel.
    private static func loadInitrd(
        _ path: String, ram: GuestRAM, below top: UInt64, above kernelEnd: UInt64
    ) throws -> (UInt64, UInt64) {
        let file: FileDescriptor
        do { file = try FileDescriptor.open(path, .readOnly) } catch { throw MachineError("--initrd \(path): \(error)") }
        defer { try? file.close() }
        let size = try file.size(what: path)
        guard size > 0, size < top, (top - size) & ~UInt64(4095) >= (kernelEnd + 4095) & ~4095 else {
            throw MachineError(
                "--initrd \(path): \(size) bytes do not fit between the kernel and the top of low RAM; give the machine more --memory"
            )
        }
        let address = (top - size) & ~UInt64(4095)
        let target = ram.pointer(guestPhysical: address, length: Int(size))!
        try file.readFully(into: UnsafeMutableRawBufferPointer(start: target, count: Int(size)), at: 0, what: path)
        return (address, size)
    }

    /// `struct hvm_start_info` version 1 (56 bytes), then its memory map, then its module list.
    static func startInfo(config: MachineConfig, modules: [(address: UInt64, size: UInt64)]) -> [UInt8] {
        var map: [(UInt64, UInt64, UInt32)] = []
        for segment in config.segments {
            if segment.guestPhysicalBase == 0 {
                map.append((0, mpTableAddress, 1))
                map.append((mpTableAddress, 0xa0000 - mpTableAddress, 2))
                if segment.size > 0x10_0000 { map.append((0x10_0000, segment.size - 0x10_0000, 1)) }
            } else {
                map.append((segment.guestPhysicalBase, segment.size, 1))
            }
        }
        let mapAddress = startInfoAddress + 56
        let modulesAddress = mapAddress + UInt64(map.count) * 24
        var out = ByteWriter(capacity: 56 + map.count * 24 + modules.count * 32)
        out.u32(startInfoMagic)
        out.u32(1)  // version
        out.u32(0)  // flags
        out.u32(UInt32(modules.count))
        out.u64(modules.isEmpty ? 0 : modulesAddress)
        out.u64(commandLineAddress)
        out.u64(0)  // no ACPI RSDP
        out.u64(mapAddress)
        out.u32(UInt32(map.count))
        out.u32(0)
        for (address, size, type) in map {
            out.u64(address)
            out.u64(size)
            out.u32(type)
            out.u32(0)
        }
        for module in modules {
            out.u64(module.address)
            out.u64(module.size)
            out.u64(0)
            out.u64(0)
        }
        return out.bytes
    }

    /// Null, null, flat 32-bit code (0x10), flat data (0x18), a 32-bit TSS (0x20): what the entry state's segment
    /// caches say, kept in memory for consistency; the kernel loads its own GDT at once.
    static let gdt: [UInt64] = [0, 0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x0000_8b00_0000_0067]

    /// 32-bit protected mode, paging off, flat segments (the ABI of pvh_start_xen).
    private static func entrySregs(from current: kvm_sregs) -> kvm_sregs {
        var sregs = current
        func segment(_ selector: UInt16, type: UInt8) -> kvm_segment {
            var segment = kvm_segment()
            segment.limit = 0xffff_ffff
            segment.selector = selector
            segment.type = type
            segment.present = 1
            segment.db = 1
            segment.s = 1
            segment.g = 1
            return segment
        }
        sregs.cs = segment(0x10, type: 0xb)
        let data = segment(0x18, type: 0x3)
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data)
        var task = kvm_segment()
        task.limit = 0x67
        task.selector = 0x20
        task.type = 0xb
        task.present = 1
        sregs.tr = task
        var ldt = kvm_segment()
        ldt.unusable = 1
        sregs.ldt = ldt
        sregs.gdt.base = gdtAddress
        sregs.gdt.limit = UInt16(gdt.count * 8 - 1)
        sregs.idt.base = 0
        sregs.idt.limit = 0
        sregs.cr0 = 0x1
        sregs.cr3 = 0
        sregs.cr4 = 0
        sregs.efer = 0
        return sregs
    }

    private static func write(_ bytes: [UInt8], at address: UInt64, _ ram: GuestRAM) throws {
        guard let target = ram.pointer(guestPhysical: address, length: bytes.count) else {
            throw MachineError("guest RAM at 0x\(String(address, radix: 16)) is missing; give the machine more --memory")
        }
        bytes.withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
}
