import Foundation
import Glibc
import MachineDescription
import Testing

@testable import VMM

/// Save a running guest's state and continue it in a fresh machine in this process: migration without a stream.
@Suite(.serialized, .enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
struct MachineStateTests {
    static let memorySize: UInt64 = 64 << 20
    static let workingSet: UInt64 = 8 << 20

    /// Boots a source, lets it work, pauses it with console input pending, and saves its state.
    func pausedSource(_ scratch: Scratch) throws -> (KVMMachine, MachineState, MachineConfig) {
        let source = try KVMMachine.boot(
            name: "source", vcpus: 2, memorySize: Self.memorySize,
            options: MachineOptions(consoleLog: scratch.file("source"), guestWorkingSet: Self.workingSet))
        #expect(eventually { source.status().vcpus.allSatisfy { $0.checksPassed >= 1 && $0.tick > 1000 } })
        try source.pause()
        try source.consoleInput(Array("hello\n".utf8))  // unread by the guest: must travel in the UART's state
        let state = try source.saveState()
        return (source, state, source.config)
    }

    @Test func savedStateContinuesInAFreshMachine() throws {
        let scratch = Scratch()
        let (source, state, config) = try pausedSource(scratch)
        defer { source.destroy() }
        let saved = source.status().vcpus

        #expect(state.kernel.map(\.name).starts(with: ["vcpu0/mpstate", "vcpu0/regs", "vcpu0/sregs", "vcpu0/xsave"]))
        #expect(state.kernel.suffix(5).map(\.name) == ["vm/pit", "vm/clock", "vm/irqchip0", "vm/irqchip1", "vm/irqchip2"])
        #expect(state.kernel.first { $0.name == "vcpu0/regs" }?.data.count == 144)
        #expect(state.devices.map(\.name) == ["uart0", "status0"])
        #expect(!config.cpuid.isEmpty)

        let target = try KVMMachine.incoming(config: config, options: MachineOptions(consoleLog: scratch.file("target")))
        defer { target.destroy() }
        #expect(target.status().state == .incoming)
        #expect(throws: MachineError.self) { try target.resume() }  // no state yet
        copyMemory(from: source, to: target)
        try target.restoreState(state)
        #expect(target.status().state == .paused)
        #expect(target.status().vcpus == saved)  // the status device's reports travelled
        try target.resume()
        #expect(
            eventually {
                zip(target.status().vcpus, saved).allSatisfy { now, before in
                    now.tick > before.tick + 100 && now.checksPassed > before.checksPassed
                }
            })
        let after = target.status().vcpus
        #expect(zip(after, saved).allSatisfy { $0.tick - $1.tick < 10_000_000 })  // continued, not restarted
        #expect(after.allSatisfy { $0.checksFailed == 0 })
        #expect(eventually { scratch.read("target").contains("rx: hello") })
        #expect(target.failure == nil)
        target.destroy()
        #expect(!scratch.read("target").contains("FAIL"))
        #expect(!scratch.read("source").contains("rx: hello"))
    }

    @Test func aZeroedWorkingSetPageMakesTheGuestFail() throws {
        let scratch = Scratch()
        let (source, state, config) = try pausedSource(scratch)
        defer { source.destroy() }
        let target = try KVMMachine.incoming(config: config, options: MachineOptions(consoleLog: scratch.file("target")))
        defer { target.destroy() }
        copyMemory(from: source, to: target)
        // Zero the first page of vCPU 0's slice that the guest wrote (the working set is the top of RAM).
        let sliceStart = Int(Self.memorySize - Self.workingSet)
        let page = try #require(
            (0..<Int(Self.workingSet / 2) / 4096).first { index in
                readMemory(target, offset: sliceStart + index * 4096, length: 4096).contains { $0 != 0 }
            })
        let zeros = [UInt8](repeating: 0, count: 4096)
        #expect(
            zeros.withUnsafeBytes { pwrite(target.memoryFile, $0.baseAddress, 4096, off_t(sliceStart + page * 4096)) } == 4096)
        try target.restoreState(state)
        try target.resume()
        #expect(eventually { target.status().vcpus[0].checksFailed > 0 })
        #expect(target.status().vcpus[1].checksFailed == 0)
        #expect(eventually { scratch.read("target").contains("cpu00 tick") && scratch.read("target").contains("check FAIL") })
    }

    @Test func aGuestThatCrashesIsReported() throws {
        let scratch = Scratch()
        let (source, state, config) = try pausedSource(scratch)
        defer { source.destroy() }
        let target = try KVMMachine.incoming(config: config, options: MachineOptions(consoleLog: scratch.file("target")))
        defer { target.destroy() }
        copyMemory(from: source, to: target)
        // Without its top-level page table the guest's first instruction fetch faults; with no IDT that is a triple fault.
        let zeros = [UInt8](repeating: 0, count: 4096)
        #expect(zeros.withUnsafeBytes { pwrite(target.memoryFile, $0.baseAddress, 4096, off_t(GuestLayout.pml4)) } == 4096)
        try target.restoreState(state)
        try target.resume()
        #expect(eventually { target.failure != nil })
        #expect(target.failure?.contains("KVM_EXIT_SHUTDOWN") == true)
        #expect(eventually { scratch.read("target").contains("vmrun: vcpu") })
        try target.pause()  // crashed vCPUs count as parked
        #expect(target.status().state == .crashed)
        #expect(target.status().failure == target.failure)
        #expect { try target.resume() } throws: { "\($0)".contains("has crashed") && "\($0)".contains("cannot run again") }
    }

    @Test func incomingRefusesWhatItDoesNotKnow() throws {
        let scratch = Scratch()
        let options = MachineOptions(consoleLog: scratch.file("console"))
        let settings = GuestStatusDevice.Settings(workingSet: 4 << 20, dirtyRate: 0, vcpus: 1)
        let good = MachineConfig(
            name: "in", vcpuCount: 1, segments: MemorySegment.standardLayout(memorySize: 32 << 20),
            devices: KVMMachine.standardDevices(settings), cpuid: [])
        var unknownKind = good
        unknownKind.devices[0].kind = "virtio-net"
        #expect { try KVMMachine.incoming(config: unknownKind, options: options) } throws: {
            "\($0)" == "this host cannot run VM 'in': device 'uart0': unknown kind 'virtio-net'"
        }
        var newerVersion = good
        newerVersion.devices[1].version = 99
        #expect(throws: MachineError.self) { try KVMMachine.incoming(config: newerVersion, options: options) }
        var newerCPU = good
        newerCPU.cpuid = [CPUIDLeaf(function: 7, index: 0, flags: 1, eax: 0, ebx: 0xffff_ffff, ecx: 0, edx: 0)]
        #expect { try KVMMachine.incoming(config: newerCPU, options: options) } throws: {
            "\($0)".contains("CPUID leaf 0x7.0 ebx")
        }
        var oddLayout = good
        oddLayout.segments[0].guestPhysicalBase = 4096
        #expect(throws: MachineError.self) { try KVMMachine.incoming(config: oddLayout, options: options) }

        let machine = try KVMMachine.incoming(config: good, options: options)
        defer { machine.destroy() }
        #expect {
            try machine.restoreState(MachineState(kernel: [StateChunk(name: "vcpu0/bogus", version: 1, data: [])], devices: []))
        } throws: { "\($0)".contains("vcpu0/bogus") }
        #expect(machine.status().state == .incoming)
    }
}
