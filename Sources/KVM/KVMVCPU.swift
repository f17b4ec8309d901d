import CKVM
import Glibc
import SystemPackage

/// The fixed-size per-vCPU state KVM gets and sets as one kernel struct each (docs/kvm-state.md).
public enum VCPUStateItem: String, CaseIterable, Sendable {
    case mpState = "mpstate"
    case regs, sregs, xsave, xcrs, debugregs, lapic, events

    var getRequest: (UInt, String) {
        switch self {
        case .mpState: (CKVM_GET_MP_STATE, "KVM_GET_MP_STATE")
        case .regs: (CKVM_GET_REGS, "KVM_GET_REGS")
        case .sregs: (CKVM_GET_SREGS, "KVM_GET_SREGS")
        case .xsave: (CKVM_GET_XSAVE2, "KVM_GET_XSAVE2")
        case .xcrs: (CKVM_GET_XCRS, "KVM_GET_XCRS")
        case .debugregs: (CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS")
        case .lapic: (CKVM_GET_LAPIC, "KVM_GET_LAPIC")
        case .events: (CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS")
        }
    }

    var setRequest: (UInt, String) {
        switch self {
        case .mpState: (CKVM_SET_MP_STATE, "KVM_SET_MP_STATE")
        case .regs: (CKVM_SET_REGS, "KVM_SET_REGS")
        case .sregs: (CKVM_SET_SREGS, "KVM_SET_SREGS")
        case .xsave: (CKVM_SET_XSAVE, "KVM_SET_XSAVE")
        case .xcrs: (CKVM_SET_XCRS, "KVM_SET_XCRS")
        case .debugregs: (CKVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS")
        case .lapic: (CKVM_SET_LAPIC, "KVM_SET_LAPIC")
        case .events: (CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS")
        }
    }
}

/// Why KVM_RUN returned.
public enum VCPUExit: Sendable, Equatable {
    /// Port I/O: `count` items of `size` bytes at `dataOffset` in the kvm_run mapping.
    case io(port: UInt16, isWrite: Bool, size: Int, count: Int, dataOffset: Int)
    /// Memory-mapped I/O outside guest RAM: `length` bytes at `address`, in `mmioData`.
    case mmio(address: UInt64, isWrite: Bool, length: Int)
    case halt
    /// Triple fault: the guest crashed.
    case shutdown
    case failEntry(reason: UInt64)
    case internalError(suberror: UInt32)
    /// The signal or immediate_exit interrupted KVM_RUN (EINTR): nothing to emulate.
    case interrupted
    case other(reason: UInt32)
}

/// One vCPU: its fd and its mapped `struct kvm_run`.
///
/// `@unchecked Sendable`: the kvm_run page is written by KVM and by the one thread that runs the vCPU;
/// other threads only store `immediate_exit`, atomically.
public final class KVMVCPU: @unchecked Sendable {
    public let id: UInt32
    let descriptor: OwnedDescriptor
    let run: UnsafeMutablePointer<kvm_run>
    let mmapSize: Int
    public let xsaveSize: Int

    init(id: UInt32, descriptor: OwnedDescriptor, mmapSize: Int, xsaveSize: Int) throws(KVMError) {
        self.id = id
        self.descriptor = descriptor
        self.mmapSize = mmapSize
        self.xsaveSize = xsaveSize
        guard let mapping = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.value, 0),
            mapping != MAP_FAILED
        else {
            throw KVMError(call: "mmap(kvm_run)", errno: Errno(rawValue: Glibc.errno))
        }
        run = mapping.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit { munmap(UnsafeMutableRawPointer(run), mmapSize) }

    public func close() { descriptor.close() }

    /// Bytes of each fixed-size state item on this host.
    public func size(of item: VCPUStateItem) -> Int {
        switch item {
        case .mpState: MemoryLayout<kvm_mp_state>.size
        case .regs: MemoryLayout<kvm_regs>.size
        case .sregs: MemoryLayout<kvm_sregs>.size
        case .xsave: xsaveSize
        case .xcrs: MemoryLayout<kvm_xcrs>.size
        case .debugregs: MemoryLayout<kvm_debugregs>.size
        case .lapic: MemoryLayout<kvm_lapic_state>.size
        case .events: MemoryLayout<kvm_vcpu_events>.size
        }
    }

    /// KVM_RUN once. EINTR (a kick, or immediate_exit) is returned as `.interrupted`, not thrown.
    public func runOnce() throws(KVMError) -> VCPUExit {
        let result = ckvm_ioctl_value(descriptor.value, CKVM_RUN, 0)
        if result < 0 {
            let error = Errno(rawValue: Glibc.errno)
            if error == .interrupted || error == .resourceTemporarilyUnavailable { return .interrupted }
            throw KVMError(call: "KVM_RUN", errno: error)
        }
        let reason = ckvm_run_exit_reason(run)
        switch Int32(reason) {
        case KVM_EXIT_IO:
            return .io(
                port: ckvm_run_io_port(run), isWrite: ckvm_run_io_direction(run) == UInt8(KVM_EXIT_IO_OUT),
                size: Int(ckvm_run_io_size(run)), count: Int(ckvm_run_io_count(run)),
                dataOffset: Int(ckvm_run_io_data_offset(run)))
        case KVM_EXIT_MMIO:
            return .mmio(
                address: ckvm_run_mmio_address(run), isWrite: ckvm_run_mmio_is_write(run) != 0,
                length: Int(min(ckvm_run_mmio_length(run), 8)))
        case KVM_EXIT_HLT: return .halt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_FAIL_ENTRY: return .failEntry(reason: ckvm_run_fail_entry_reason(run))
        case KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: ckvm_run_internal_suberror(run))
        case KVM_EXIT_INTR: return .interrupted
        default: return .other(reason: reason)
        }
    }

    /// Makes the next (or the current) KVM_RUN return EINTR at once; safe from any thread.
    public func setImmediateExit(_ on: Bool) { ckvm_run_set_immediate_exit(run, on ? 1 : 0) }

    /// The PIO data area of the last I/O exit (inside the kvm_run mapping).
    public func ioData(offset: Int, count: Int) -> UnsafeMutableRawBufferPointer? {
        guard offset >= 0, count >= 0, offset + count <= mmapSize else { return nil }
        return UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(run) + offset, count: count)
    }

    /// The data bytes of the last MMIO exit: what the guest wrote, or where a read's answer goes before the next run.
    public func mmioData(length: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: ckvm_run_mmio_data(run), count: min(max(length, 0), 8))
    }

    public func regs() throws(KVMError) -> kvm_regs { try get(CKVM_GET_REGS, "KVM_GET_REGS") }
    public func setRegs(_ value: kvm_regs) throws(KVMError) { try set(CKVM_SET_REGS, "KVM_SET_REGS", value) }
    public func sregs() throws(KVMError) -> kvm_sregs { try get(CKVM_GET_SREGS, "KVM_GET_SREGS") }
    public func setSregs(_ value: kvm_sregs) throws(KVMError) { try set(CKVM_SET_SREGS, "KVM_SET_SREGS", value) }

    /// One state item as the kernel struct's bytes.
    public func state(_ item: VCPUStateItem) throws(KVMError) -> [UInt8] {
        let (request, name) =
            item == .xsave && xsaveSize <= MemoryLayout<kvm_xsave>.size
            ? (CKVM_GET_XSAVE, "KVM_GET_XSAVE") : item.getRequest
        let fd = descriptor.value
        var bytes = [UInt8](repeating: 0, count: size(of: item))
        try kvmCall(name) { bytes.withUnsafeMutableBytes { ckvm_ioctl(fd, request, $0.baseAddress) } }
        return bytes
    }

    /// Sets one state item from kernel struct bytes; the length must match this host's struct.
    public func setState(_ item: VCPUStateItem, _ bytes: [UInt8]) throws(KVMError) {
        let (request, name) = item.setRequest
        guard bytes.count == size(of: item) else {
            throw KVMError(call: name, detail: "state is \(bytes.count) bytes, this KVM expects \(size(of: item))")
        }
        let fd = descriptor.value
        var copy = bytes
        try kvmCall(name) { copy.withUnsafeMutableBytes { ckvm_ioctl(fd, request, $0.baseAddress) } }
    }

    /// KVM_GET_CPUID2: the CPUID this vCPU was given.
    public func cpuid() throws(KVMError) -> [kvm_cpuid_entry2] {
        let fd = descriptor.value
        return try CPUIDList.fetch(name: "KVM_GET_CPUID2") { ckvm_ioctl(fd, CKVM_GET_CPUID2, $0) }
    }

    /// KVM_SET_CPUID2; only before the vCPU first runs (Linux >= 5.16).
    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        let fd = descriptor.value
        var bytes = CPUIDList.encode(entries)
        try kvmCall("KVM_SET_CPUID2") { bytes.withUnsafeMutableBytes { ckvm_ioctl(fd, CKVM_SET_CPUID2, $0.baseAddress) } }
    }

