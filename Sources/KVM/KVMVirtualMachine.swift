import CKVM
import Glibc
import SystemPackage

/// One KVM virtual machine (a VM fd). VM ioctls only work from the process that created it.
public final class KVMVirtualMachine: Sendable {
    let descriptor: OwnedDescriptor
    public let system: KVMSystem
    /// Bytes of the XSAVE area (KVM_CAP_XSAVE2 on the VM; 4096 without it).
    public let xsaveSize: Int
    /// Whether KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 was enabled: GET_DIRTY_LOG no longer clears, CLEAR does.
    public let manualDirtyProtect: Bool

    /// KVM_IRQCHIP_PIC_MASTER, PIC_SLAVE, IOAPIC.
    public static let irqchipCount: UInt32 = 3
    /// Bytes of `struct kvm_irqchip` (chip id, padding, 512-byte union).
    public static let irqchipSize = MemoryLayout<kvm_irqchip>.size
    public static let pitSize = MemoryLayout<kvm_pit_state2>.size
    public static let clockSize = MemoryLayout<kvm_clock_data>.size

    init(descriptor: OwnedDescriptor, system: KVMSystem) throws(KVMError) {
        self.descriptor = descriptor
        self.system = system
        let fd = descriptor.value
        let xsave2 = ckvm_ioctl_value(fd, CKVM_CHECK_EXTENSION, UInt(KVM_CAP_XSAVE2))
        xsaveSize = max(Int(xsave2), MemoryLayout<kvm_xsave>.size)
        // Flag 1 only (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE): with INITIALLY_SET the first fetch would call every page dirty.
        let manual = ckvm_ioctl_value(fd, CKVM_CHECK_EXTENSION, UInt(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2))
        if manual & 1 != 0 {
            var cap = kvm_enable_cap()
            cap.cap = UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
            cap.args.0 = 1
            manualDirtyProtect = withUnsafeMutablePointer(to: &cap) { ckvm_ioctl(fd, CKVM_ENABLE_CAP, $0) } == 0
        } else {
            manualDirtyProtect = false
        }
    }

    /// Releases the VM fd (the kernel frees the VM once every vCPU fd is closed too).
    public func close() { descriptor.close() }

    /// KVM_CHECK_EXTENSION on the VM fd.
    public func checkExtension(_ capability: Int32) -> Int32 {
        max(0, ckvm_ioctl_value(descriptor.value, CKVM_CHECK_EXTENSION, UInt(capability)))
    }

