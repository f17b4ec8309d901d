import CKVM
import Foundation
import Glibc
import KVM
import MachineDescription
import Testing

@testable import VMM

/// Every kernel and device chunk is checked before anything is restored: a chunk that does not fit is refused
/// with its name and what was expected, and the machine stays incoming, as if nothing had been tried.
@Suite(.serialized, .enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
struct StateShapeTests {
    /// A chunk's bytes edited in place: little-endian `value` of `width` bytes at `offset`.
    static func setting(_ offset: Int, _ value: UInt64, width: Int = 8) -> @Sendable ([UInt8]) -> [UInt8] {
        { bytes in
            var edited = bytes
            for index in 0..<width { edited[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
            return edited
        }
    }

    static func offset<T>(_ path: PartialKeyPath<T>) -> Int { MemoryLayout<T>.offset(of: path)! }

    /// (chunk, edit, words the refusal must hold)
    static let misfits: [(String, @Sendable ([UInt8]) -> [UInt8], String)] = [
        ("vcpu0/tsc-khz", { _ in [5, 0, 0, 0] }, "state chunk vcpu0/tsc-khz: the guest's TSC runs at 5 kHz"),
        ("vcpu0/tsc-khz", { _ in [0, 0, 0, 0] }, "state chunk vcpu0/tsc-khz: the guest's TSC runs at 0 kHz"),
        ("vcpu0/tsc-khz", { $0 + [0] }, "state chunk vcpu0/tsc-khz: 5 bytes, expected 4"),
        ("vcpu1/mpstate", setting(0, 9, width: 4), "state chunk vcpu1/mpstate: mp_state 9, expected 0 to 4"),
        ("vcpu0/sregs", setting(offset(\kvm_sregs.cr0), 1 << 31), "state chunk vcpu0/sregs: CR0 0x80000000 sets PG without PE"),
        ("vcpu0/xsave", setting(520, 1 << 63), "state chunk vcpu0/xsave: XSAVE header is compacted"),
        ("vcpu0/xsave", setting(24, 1 << 20, width: 4), "MXCSR 0x100000 sets reserved bits"),
        ("vcpu0/xcrs", setting(offset(\kvm_xcrs.xcrs) + 8, 2), "state chunk vcpu0/xcrs: XCR0 0x2 does not enable x87 state"),
        ("vcpu0/debugregs", setting(offset(\kvm_debugregs.flags), 1), "state chunk vcpu0/debugregs: flags 0x1, expected 0"),
        ("vcpu0/events", setting(offset(\kvm_vcpu_events.flags), 0x10, width: 4), "state chunk vcpu0/events: flags 0x10"),
        ("vcpu0/events", { bytes in Self.setting(0, 1, width: 1)(Self.setting(1, 40, width: 1)(bytes)) }, "exception vector 40"),
        ("vm/clock", setting(offset(\kvm_clock_data.flags), 0x100, width: 4), "state chunk vm/clock: flags 0x100"),
        ("vcpu0/regs", { Array($0.dropLast()) }, "state chunk vcpu0/regs: 143 bytes, this host's KVM expects 144"),
        (
            "vcpu0/msrs", { _ in [1, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x01, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 8) },
            "state chunk vcpu0/msrs: MSR 0x17b is not one that migrates"
        ),
        ("status0", { Array($0.dropLast(8)) }, "device 'status0': state is"),
        ("uart0", { _ in [] }, "device 'uart0': malformed state"),
    ]

    @Test func aChunkThatDoesNotFitIsRefusedByNameAndNothingIsRestored() throws {
        let scratch = Scratch()
        let source = try KVMMachine.boot(
            name: "source", vcpus: 2, memorySize: 32 << 20,
            options: MachineOptions(consoleLog: scratch.file("source"), guestWorkingSet: 4 << 20))
        defer { source.destroy() }
        try source.pause()
        let state = try source.saveState()
        var config = source.config
        config.name = "copy"
        let target = try KVMMachine.incoming(config: config, options: MachineOptions(consoleLog: scratch.file("target")))
        defer { target.destroy() }
        for (name, edit, words) in Self.misfits {
            var broken = state
            if let index = broken.kernel.firstIndex(where: { $0.name == name }) {
                broken.kernel[index].data = edit(broken.kernel[index].data)
            } else {
                let index = try #require(broken.devices.firstIndex { $0.name == name })
                broken.devices[index].data = edit(broken.devices[index].data)
            }
            #expect(throws: MachineError.self, "\(name) must be refused") { try target.checkState(broken) }
            #expect { try target.restoreState(broken) } throws: {
                "\($0)".hasPrefix("this host cannot run VM 'copy': ") && "\($0)".contains(words)
            }
            #expect(target.status().state == .incoming, "\(name): a refused chunk restores nothing")
        }
        // A CPUID chunk that gives the guest what this host's CPU lacks.
        var newerCPU = state
        let cpuid = try #require(newerCPU.kernel.firstIndex { $0.name == "vcpu1/cpuid" })
        newerCPU.kernel[cpuid].data = CPUIDList.encode([
            kvm_cpuid_entry2(function: 7, index: 0, flags: 1, eax: 0, ebx: 0xffff_ffff, ecx: 0, edx: 0, padding: (0, 0, 0))
        ])
        #expect { try target.restoreState(newerCPU) } throws: {
            "\($0)".contains("state chunk vcpu1/cpuid: this host's CPU lacks features it gives the guest (CPUID leaf 0x7.0 ebx")
        }
        try target.checkState(state)
        try target.restoreState(state)
        #expect(target.status().state == .paused, "the state as it was saved restores")
    }
}
