import CKVM
import KVM

/// Where the bundled guest's pieces live in guest-physical memory, and how a vCPU starts in ring 3.
/// The addresses are shared with guest/guest.asm; change both together.
enum GuestLayout {
    static let gdtBase: UInt64 = 0x1000
    /// Per-vCPU status blocks: tick, checks passed, checks failed (u64 each), 64 bytes apart.
    static let statusBlocks: UInt64 = 0x2000
    static let statusBlockSize: UInt64 = 64
    /// The guest's UART lock and vCPU 0's input line buffer.
    static let sharedData: UInt64 = 0x3000
    /// A 64-bit TSS whose I/O bitmap allows every port: kvm_pvm ignores RFLAGS.IOPL for ring 3 and checks the
    /// bitmap instead (a TSS without one makes every IN/OUT fault). On VT-x/AMD-V IOPL 3 alone would do.
    static let tss: UInt64 = 0x4000
    static let tssIOBitmapOffset: UInt64 = 0x68
    /// The TSS limit covers the 8 KiB bitmap and the terminating 0xff byte.
    static let tssLimit: UInt64 = tssIOBitmapOffset + 0x2000
    static let codeBase: UInt64 = 0x10000
    /// vCPU i's stack grows down from stackBase + (i + 1) pages.
    static let stackBase: UInt64 = 0x20000
    static let pml4: UInt64 = 0x100000
    static let pdpt: UInt64 = 0x101000
    static let pageDirectories: UInt64 = 0x102000
    /// Everything above is free for the working set; guest RAM must hold at least this much below it.
    static let reservedEnd: UInt64 = 0x400000
    static let maxVCPUs: UInt32 = 64
    /// One PDPT maps 512 GiB with 2 MiB pages; the page directories fit below `reservedEnd`.
    static let maxAddressableBytes: UInt64 = 512 << 30
    /// KVM_SET_TSS_ADDR: three pages in the 3-4 GiB hole, where QEMU puts them.
    static let tssAddress: UInt64 = 0xfffb_d000

    /// The disk worker's pages (vCPU 0): queue, request, data buffer, and the table of the sequence number each
    /// block was last written with. Above the vCPU stacks, below the page tables.
    static let diskArea: UInt64 = 0x80000
    /// The status block's disk state word (vCPU 0's block + 48) once the guest found and set up its disk.
    static let diskReady: UInt64 = 1

    static let statusPort: UInt16 = 0x500
    static let checkPort: UInt16 = 0x501

    static let userCodeSelector: UInt16 = 0x1b
    static let userDataSelector: UInt16 = 0x23
    static let taskSelector: UInt16 = 0x28
    /// RFLAGS: IOPL 3 (port I/O from ring 3 exits to the VMM), interrupts off, reserved bit 1.
    static let rflags: UInt64 = 0x3002

    /// GDT: null, kernel code/data (unused), user code 64-bit (dpl 3), user data (dpl 3), a 64-bit TSS.
    static let gdt: [UInt64] = [
        0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff,
        0x00af_fa00_0000_ffff, 0x00cf_f200_0000_ffff,
        0x0000_8b00_0000_0000 | tss << 16 | tssLimit, 0,
    ]

