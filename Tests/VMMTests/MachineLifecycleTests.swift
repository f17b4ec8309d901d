import Foundation
import Glibc
import MachineDescription
import Testing

@testable import VMM

@Suite(.serialized, .enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
struct MachineLifecycleTests {
    @Test func pauseStopsTicksAndResumeContinuesFromTheSameValue() throws {
        let scratch = Scratch()
        let machine = try KVMMachine.boot(
            name: "pause", vcpus: 2, memorySize: 64 << 20,
            options: MachineOptions(consoleLog: scratch.file("console"), guestWorkingSet: 8 << 20))
        defer { machine.destroy() }
        #expect(eventually { machine.ticks.allSatisfy { $0 > 100 } })
        try machine.pause()
        #expect(machine.status().state == .paused)
        let paused = machine.ticks
        usleep(200_000)
        #expect(machine.ticks == paused)
        try machine.resume()
        #expect(machine.status().state == .running)
        #expect(eventually { zip(machine.ticks, paused).allSatisfy { $0 > $1 } })
        // The counter lives in guest memory: it continued from the paused value, it did not restart.
        let after = machine.ticks
        #expect(zip(after, paused).allSatisfy { $0 >= $1 && $0 - $1 < 1_000_000 })
        #expect(machine.status().vcpus.allSatisfy { $0.checksFailed == 0 })
        #expect(machine.failure == nil)
    }

    @Test func startsPausedWhenAsked() throws {
        let scratch = Scratch()
        let machine = try KVMMachine.boot(
            name: "held", vcpus: 1, memorySize: 32 << 20,
            options: MachineOptions(
                startPaused: true, consoleLog: scratch.file("console"),
                guestWorkingSet: 4 << 20))
        defer { machine.destroy() }
        #expect(machine.status().state == .paused)
        usleep(100_000)
        #expect(machine.ticks == [0])
        try machine.resume()
        #expect(eventually { machine.ticks[0] > 0 })
    }

    @Test func memoryAbove4GiBIsReachable() throws {
        let scratch = Scratch()
        let size: UInt64 = 6 << 30
        let machine = try KVMMachine.boot(
            name: "high", vcpus: 2, memorySize: size,
            options: MachineOptions(consoleLog: scratch.file("console"), guestWorkingSet: 16 << 20))
        defer { machine.destroy() }
        #expect(machine.config.segments.map(\.name) == ["lowmem", "highmem"])
        #expect(eventually { machine.status().vcpus.allSatisfy { $0.checksPassed >= 2 } })
        #expect(machine.status().vcpus.allSatisfy { $0.checksFailed == 0 })
        // The working set is the top 16 MiB of highmem (guest-physical 7 GiB - 16 MiB): the guest wrote there.
        let top = Int(size)
        let written = readMemory(machine, offset: top - (8 << 20), length: 1 << 20)
        #expect(written.contains { $0 != 0 })
        #expect(machine.failure == nil)
        // A 6 GiB guest costs what it touches: the working set and the boot area, not 6 GiB.
        var stats = stat()
        fstat(machine.memoryFile, &stats)
        #expect(Int(stats.st_blocks) * 512 <= (16 << 20) + (8 << 20))
    }

    @Test func twoMachinesRunAtOnce() throws {
        let scratch = Scratch()
        let first = try KVMMachine.boot(
            name: "one", vcpus: 1, memorySize: 32 << 20,
            options: MachineOptions(consoleLog: scratch.file("one"), guestWorkingSet: 4 << 20))
        defer { first.destroy() }
        let second = try KVMMachine.boot(
            name: "two", vcpus: 2, memorySize: 32 << 20,
            options: MachineOptions(consoleLog: scratch.file("two"), guestWorkingSet: 4 << 20))
        defer { second.destroy() }
        #expect(first.memoryFile != second.memoryFile)
        #expect(eventually { (first.ticks + second.ticks).allSatisfy { $0 > 100 } })
        #expect(
            eventually { first.status().vcpus[0].checksPassed > 0 && second.status().vcpus.allSatisfy { $0.checksPassed > 0 } })
        #expect((first.status().vcpus + second.status().vcpus).allSatisfy { $0.checksFailed == 0 })
    }

    @Test func badRequestsAreClearErrors() throws {
        let scratch = Scratch()
        let options = MachineOptions(consoleLog: scratch.file("console"), guestWorkingSet: 4 << 20)
        #expect(throws: MachineError.self) { try KVMMachine.boot(name: "x", vcpus: 0, memorySize: 32 << 20, options: options) }
        #expect(throws: MachineError.self) { try KVMMachine.boot(name: "x", vcpus: 1, memorySize: 1 << 20, options: options) }
        #expect(throws: MachineError.self) {
            try KVMMachine.boot(name: "x", vcpus: 1, memorySize: 32 << 20 | 1, options: options)
        }
        #expect(throws: MachineError.self) { try KVMMachine.boot(name: "x", vcpus: 1, memorySize: 1 << 50, options: options) }
        let machine = try KVMMachine.boot(name: "x", vcpus: 1, memorySize: 32 << 20, options: options)
        defer { machine.destroy() }
        #expect(throws: MachineError.self) { try machine.saveState() }  // still running
        #expect(throws: MachineError.self) { try machine.dirtyLogFetch(segment: 0) }
        #expect(throws: MachineError.self) { try machine.restoreState(MachineState(kernel: [], devices: [])) }
        machine.destroy()
        #expect(throws: MachineError.self) { try machine.pause() }
        machine.destroy()  // idempotent
    }
}