    /// KVM_GET_CPUID2 as `struct kvm_cpuid2` bytes.
    public func cpuidState() throws(KVMError) -> [UInt8] { CPUIDList.encode(try cpuid()) }

    /// KVM_SET_CPUID2 from `struct kvm_cpuid2` bytes.
    public func setCPUIDState(_ bytes: [UInt8]) throws(KVMError) {
        guard let entries = CPUIDList.decode(bytes) else {
            throw KVMError(call: "KVM_SET_CPUID2", detail: "malformed kvm_cpuid2 (\(bytes.count) bytes)")
        }
        try setCPUID(entries)
    }

    /// KVM_GET_MSRS for `indices`; a short count names the MSR KVM refused.
    public func msrs(_ indices: [UInt32]) throws(KVMError) -> [MSREntry] {
        var buffer = MSRList.encode(indices.map { MSREntry(index: $0, value: 0) })
        let fd = descriptor.value
        let done = try kvmCall("KVM_GET_MSRS") { buffer.withUnsafeMutableBytes { ckvm_ioctl(fd, CKVM_GET_MSRS, $0.baseAddress) } }
        guard Int(done) == indices.count else {
            throw KVMError(call: "KVM_GET_MSRS", detail: "MSR \(hex(indices[Int(done)])) refused")
        }
        return MSRList.decode(buffer) ?? []
    }