    /// Writes the GDT, identity page tables (2 MiB pages, user-accessible) up to `topOfRAM`, and the code.
    static func writeBootArea(into memory: GuestRAM, topOfRAM: UInt64) throws {
        guard let low = memory.pointer(guestPhysical: 0, length: Int(reservedEnd)) else {
            throw MachineError("guest RAM below \(reservedEnd >> 20) MiB is missing")
        }
        // Clean slate for the boot area (an image may have put bytes here); pages stay untouched otherwise.
        let tssEnd = tss + tssLimit + 1
        (low + Int(gdtBase)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(tssEnd - gdtBase))
        low.storeBytes(of: UInt16(tssIOBitmapOffset), toByteOffset: Int(tss) + 0x66, as: UInt16.self)
        low.storeBytes(of: UInt8(0xff), toByteOffset: Int(tss + tssLimit), as: UInt8.self)
        for (index, descriptor) in gdt.enumerated() {
            low.storeBytes(of: descriptor.littleEndian, toByteOffset: Int(gdtBase) + index * 8, as: UInt64.self)
        }
        // At least the first 4 GiB: the 3-4 GiB hole holds the devices' MMIO windows the guest reaches.
        let gigabytes = max(Int((topOfRAM + (1 << 30) - 1) >> 30), 4)
        let present: UInt64 = 0x7  // present, writable, user
        low.storeBytes(of: pdpt | present, toByteOffset: Int(pml4), as: UInt64.self)
        for gigabyte in 0..<gigabytes {
            let directory = pageDirectories + UInt64(gigabyte) * 0x1000
            low.storeBytes(of: directory | present, toByteOffset: Int(pdpt) + gigabyte * 8, as: UInt64.self)
            for entry in 0..<512 {
                let address = UInt64(gigabyte) << 30 | UInt64(entry) << 21
                low.storeBytes(of: address | present | 0x80, toByteOffset: Int(directory) + entry * 8, as: UInt64.self)
            }
        }
        BundledGuest.image.withUnsafeBytes { (low + Int(codeBase)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// Long mode, paging, ring 3: the special registers every vCPU of the bundled guest starts with.
    static func startSregs(from current: kvm_sregs) -> kvm_sregs {
        var sregs = current
        func segment(_ selector: UInt16, type: UInt8, long: Bool) -> kvm_segment {
            var segment = kvm_segment()
            segment.base = 0
            segment.limit = 0xffff_ffff
            segment.selector = selector
            segment.type = type
            segment.present = 1
            segment.dpl = 3
            segment.db = long ? 0 : 1
            segment.s = 1
            segment.l = long ? 1 : 0
            segment.g = 1
            return segment
        }
        sregs.cs = segment(userCodeSelector, type: 11, long: true)
        let data = segment(userDataSelector, type: 3, long: false)
        sregs.ds = data
        sregs.es = data
        sregs.fs = data
        sregs.gs = data
        sregs.ss = data
        var task = kvm_segment()
        task.base = tss
        task.limit = UInt32(tssLimit)
        task.selector = taskSelector
        task.type = 11
        task.present = 1
        sregs.tr = task
        var ldt = kvm_segment()
        ldt.unusable = 1
        sregs.ldt = ldt
        sregs.gdt.base = gdtBase
        sregs.gdt.limit = UInt16(gdt.count * 8 - 1)
        sregs.idt.base = 0
        sregs.idt.limit = 0
        sregs.cr0 = 0x8005_0033  // PG, AM, WP, NE, ET, MP, PE
        sregs.cr3 = pml4
        sregs.cr4 = 0x620  // OSXMMEXCPT, OSFXSR, PAE
        sregs.efer = 0x500  // LMA, LME
        return sregs
    }

    /// The general registers of vCPU `index`: entry point, stack, and the guest's parameters.
    static func startRegs(index: UInt32, slice: (base: UInt64, size: UInt64), seed: UInt64, writesPerTick: UInt64) -> kvm_regs {
        var regs = kvm_regs()
        regs.rip = codeBase
        regs.rsp = stackBase + UInt64(index + 1) * 0x1000
        regs.rflags = rflags
        regs.rdi = UInt64(index)
        regs.rsi = slice.base
        regs.rdx = slice.size
        regs.rcx = seed
        regs.r8 = writesPerTick
        return regs
    }

    /// CPUID for vCPU `index`: the host's supported leaves with this vCPU's APIC id.
    static func cpuid(_ supported: [kvm_cpuid_entry2], index: UInt32) -> [kvm_cpuid_entry2] {
        supported.map { leaf in
            var leaf = leaf
            switch leaf.function {
            case 1: leaf.ebx = (leaf.ebx & 0x00ff_ffff) | (index << 24)
            case 0xb, 0x1f: leaf.edx = index
            default: break
            }
            return leaf
        }
    }
}
