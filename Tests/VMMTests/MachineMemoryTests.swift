import Foundation
import Glibc
import MachineDescription
import Testing

@testable import VMM

@Suite(.serialized, .enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
struct MachineMemoryTests {
    static func dirtyPages(_ bitmap: [UInt64]) -> Int { bitmap.reduce(0) { $0 + $1.nonzeroBitCount } }

    @Test func pagesTheGuestWritesShowUpInTheDirtyLog() throws {
        let scratch = Scratch()
        let memorySize: UInt64 = 160 << 20
        let workingSet: UInt64 = 128 << 20
        let machine = try KVMMachine.boot(
            name: "dirty", vcpus: 2, memorySize: memorySize,
            options: MachineOptions(consoleLog: scratch.file("console"), guestWorkingSet: workingSet))
        defer { machine.destroy() }
        #expect(eventually { machine.ticks.allSatisfy { $0 > 10 } })
        let ticksBefore = machine.ticks.reduce(0, +)
        let flatOutStart = Date()
        usleep(300_000)
        let flatOutTicks = Double(machine.ticks.reduce(0, +) - ticksBefore) / Date().timeIntervalSince(flatOutStart)
        #expect(try machine.dirtyLogStart(manualClear: false) == false)
        let start = Date()
        usleep(250_000)
        let bitmap = try machine.dirtyLogFetch(segment: 0)
        let seconds = Date().timeIntervalSince(start)
        #expect(bitmap.count == Int(memorySize / 4096 / 64))
        let firstWorkingSetPage = Int((memorySize - workingSet) / 4096)
        let inWorkingSet = (firstWorkingSetPage..<Int(memorySize / 4096)).filter { bitmap[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
            .count
        let elsewhere = Self.dirtyPages(bitmap) - inWorkingSet
        #expect(inWorkingSet > 100)
        #expect(elsewhere <= 8)  // status blocks, stacks, the UART lock: nothing else
        print(
            "flat out, 2 vCPUs: \(Int(flatOutTicks)) ticks/s of \(GuestStatusDevice.flatOutWritesPerTick) writes without dirty logging;",
            "\(inWorkingSet) of \(workingSet / 4096) working-set pages dirtied in \(String(format: "%.2f", seconds)) s",
            "(\(Int(Double(inWorkingSet * 4096) / seconds / 1e6)) MB/s under dirty logging)")

        try machine.pause()
        _ = try machine.dirtyLogFetch(segment: 0)
        #expect(Self.dirtyPages(try machine.dirtyLogFetch(segment: 0)) == 0)  // paused: nothing new
        try machine.resume()
        #expect(eventually { Self.dirtyPages((try? machine.dirtyLogFetch(segment: 0)) ?? []) > 0 })
        try machine.dirtyLogStop()
        #expect(throws: MachineError.self) { try machine.dirtyLogFetch(segment: 0) }
        #expect(throws: MachineError.self) { try machine.dirtyLogFetch(segment: 5) }
    }

    /// With manual clearing a fetch leaves the log as it is, and a clear re-arms exactly the pages it names.
    @Test func manualClearingClearsOnlyTheNamedPages() throws {
        let scratch = Scratch()
        let memorySize: UInt64 = 64 << 20
        let machine = try KVMMachine.boot(
            name: "manual", vcpus: 2, memorySize: memorySize,
            options: MachineOptions(consoleLog: scratch.file("console"), guestWorkingSet: 32 << 20))
        defer { machine.destroy() }
        #expect(eventually { machine.ticks.allSatisfy { $0 > 10 } })
        try machine.pause()
        #expect(try machine.dirtyLogStart(manualClear: true), "this host has KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        // Not KVM_DIRTY_LOG_INITIALLY_SET: a log started on a paused guest is empty, so holes are never read.
        #expect(Self.dirtyPages(try machine.dirtyLogFetch(segment: 0)) == 0)
        try machine.resume()
        usleep(200_000)
        try machine.pause()
        let first = try machine.dirtyLogFetch(segment: 0)
        #expect(Self.dirtyPages(first) > 100)
        #expect(try machine.dirtyLogFetch(segment: 0) == first, "a fetch does not clear")
        // Clear the first half of the dirty words only.
        let words = first.indices.filter { first[$0] != 0 }
        let (start, cut) = (words[0], words[words.count / 2])
        try machine.dirtyLogClear(segment: 0, firstPage: UInt64(start) * 64, bitmap: Array(first[start..<cut]))
        var expected = first
        for index in start..<cut { expected[index] = 0 }
        #expect(try machine.dirtyLogFetch(segment: 0) == expected, "exactly the named pages are cleared")
        // Cleared pages are re-armed: the running guest dirties them again.
        try machine.resume()
        #expect(eventually { ((try? machine.dirtyLogFetch(segment: 0)) ?? [])[start..<cut].contains { $0 != 0 } })
        try machine.pause()

        let pages = memorySize / 4096
        #expect(throws: MachineError("dirty log clear: first page 3 is not a multiple of 64 inside segment 0 (\(pages) pages)")) {
            try machine.dirtyLogClear(segment: 0, firstPage: 3, bitmap: [1])
        }
        #expect(
            throws: MachineError("dirty log clear: 2 bitmap words from page \(pages - 64) do not fit segment 0 (\(pages) pages)")
        ) {
            try machine.dirtyLogClear(segment: 0, firstPage: pages - 64, bitmap: [1, 1])
        }
        #expect(throws: MachineError("no memory segment 5 (the machine has 1)")) {
            try machine.dirtyLogClear(segment: 5, firstPage: 0, bitmap: [1])
        }
        try machine.dirtyLogStop()
        #expect(throws: MachineError("dirty logging is not started")) {
            try machine.dirtyLogClear(segment: 0, firstPage: 0, bitmap: [1])
        }
        #expect(try machine.dirtyLogStart(manualClear: false) == false)
        #expect(throws: MachineError("dirty logging was started without manual clearing: fetches clear the log")) {
            try machine.dirtyLogClear(segment: 0, firstPage: 0, bitmap: [1])
        }
        try machine.dirtyLogStop()
    }

    @Test func pacingHoldsTheDirtyRate() throws {
        let scratch = Scratch()
        let rate: UInt64 = 8 << 20
        let machine = try KVMMachine.boot(
            name: "paced", vcpus: 2, memorySize: 256 << 20,
            options: MachineOptions(
                consoleLog: scratch.file("console"), guestWorkingSet: 192 << 20,
                guestDirtyRate: rate))
        defer { machine.destroy() }
        #expect(machine.config.devices[1].configuration["dirty-rate"] == String(rate))
        #expect(eventually { machine.ticks.allSatisfy { $0 > 10 } })
        #expect(try machine.dirtyLogStart(manualClear: false) == false)
        let start = Date()
        let ticksBefore = machine.ticks.reduce(0, +)
        usleep(2_000_000)
        let pages = Self.dirtyPages(try machine.dirtyLogFetch(segment: 0))
        let ticks = machine.ticks.reduce(0, +) - ticksBefore
        let seconds = Date().timeIntervalSince(start)
        let writesPerTick = try #require(machine.config.devices[1].configuration["writes-per-tick"].flatMap { UInt64($0) })
        // Each write counts as one page; the dirty log may report more (see the report on kvm_pvm), never fewer.
        let measured = Double(ticks * writesPerTick * 4096) / seconds
        print(
            "paced at \(rate) B/s: the guest wrote \(Int(measured)) B/s (\(ticks) ticks of \(writesPerTick) writes);",
            "the dirty log reported \(Int(Double(pages * 4096) / seconds)) B/s")
        #expect(Double(pages * 4096) / seconds >= measured * 0.8)
        // Loose bounds on purpose (other tests share the two cores): unpaced, this guest writes 60 MB/s or more,
        // several times the bound, so the test still fails if pacing does not work.
        #expect(measured > Double(rate) * 0.25)
        #expect(measured < Double(rate) * 2)
        // No upper bound on what the log reports: a check already running when logging starts reads its whole
        // slice, and on kvm_pvm reads of written pages are logged too.
        let passed = machine.status().vcpus.map(\.checksPassed)
        try machine.dirtyLogStop()
        #expect(eventually { zip(machine.status().vcpus, passed).allSatisfy { $0.checksPassed > $1 } })
    }

    @Test func memoryImageIsLoadedAndHeldWhilePaused() throws {
        let scratch = Scratch()
        let imagePath = scratch.file("image")
        var image = [UInt8](repeating: 0, count: 8 << 20)
        for index in stride(from: 0, to: image.count, by: 8192) { image[index] = UInt8(truncatingIfNeeded: index >> 13) | 1 }
        _ = FileManager.default.createFile(atPath: imagePath, contents: Data(image))
        let machine = try KVMMachine.boot(
            name: "image", vcpus: 1, memorySize: 32 << 20,
            options: MachineOptions(
                memoryImage: imagePath, startPaused: true,
                consoleLog: scratch.file("console"), guestWorkingSet: 4 << 20))
        defer { machine.destroy() }
        #expect(readMemory(machine, offset: 0, length: image.count) == image)
        // Zero pages of the image stay holes: the memfd holds only the pages the image filled.
        var stats = stat()
        fstat(machine.memoryFile, &stats)
        #expect(Int(stats.st_blocks) * 512 <= image.count / 2 + (1 << 20))
        try machine.resume()
        #expect(eventually { machine.status().vcpus[0].checksPassed > 0 })
        #expect(machine.status().vcpus[0].checksFailed == 0)
        #expect(throws: MachineError.self) {
            try KVMMachine.boot(
                name: "image2", vcpus: 1, memorySize: 32 << 20,
                options: MachineOptions(
                    memoryImage: scratch.file("missing"), consoleLog: scratch.file("console2"),
                    guestWorkingSet: 4 << 20))
        }
    }

    @Test func bundledGuestMatchesItsSource() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let source = root.appendingPathComponent("guest/guest.asm").path
        let sourceBytes = try #require(FileManager.default.contents(atPath: source))
        #expect(sha256(sourceBytes) == BundledGuest.sourceSHA256, "guest/guest.asm changed: run scripts/build-guest.sh")
        guard
            let nasm = ["/usr/bin/nasm", "/usr/local/bin/nasm"].first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            print("skipped the nasm rebuild: nasm is not installed")
            return
        }
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("guest-\(UUID().uuidString).bin").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: nasm)
        process.arguments = ["-f", "bin", "-o", output, source]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(FileManager.default.contents(atPath: output).map(Array.init) == BundledGuest.image)
    }
}

/// sha256 through sha256sum(1), which every Debian has; the tests need no crypto library for one hash.
func sha256(_ data: Data) -> String? {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    let input = Pipe()
    let output = Pipe()
    process.standardInput = input
    process.standardOutput = output
    guard (try? process.run()) != nil else { return nil }
    input.fileHandleForWriting.write(data)
    try? input.fileHandleForWriting.close()
    let result = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: result, as: UTF8.self).split(separator: " ").first.map(String.init)
}