    /// KVM_SET_TSS_ADDR: three pages KVM needs below 4 GiB on Intel; must not overlap RAM.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        let fd = descriptor.value
        try kvmCall("KVM_SET_TSS_ADDR") { ckvm_ioctl_value(fd, CKVM_SET_TSS_ADDR, UInt(address)) }
    }

    /// KVM_CREATE_IRQCHIP: in-kernel PIC pair, IOAPIC and local APICs.
    public func createIRQChip() throws(KVMError) {
        let fd = descriptor.value
        try kvmCall("KVM_CREATE_IRQCHIP") { ckvm_ioctl_value(fd, CKVM_CREATE_IRQCHIP, 0) }
    }

    /// KVM_CREATE_PIT2 with KVM_PIT_SPEAKER_DUMMY, so port 0x61 reads work without a speaker.
    public func createPIT2() throws(KVMError) {
        let fd = descriptor.value
        var config = kvm_pit_config()
        config.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try kvmCall("KVM_CREATE_PIT2") { withUnsafeMutablePointer(to: &config) { ckvm_ioctl(fd, CKVM_CREATE_PIT2, $0) } }
    }

    /// KVM_SET_USER_MEMORY_REGION: maps `size` bytes at `userAddress` to guest-physical `guestPhysical`.
    public func setMemoryRegion(
        slot: UInt32, guestPhysical: UInt64, size: UInt64, userAddress: UnsafeMutableRawPointer,
        logDirtyPages: Bool
    ) throws(KVMError) {
        let fd = descriptor.value
        var region = kvm_userspace_memory_region()
        region.slot = slot
        region.flags = logDirtyPages ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0
        region.guest_phys_addr = guestPhysical
        region.memory_size = size
        region.userspace_addr = UInt64(UInt(bitPattern: userAddress))
        try kvmCall("KVM_SET_USER_MEMORY_REGION") {
            withUnsafeMutablePointer(to: &region) { ckvm_ioctl(fd, CKVM_SET_USER_MEMORY_REGION, $0) }
        }
    }

    /// KVM_GET_DIRTY_LOG: one bit per 4 KiB page of a slot. Clears what it returns unless `manualDirtyProtect`.
    public func dirtyLog(slot: UInt32, pageCount: UInt64) throws(KVMError) -> [UInt64] {
        let fd = descriptor.value
        var bitmap = [UInt64](repeating: 0, count: Int((pageCount + 63) / 64))
        try kvmCall("KVM_GET_DIRTY_LOG") {
            bitmap.withUnsafeMutableBufferPointer { ckvm_get_dirty_log(fd, slot, $0.baseAddress) }
        }
        return bitmap
    }

    /// The dirty bitmap of a slot, cleared as it is fetched: with manual protection the pages it names are
    /// re-protected (KVM_CLEAR_DIRTY_LOG) before returning, so a write after this call shows up in the next fetch.
    public func fetchAndClearDirtyLog(slot: UInt32, pageCount: UInt64) throws(KVMError) -> [UInt64] {
        let bitmap = try dirtyLog(slot: slot, pageCount: pageCount)
        if manualDirtyProtect && bitmap.contains(where: { $0 != 0 }) {
            try clearDirtyLog(slot: slot, firstPage: 0, pageCount: pageCount, bitmap: bitmap)
        }
        return bitmap
    }

    /// KVM_CLEAR_DIRTY_LOG: re-protects page `firstPage + i` of the slot for each set bit i of `bitmap` and
    /// clears its dirty bit. `firstPage` must be a multiple of 64, `pageCount` too unless it reaches the slot's end.
    public func clearDirtyLog(slot: UInt32, firstPage: UInt64, pageCount: UInt64, bitmap: [UInt64]) throws(KVMError) {
        guard bitmap.count * 64 >= pageCount, pageCount <= UInt64(UInt32.max) else {
            throw KVMError(
                call: "KVM_CLEAR_DIRTY_LOG",
                detail: "\(pageCount) pages need \((pageCount + 63) / 64) bitmap words, got \(bitmap.count)")
        }
        let fd = descriptor.value
        var words = bitmap
        try kvmCall("KVM_CLEAR_DIRTY_LOG") {
            words.withUnsafeMutableBufferPointer { ckvm_clear_dirty_log(fd, slot, firstPage, UInt32(pageCount), $0.baseAddress) }
        }
    }

    /// KVM_IRQ_LINE: drives an interrupt line of the in-kernel irqchip.
    public func setIRQLine(_ irq: UInt32, high: Bool) throws(KVMError) {
        let fd = descriptor.value
        var level: (UInt32, UInt32) = (irq, high ? 1 : 0)
        try kvmCall("KVM_IRQ_LINE") { withUnsafeMutablePointer(to: &level) { ckvm_ioctl(fd, CKVM_IRQ_LINE, $0) } }
    }

    /// KVM_GET_PIT2 as the kernel's `struct kvm_pit_state2` bytes.
    public func pitState() throws(KVMError) -> [UInt8] {
        try getBytes(CKVM_GET_PIT2, "KVM_GET_PIT2", size: Self.pitSize)
    }

    public func setPITState(_ bytes: [UInt8]) throws(KVMError) {
        try setBytes(CKVM_SET_PIT2, "KVM_SET_PIT2", bytes, size: Self.pitSize)
    }

    /// KVM_GET_CLOCK as `struct kvm_clock_data` bytes.
    public func clock() throws(KVMError) -> [UInt8] {
        try getBytes(CKVM_GET_CLOCK, "KVM_GET_CLOCK", size: Self.clockSize)
    }

    /// KVM_SET_CLOCK; clears KVM_CLOCK_TSC_STABLE, which SET rejects.
    public func setClock(_ bytes: [UInt8]) throws(KVMError) {
        var data = bytes
        if data.count == Self.clockSize {
            data.withUnsafeMutableBytes { raw in
                let flagsOffset = MemoryLayout<kvm_clock_data>.offset(of: \.flags)!
                let flags = raw.loadUnaligned(fromByteOffset: flagsOffset, as: UInt32.self)
                raw.storeBytes(of: flags & ~UInt32(KVM_CLOCK_TSC_STABLE), toByteOffset: flagsOffset, as: UInt32.self)
            }
        }
        try setBytes(CKVM_SET_CLOCK, "KVM_SET_CLOCK", data, size: Self.clockSize)
    }

    /// KVM_GET_IRQCHIP for chip 0 (PIC master), 1 (PIC slave) or 2 (IOAPIC), as `struct kvm_irqchip` bytes.
    public func irqchip(_ chip: UInt32) throws(KVMError) -> [UInt8] {
        let fd = descriptor.value
        var bytes = [UInt8](repeating: 0, count: Self.irqchipSize)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: chip, as: UInt32.self) }
        try kvmCall("KVM_GET_IRQCHIP") { bytes.withUnsafeMutableBytes { ckvm_ioctl(fd, CKVM_GET_IRQCHIP, $0.baseAddress) } }
        return bytes
    }

    /// KVM_SET_IRQCHIP; the chip id is inside the bytes.
    public func setIRQChip(_ bytes: [UInt8]) throws(KVMError) {
        try setBytes(CKVM_SET_IRQCHIP, "KVM_SET_IRQCHIP", bytes, size: Self.irqchipSize)
    }

    /// KVM_CREATE_VCPU with the given id, its kvm_run mapped.
    public func createVCPU(id: UInt32) throws(KVMError) -> KVMVCPU {
        let fd = descriptor.value
        let vcpuFD = try kvmCall("KVM_CREATE_VCPU") { ckvm_ioctl_value(fd, CKVM_CREATE_VCPU, UInt(id)) }
        let owned = OwnedDescriptor(vcpuFD)
        return try KVMVCPU(id: id, descriptor: owned, mmapSize: try system.vcpuMmapSize(), xsaveSize: xsaveSize)
    }

    func getBytes(_ request: UInt, _ name: String, size: Int) throws(KVMError) -> [UInt8] {
        let fd = descriptor.value
        var bytes = [UInt8](repeating: 0, count: size)
        try kvmCall(name) { bytes.withUnsafeMutableBytes { ckvm_ioctl(fd, request, $0.baseAddress) } }
        return bytes
    }

    func setBytes(_ request: UInt, _ name: String, _ bytes: [UInt8], size: Int) throws(KVMError) {
        guard bytes.count == size else {
            throw KVMError(call: name, detail: "state is \(bytes.count) bytes, this KVM expects \(size)")
        }
        let fd = descriptor.value
        var copy = bytes
        try kvmCall(name) { copy.withUnsafeMutableBytes { ckvm_ioctl(fd, request, $0.baseAddress) } }
    }
}
