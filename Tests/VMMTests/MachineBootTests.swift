import Foundation
import Testing
import MachineDescription
@testable import VMM

@Suite(.serialized) struct MachineBootTests {
    @Test(.enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
    func twoVCPUsTickAndCheck() throws {
        let scratch = Scratch()
        let machine = try KVMMachine.boot(name: "boot", vcpus: 2, memorySize: 128 << 20,
                                          options: MachineOptions(consoleLog: scratch.file("console")))
        defer { machine.destroy() }
        let ok = eventually { machine.status().vcpus.allSatisfy { $0.tick > 10 && $0.checksPassed >= 2 } }
        let status = machine.status()
        print("status:", status, "failure:", machine.failure ?? "none")
        #expect(ok)
        #expect(status.state == .running)
        #expect(status.vcpus.count == 2)
        #expect(status.vcpus.allSatisfy { $0.checksFailed == 0 })
        machine.destroy()
        let console = scratch.read("console")
        print(console.split(separator: "\n").prefix(6).joined(separator: "\n"))
        #expect(console.contains("cpu00 tick "))
        #expect(console.contains("cpu01 tick "))
        #expect(console.contains("check OK"))
        #expect(!console.contains("FAIL"))
    }
}