    /// KVM_SET_MSRS; a short count names the MSR KVM refused.
    public func setMSRs(_ entries: [MSREntry]) throws(KVMError) {
        guard !entries.isEmpty else { return }
        var buffer = MSRList.encode(entries)
        let fd = descriptor.value
        let done = try kvmCall("KVM_SET_MSRS") { buffer.withUnsafeMutableBytes { ckvm_ioctl(fd, CKVM_SET_MSRS, $0.baseAddress) } }
        guard Int(done) == entries.count else {
            throw KVMError(call: "KVM_SET_MSRS", detail: "MSR \(hex(entries[Int(done)].index)) refused")
        }
    }

    /// Which of `candidates` KVM_GET_MSRS accepts on this vCPU (drops the ones it refuses, one by one).
    public func readableMSRs(_ candidates: [UInt32]) -> [UInt32] {
        var list = candidates
        let fd = descriptor.value
        while !list.isEmpty {
            var buffer = MSRList.encode(list.map { MSREntry(index: $0, value: 0) })
            let done = buffer.withUnsafeMutableBytes { ckvm_ioctl(fd, CKVM_GET_MSRS, $0.baseAddress) }
            if done < 0 { return [] }
            if Int(done) == list.count { return list }
            list.remove(at: Int(done))
        }
        return list
    }

