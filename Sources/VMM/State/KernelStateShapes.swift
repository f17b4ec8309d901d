import CKVM
import KVM
import MachineDescription

/// The shape checks of kernel chunks beyond their size: the fields KVM itself refuses (or would take and make the
/// guest misbehave), checked before anything is restored so that a refusal never comes half-way through a restore.
/// What KVM checks that these do not (CR4 bits against the CPUID, MSR values, the LAPIC's ID in x2APIC mode) is
/// found only by the restore itself; vmrecv(8) lists it.
enum KernelStateShape {
    /// A failed check: what the chunk holds and what was expected.
    struct Misfit: Error, CustomStringConvertible {
        let description: String
        init(_ text: String) { description = text }
    }

    /// KVM_MP_STATE_RUNNABLE to KVM_MP_STATE_SIPI_RECEIVED: the x86 states KVM_SET_MP_STATE takes.
    static func mpState(_ bytes: [UInt8]) throws {
        let state = u32(bytes, MemoryLayout<kvm_mp_state>.offset(of: \.mp_state)!)
        guard state <= 4 else { throw Misfit("mp_state \(state), expected 0 to 4 (RUNNABLE to SIPI_RECEIVED)") }
    }

    /// CR0 and EFER consistent, as KVM's kvm_is_valid_sregs wants them.
    static func sregs(_ bytes: [UInt8]) throws {
        let cr0 = u64(bytes, MemoryLayout<kvm_sregs>.offset(of: \.cr0)!)
        let cr4 = u64(bytes, MemoryLayout<kvm_sregs>.offset(of: \.cr4)!)
        let efer = u64(bytes, MemoryLayout<kvm_sregs>.offset(of: \.efer)!)
        let longCode = bytes[MemoryLayout<kvm_sregs>.offset(of: \.cs.l)!] != 0
        let (pe, cd, nw, pg): (UInt64, UInt64, UInt64, UInt64) = (1, 1 << 30, 1 << 29, 1 << 31)
        let (lme, lma, pae): (UInt64, UInt64, UInt64) = (1 << 8, 1 << 10, 1 << 5)
        guard cr0 >> 32 == 0 else { throw Misfit("CR0 0x\(hex(cr0)) sets reserved high bits") }
        guard cr0 & nw == 0 || cr0 & cd != 0 else { throw Misfit("CR0 0x\(hex(cr0)) sets NW without CD") }
        guard cr0 & pg == 0 || cr0 & pe != 0 else { throw Misfit("CR0 0x\(hex(cr0)) sets PG without PE") }
        if efer & lme != 0 && cr0 & pg != 0 {
            guard cr4 & pae != 0, efer & lma != 0 else {
                throw Misfit("long mode (EFER 0x\(hex(efer))) with paging needs CR4.PAE and EFER.LMA")
            }
        } else if efer & lma != 0 || longCode {
            throw Misfit("EFER 0x\(hex(efer)) or CS.L says long mode is active without EFER.LME and CR0.PG")
        }
    }

    /// The XSAVE header as KVM_SET_XSAVE validates it: standard (not compacted) form, reserved bytes zero, only
    /// state components the guest may enable, MXCSR's reserved bits clear.
    static func xsave(_ bytes: [UInt8], allowed: UInt64) throws {
        let xstateBV = u64(bytes, 512)
        guard u64(bytes, 520) == 0 else { throw Misfit("XSAVE header is compacted (xcomp_bv 0x\(hex(u64(bytes, 520))))") }
        guard bytes[528..<576].allSatisfy({ $0 == 0 }) else { throw Misfit("XSAVE header's reserved bytes are not zero") }
        guard xstateBV & ~allowed == 0 else {
            throw Misfit("XSAVE holds state components 0x\(hex(xstateBV & ~allowed)) the guest cannot enable here")
        }
        guard u32(bytes, 24) >> 16 == 0 else { throw Misfit("MXCSR 0x\(hex(UInt64(u32(bytes, 24)))) sets reserved bits") }
    }

