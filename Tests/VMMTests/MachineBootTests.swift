import Foundation
import MachineDescription
import Testing

@testable import VMM

@Suite(.serialized) struct MachineBootTests {
    @Test(.enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
    func twoVCPUsTickAndCheck() throws {
        let scratch = Scratch()
        let machine = try KVMMachine.boot(
            name: "boot", vcpus: 2, memorySize: 128 << 20,
            options: MachineOptions(consoleLog: scratch.file("console")))
        defer { machine.destroy() }
        let ok = eventually { machine.status().vcpus.allSatisfy { $0.tick > 10 && $0.checksPassed >= 2 } }
        let status = machine.status()
        #expect(ok)
        #expect(status.state == .running)
        #expect(status.vcpus.count == 2)
        #expect(status.vcpus.allSatisfy { $0.checksFailed == 0 })
        #expect(machine.host.hypervisor == "kvm" && machine.host.architecture == "x86_64")
        #expect(machine.host.hypervisorVersion.hasPrefix("api 12 (linux "))
        #expect(
            machine.config.cpuid.contains { $0.function == 1 }
                && !machine.config.cpuid.contains {
                    $0 == CPUIDLeaf(function: 0, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0)
                })
        #expect(machine.config.devices.map(\.kind) == ["uart16550", "guest-status"])
        machine.destroy()
        let console = scratch.read("console")
        #expect(console.contains("cpu00 tick "))
        #expect(console.contains("cpu01 tick "))
        #expect(console.contains("check OK"))
        #expect(!console.contains("FAIL"))
    }
}