    /// KVM_GET_TSC_KHZ: the guest TSC frequency.
    public func tscKHz() throws(KVMError) -> UInt32 {
        let fd = descriptor.value
        return UInt32(try kvmCall("KVM_GET_TSC_KHZ") { ckvm_ioctl_value(fd, CKVM_GET_TSC_KHZ, 0) })
    }

    public func setTSCKHz(_ khz: UInt32) throws(KVMError) {
        let fd = descriptor.value
        try kvmCall("KVM_SET_TSC_KHZ") { ckvm_ioctl_value(fd, CKVM_SET_TSC_KHZ, UInt(khz)) }
    }

    /// KVM_KVMCLOCK_CTRL: tells a kvmclock guest it was paused (EINVAL when it has no kvmclock).
    public func kvmclockCtrl() throws(KVMError) {
        let fd = descriptor.value
        try kvmCall("KVM_KVMCLOCK_CTRL") { ckvm_ioctl_value(fd, CKVM_KVMCLOCK_CTRL, 0) }
    }

    private func get<T: BitwiseCopyable>(_ request: UInt, _ name: String) throws(KVMError) -> T {
        let fd = descriptor.value
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
        try kvmCall(name) { ckvm_ioctl(fd, request, buffer) }
        return buffer.load(as: T.self)
    }

    private func set<T: BitwiseCopyable>(_ request: UInt, _ name: String, _ value: T) throws(KVMError) {
        let fd = descriptor.value
        var copy = value
        try kvmCall(name) { withUnsafeMutablePointer(to: &copy) { ckvm_ioctl(fd, request, $0) } }
    }
}

/// One MSR and its value.
public struct MSREntry: Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }
}

/// `struct kvm_msrs` (nmsrs, pad, entries of {index, reserved, data}) as bytes.
public enum MSRList {
    static let headerSize = 8
    static let entrySize = 16

    public static func encode(_ entries: [MSREntry]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: headerSize + entries.count * entrySize)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(entries.count), as: UInt32.self)
            for (offset, entry) in entries.enumerated() {
                raw.storeBytes(of: entry.index, toByteOffset: headerSize + offset * entrySize, as: UInt32.self)
                raw.storeBytes(of: entry.value, toByteOffset: headerSize + offset * entrySize + 8, as: UInt64.self)
            }
        }
        return bytes
    }

    /// nil when the length does not match the count in the header.
    public static func decode(_ bytes: [UInt8]) -> [MSREntry]? {
        guard bytes.count >= headerSize else { return nil }
        return bytes.withUnsafeBytes { raw -> [MSREntry]? in
            let count = Int(raw.loadUnaligned(as: UInt32.self))
            guard count <= 65536, bytes.count == headerSize + count * entrySize else { return nil }
            return (0..<count).map {
                MSREntry(
                    index: raw.loadUnaligned(fromByteOffset: headerSize + $0 * entrySize, as: UInt32.self),
                    value: raw.loadUnaligned(fromByteOffset: headerSize + $0 * entrySize + 8, as: UInt64.self))
            }
        }
    }

    /// The MSRs a migration carries (docs/kvm-state.md); never MCG_CTL.
    public static func isMigrated(_ index: UInt32) -> Bool {
        switch index {
        // TSC, APIC_BASE, TSC_ADJUST, SPEC_CTRL, SYSENTER_*, MISC_ENABLE
        case 0x10, 0x1b, 0x3b, 0x48, 0x174, 0x175, 0x176, 0x1a0: true
        case 0x200...0x2ff, 0x6e0, 0x800...0xbff: true  // MTRRs and PAT, TSC_DEADLINE, x2APIC
        case 0x4b56_4d00...0x4b56_4d06: true  // KVM paravirtual MSRs
        // EFER, STAR, LSTAR, CSTAR, SFMASK, FS/GS/KERNEL_GS_BASE, TSC_AUX
        case 0xc000_0080...0xc000_0084, 0xc000_0100...0xc000_0103: true
        default: false
        }
    }

    public static let tscDeadline: UInt32 = 0x6e0
}

func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
