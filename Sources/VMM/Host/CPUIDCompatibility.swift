import CKVM
import MachineDescription

/// Whether this host's KVM can give a received guest every CPU feature it was running with.
enum CPUIDCompatibility {
    /// Feature registers compared bit by bit: (leaf, subleaf, register name, bits KVM changes at run time).
    static let featureRegisters: [(UInt32, UInt32, String, UInt32)] = [
        (1, 0, "ecx", 1 << 27),  // OSXSAVE mirrors CR4.OSXSAVE
        (1, 0, "edx", 0),
        (7, 0, "ebx", 0), (7, 0, "ecx", 1 << 22), (7, 0, "edx", 0),  // 7.ecx bit 22: OSPKE mirrors CR4.PKE
        (0xd, 1, "eax", 0),
        (0x8000_0001, 0, "ecx", 0), (0x8000_0001, 0, "edx", 0),
    ]

    /// A description of the first features the guest had that the host lacks, or nil when every one is offered.
    static func missingFeatures(guest: [CPUIDLeaf], host: [kvm_cpuid_entry2]) -> String? {
        for (function, index, register, dynamic) in featureRegisters {
            guard let wanted = guest.first(where: { $0.function == function && $0.index == index }) else { continue }
            let offered = host.first {
                $0.function == function && ($0.index == index || $0.flags & UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) == 0)
            }
            let want = value(register, wanted.eax, wanted.ebx, wanted.ecx, wanted.edx) & ~dynamic
            let have = offered.map { value(register, $0.eax, $0.ebx, $0.ecx, $0.edx) } ?? 0
            let missing = want & ~have
            if missing != 0 {
                return "CPUID leaf 0x\(String(function, radix: 16)).\(index) \(register) bits 0x\(String(missing, radix: 16))"
            }
        }
        return nil
    }

    private static func value(_ register: String, _ eax: UInt32, _ ebx: UInt32, _ ecx: UInt32, _ edx: UInt32) -> UInt32 {
        switch register {
        case "eax": eax
        case "ebx": ebx
        case "ecx": ecx
        default: edx
        }
    }
}

extension CPUIDLeaf {
    /// A leaf as KVM's struct holds it.
    init(_ entry: kvm_cpuid_entry2) {
        self.init(
            function: entry.function, index: entry.index, flags: entry.flags, eax: entry.eax, ebx: entry.ebx, ecx: entry.ecx,
            edx: entry.edx)
    }
}