    /// XCR0 as KVM_SET_XCRS takes it: x87 on, AVX only with SSE, nothing the guest cannot enable.
    static func xcrs(_ bytes: [UInt8], allowed: UInt64) throws {
        let count = u32(bytes, MemoryLayout<kvm_xcrs>.offset(of: \.nr_xcrs)!)
        let flags = u32(bytes, MemoryLayout<kvm_xcrs>.offset(of: \.flags)!)
        guard count <= 16, flags == 0 else {
            throw Misfit("\(count) XCRs with flags 0x\(hex(UInt64(flags))), at most 16 and no flags")
        }
        let first = MemoryLayout<kvm_xcrs>.offset(of: \.xcrs)!
        for index in 0..<Int(count) where u32(bytes, first + index * 16) == 0 {
            let xcr0 = u64(bytes, first + index * 16 + 8)
            guard xcr0 & 1 != 0 else { throw Misfit("XCR0 0x\(hex(xcr0)) does not enable x87 state") }
            guard xcr0 & 4 == 0 || xcr0 & 2 != 0 else { throw Misfit("XCR0 0x\(hex(xcr0)) enables AVX without SSE") }
            // Components that come only together: MPX's two, AVX-512's three (on top of AVX), AMX's two.
            for (group, name) in [(UInt64(0x18), "MPX"), (0xe0, "AVX-512"), (0x6_0000, "AMX")]
            where xcr0 & group != 0 && (xcr0 & group != group || (group == 0xe0 && xcr0 & 4 == 0)) {
                throw Misfit("XCR0 0x\(hex(xcr0)) enables part of \(name)")
            }
            guard xcr0 & ~allowed == 0 else {
                throw Misfit("XCR0 0x\(hex(xcr0)) enables state components 0x\(hex(xcr0 & ~allowed)) the guest cannot have here")
            }
        }
    }

    /// No flags, and DR6 and DR7 within 32 bits, as KVM_SET_DEBUGREGS wants.
    static func debugregs(_ bytes: [UInt8]) throws {
        let flags = u64(bytes, MemoryLayout<kvm_debugregs>.offset(of: \.flags)!)
        let dr6 = u64(bytes, MemoryLayout<kvm_debugregs>.offset(of: \.dr6)!)
        let dr7 = u64(bytes, MemoryLayout<kvm_debugregs>.offset(of: \.dr7)!)
        guard flags == 0 else { throw Misfit("flags 0x\(hex(flags)), expected 0") }
        guard dr6 >> 32 == 0, dr7 >> 32 == 0 else { throw Misfit("DR6 0x\(hex(dr6)) or DR7 0x\(hex(dr7)) beyond 32 bits") }
    }

    /// Only the flags this vmrun's KVM setup takes (NMI pending, SIPI vector, shadow, SMM; no exception payloads or
    /// triple-fault events, which it never enables), and an exception vector KVM would inject.
    static func events(_ bytes: [UInt8]) throws {
        let flags = u32(bytes, MemoryLayout<kvm_vcpu_events>.offset(of: \.flags)!)
        guard flags & ~0xf == 0 else { throw Misfit("flags 0x\(hex(UInt64(flags))), expected only bits 0x0f") }
        let exception = MemoryLayout<kvm_vcpu_events>.offset(of: \.exception)!
        // Without the payload flag KVM drops a pending exception, so only an injected one must have a valid vector.
        let (injected, vector) = (bytes[exception], bytes[exception + 1])
        if injected != 0, vector > 31 || vector == 2 {
            throw Misfit("exception vector \(vector) cannot be injected (0 to 31, not NMI)")
        }
    }

    /// A clock KVM_SET_CLOCK takes: only the flags it knows.
    static func clock(_ bytes: [UInt8]) throws {
        let flags = u32(bytes, MemoryLayout<kvm_clock_data>.offset(of: \.flags)!)
        let known = UInt32(KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC)
        guard flags & ~known == 0 else {
            throw Misfit("flags 0x\(hex(UInt64(flags))), expected only bits 0x\(hex(UInt64(known)))")
        }
    }

    /// The XSAVE state components a guest given `cpuid` may enable on a host that supports `hostXCR0`.
    static func allowedXCR0(guest cpuid: [kvm_cpuid_entry2], hostXCR0: UInt64) -> UInt64 {
        guard let leaf = cpuid.first(where: { $0.function == 0xd && $0.index == 0 }) else { return 3 & hostXCR0 }
        return (UInt64(leaf.edx) << 32 | UInt64(leaf.eax)) & hostXCR0
    }

    private static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    private static func u64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
    }

    private static func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}
