import CKVM
import Glibc
import Testing

@testable import KVM

let kvmUnavailable: String? = access("/dev/kvm", R_OK | W_OK) == 0 ? nil : "/dev/kvm is missing or not accessible"

@Suite struct KVMLayerTests {
    @Test func aMissingDeviceIsAClearError() {
        #expect { try KVMSystem(path: "/nonexistent/kvm") } throws: { error in
            let text = "\(error)"
            return text.hasPrefix("/nonexistent/kvm: KVM is not available on this host")
                && text.contains("No such file or directory")
        }
    }

    @Test func errorsNameTheCallAndTheErrno() {
        #expect("\(KVMError(call: "KVM_SET_SREGS", errno: .invalidArgument))" == "KVM_SET_SREGS: Invalid argument")
        #expect("\(KVMError(call: "KVM_SET_MSRS", detail: "MSR 0x6e0 refused"))" == "KVM_SET_MSRS: MSR 0x6e0 refused")
    }

    @Test func msrListRoundTripsAndRejectsBadLengths() {
        let entries = [MSREntry(index: 0x10, value: 12345), MSREntry(index: 0x6e0, value: 0)]
        let bytes = MSRList.encode(entries)
        #expect(bytes.count == 8 + 16 * 2)
        #expect(MSRList.decode(bytes) == entries)
        #expect(MSRList.decode(Array(bytes.dropLast())) == nil)
        #expect(MSRList.decode([1, 0]) == nil)
        #expect(MSRList.isMigrated(0x10) && MSRList.isMigrated(0xc000_0080) && MSRList.isMigrated(0x4b56_4d01))
        #expect(!MSRList.isMigrated(0x17b))  // MCG_CTL never
    }

    @Test(.enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
    func hostCapabilities() throws {
        let system = try KVMSystem()
        #expect(system.apiVersion == 12)
        #expect(system.checkExtension(KVM_CAP_IRQCHIP) > 0)
        #expect(try system.vcpuMmapSize() >= 4096)
        let cpuid = try system.supportedCPUID()
        #expect(cpuid.contains { $0.function == 0 })
        #expect(cpuid.contains { $0.function == 1 })
        let msrs = try system.msrIndexList()
        #expect(msrs.contains(0x10))  // TSC
    }

    @Test(.enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
    func vcpuStateRoundTripsAndBadStateIsRefusedByName() throws {
        let system = try KVMSystem()
        let vm = try system.createVirtualMachine()
        try vm.setTSSAddress(0xfffb_d000)
        try vm.createIRQChip()
        try vm.createPIT2()
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(try system.supportedCPUID())

        var regs = try vcpu.regs()
        regs.rax = 0x1234_5678_9abc_def0
        regs.rflags = 0x2
        try vcpu.setRegs(regs)
        #expect(try vcpu.regs().rax == 0x1234_5678_9abc_def0)

        for item in VCPUStateItem.allCases {
            let bytes = try vcpu.state(item)
            #expect(bytes.count == vcpu.size(of: item))
            try vcpu.setState(item, bytes)
        }
        #expect(vcpu.size(of: .regs) == 144 && vcpu.size(of: .sregs) == 312 && vcpu.size(of: .lapic) == 1024)
        #expect(throws: KVMError.self) { try vcpu.setState(.regs, [0, 1, 2]) }

        var sregs = try vcpu.sregs()
        sregs.cr0 = 0x8000_0000  // paging without protection: KVM refuses
        #expect { try vcpu.setSregs(sregs) } throws: { "\($0)" == "KVM_SET_SREGS: Invalid argument" }

        let msrs = vcpu.readableMSRs(try system.msrIndexList().filter(MSRList.isMigrated))
        #expect(msrs.contains(0x10))
        let values = try vcpu.msrs(msrs)
        try vcpu.setMSRs(values.filter { $0.index != MSRList.tscDeadline })
        #expect { try vcpu.setMSRs([MSREntry(index: 0xdead_beef, value: 1)]) } throws: { "\($0)".contains("0xdeadbeef") }

        let cpuid = try vcpu.cpuidState()
        try vcpu.setCPUIDState(cpuid)
        #expect(throws: KVMError.self) { try vcpu.setCPUIDState([1, 2, 3]) }
        #expect(try vcpu.tscKHz() > 0)

        #expect(try vm.pitState().count == KVMVirtualMachine.pitSize)
        try vm.setPITState(try vm.pitState())
        try vm.setClock(try vm.clock())
        for chip: UInt32 in 0..<3 {
            let state = try vm.irqchip(chip)
            #expect(state.count == KVMVirtualMachine.irqchipSize)
            try vm.setIRQChip(state)
        }
        vcpu.close()
        vm.close()
    }

    @Test(.enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
    func immediateExitReturnsAtOnce() throws {
        let system = try KVMSystem()
        let vm = try system.createVirtualMachine()
        try vm.createIRQChip()
        let vcpu = try vm.createVCPU(id: 0)
        vcpu.setImmediateExit(true)
        #expect(try vcpu.runOnce() == .interrupted)
    }
}
