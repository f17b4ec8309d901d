import Devices
import Foundation
import Glibc
import MachineDescription
import Testing

/// A temporary raw image, removed with the object.
final class TestImage {
    let path: String
    init(size: Int, fill: UInt8? = nil) {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("vmsend-disk-\(UUID().uuidString).img").path
        if let fill {
            _ = FileManager.default.createFile(atPath: path, contents: Data(repeating: fill, count: size))
        } else {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            truncate(path, off_t(size))
        }
    }
    deinit { unlink(path) }
    var contents: [UInt8] { Array(FileManager.default.contents(atPath: path) ?? Data()) }
    var allocatedBytes: Int {
        var info = stat()
        stat(path, &info)
        return Int(info.st_blocks) * 512
    }
}

struct VirtioBlockTests {
    static let serial = "vmsend-test-disk-0001"

    func makeDevice(_ image: TestImage, readOnly: Bool = false) throws -> (VirtioBlock, TestMemory, TestLine, DiskImage) {
        let disk = try DiskImage(
            DiskConfig(
                name: "vda", size: UInt64(image.contents.count), readOnly: readOnly,
                serial: Self.serial, path: image.path))
        let memory = TestMemory()
        let line = TestLine()
        struct NoPacing: Pacer { func sleep(nanoseconds: UInt64) {} }
        let console = FileManager.default.temporaryDirectory.appendingPathComponent("console-\(UUID().uuidString)").path
        defer { unlink(console) }
        let context = DeviceContext(
            memory: memory, vcpuCount: 1, console: try ConsoleLog(path: console),
            interruptLine: { _ in line }, pacer: NoPacing(), disks: ["vda": disk])
        let device = try VirtioBlock(
            config: VirtioBlock.configuration(disk: disk.config, mmio: 0xd000_0000, irq: 5), context: context)
        return (device, memory, line, disk)
    }

    static let wanted: UInt64 = 1 << 32 | 1 << 28 | 1 << 2 | 1 << 5 | 1 << 6 | 1 << 9 | 1 << 13 | 1 << 14

    @Test func itIntroducesItselfAsTheSpecSays() throws {
        let image = TestImage(size: 1 << 20)
        let (device, memory, _, _) = try makeDevice(image)
        defer { device.stop() }
        var driver = VirtioTestDriver(device: device, memory: memory, base: 0xd000_0000)
        #expect(driver.read(0x000) == 0x7472_6976)  // "virt"
        #expect(driver.read(0x004) == 2)
        #expect(driver.read(0x008) == 2)  // block device
        let features = driver.features()
        #expect(features & (1 << 32) != 0, "VIRTIO_F_VERSION_1")
        #expect(
            features & (1 << 28 | 1 << 9 | 1 << 13 | 1 << 14 | 1 << 2 | 1 << 6)
                == (1 << 28 | 1 << 9 | 1 << 13 | 1 << 14 | 1 << 2 | 1 << 6))
        #expect(features & (1 << 5) == 0, "not read-only")
        #expect(driver.config64(0) == UInt64(1 << 20) / 512, "capacity in sectors")
        #expect(driver.read(0x0b0) == 0xffff_ffff, "no shared memory region")
        // Without VERSION_1 a modern device refuses FEATURES_OK.
        let refused = driver.initialise(accepting: 1 << 9)
        #expect(!refused)
        let initialised = driver.initialise(accepting: Self.wanted)
        #expect(initialised)
        #expect(driver.read(0x070) == 15)
        driver.write(0x070, 0)
        #expect(driver.read(0x070) == 0, "a reset reads back as 0")
    }

    @Test func writesReadsFlushesAndIdentifies() throws {
        let image = TestImage(size: 1 << 20)
        let (device, memory, line, _) = try makeDevice(image)
        defer { device.stop() }
        var driver = VirtioTestDriver(device: device, memory: memory, base: 0xd000_0000)
        let initialised = driver.initialise(accepting: Self.wanted)
        #expect(initialised)
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        let writtenAnswer = driver.request(type: 1, sector: 16, data: data)
        let written = try #require(writtenAnswer)
        #expect(written.status == 0 && written.used == 1)
        #expect(Array(image.contents[8192..<12288]) == data)
        #expect(line.high)
        #expect(driver.read(0x060) & 1 == 1)
        driver.write(0x064, 1)
        #expect(!line.high, "acknowledged, the line drops")

        memory.fill(at: VirtioTestDriver.buffers + 0x1000, with: [UInt8](repeating: 0, count: 4096))
        let readAnswer = driver.request(type: 0, sector: 16, readBack: 4096)
        let read = try #require(readAnswer)
        #expect(read.status == 0 && read.used == 4097)
        #expect(memory.bytes(at: VirtioTestDriver.buffers + 0x1000, count: 4096) == data)
        #expect(
            memory.writes.withLock { $0 }.contains { $0.contains(VirtioTestDriver.buffers + 0x1000) },
            "the read's data is noted as written")

        let flushed = driver.request(type: 4, sector: 0)
        #expect(flushed?.status == 0, "flush")
        let idAnswer = driver.request(type: 8, sector: 0, readBack: 20)
        let id = try #require(idAnswer)
        #expect(id.status == 0)
        #expect(memory.bytes(at: VirtioTestDriver.buffers + 0x1000, count: 20) == Array(Self.serial.utf8.prefix(20)))
        let unknown = driver.request(type: 99, sector: 0)
        #expect(unknown?.status == 2, "unknown requests are unsupported")
        let pastTheEnd = driver.request(type: 0, sector: 2047, readBack: 1024)
        #expect(pastTheEnd?.status == 1, "a read past the end is an I/O error")
        let partialSector = driver.request(type: 1, sector: 0, data: [1, 2, 3])
        #expect(partialSector?.status == 1, "a write of part of a sector")
    }

    @Test func discardAndWriteZeroesLeaveHoles() throws {
        let image = TestImage(size: 1 << 20, fill: 0xab)
        let (device, memory, _, _) = try makeDevice(image)
        defer { device.stop() }
        var driver = VirtioTestDriver(device: device, memory: memory, base: 0xd000_0000)
        let initialised = driver.initialise(accepting: Self.wanted)
        #expect(initialised)
        let before = image.allocatedBytes
        func range(_ sector: UInt64, _ count: UInt32, flags: UInt32 = 0) -> [UInt8] {
            var bytes: [UInt8] = []
            withUnsafeBytes(of: sector.littleEndian) { bytes += $0 }
            withUnsafeBytes(of: count.littleEndian) { bytes += $0 }
            withUnsafeBytes(of: flags.littleEndian) { bytes += $0 }
            return bytes
        }
        let discarded = driver.request(type: 11, sector: 0, data: range(0, 256))
        #expect(discarded?.status == 0)
        let zeroed = driver.request(type: 13, sector: 0, data: range(512, 256, flags: 1))
        #expect(zeroed?.status == 0)
        #expect(image.contents[0..<131072].allSatisfy { $0 == 0 } && image.contents[262144..<393216].allSatisfy { $0 == 0 })
        #expect(image.contents[131072] == 0xab)
        #expect(image.allocatedBytes <= before - 2 * 131072)
        let unmapDiscard = driver.request(type: 11, sector: 0, data: range(0, 8, flags: 1))
        #expect(unmapDiscard?.status == 2, "unmap is not a discard flag")
        let discardPastTheEnd = driver.request(type: 11, sector: 0, data: range(2040, 16))
        #expect(discardPastTheEnd?.status == 1, "past the end")
    }

    @Test func aReadOnlyDiskRefusesWrites() throws {
        let image = TestImage(size: 1 << 20)
        let (device, memory, _, _) = try makeDevice(image, readOnly: true)
        defer { device.stop() }
        var driver = VirtioTestDriver(device: device, memory: memory, base: 0xd000_0000)
        #expect(driver.features() & (1 << 5) != 0)
        let initialised = driver.initialise(accepting: Self.wanted)
        #expect(initialised)
        let readOnlyWrite = driver.request(type: 1, sector: 0, data: [UInt8](repeating: 1, count: 512))
        #expect(readOnlyWrite?.status == 1)
        #expect(image.contents.allSatisfy { $0 == 0 })
    }

    @Test func indirectChainsWorkAndALoopNeedsAReset() throws {
        let image = TestImage(size: 1 << 20)
        let (device, memory, line, _) = try makeDevice(image)
        defer { device.stop() }
        var driver = VirtioTestDriver(device: device, memory: memory, base: 0xd000_0000)
        let initialised = driver.initialise(accepting: Self.wanted)
        #expect(initialised)
        // An indirect table of three descriptors: header, 512 bytes of data, status.
        let table: UInt64 = 0x20000
        let entries: [(UInt64, UInt32, UInt16, UInt16)] = [(0x30000, 16, 1, 1), (0x31000, 512, 1, 2), (0x32000, 1, 2, 0)]
        for (index, entry) in entries.enumerated() {
            let at = table + UInt64(index) * 16
            memory.store(entry.0, at: at)
            memory.store(entry.1, at: at + 8)
            memory.store(entry.2, at: at + 12)
            memory.store(entry.3, at: at + 14)
        }
        memory.store(UInt32(1), at: 0x30000)
        memory.store(UInt64(4), at: 0x30008)
        memory.fill(at: 0x31000, with: [UInt8](repeating: 0x5a, count: 512))
        let head = driver.nextDescriptor
        memory.store(table, at: VirtioTestDriver.descriptors + UInt64(head) * 16)
        memory.store(UInt32(48), at: VirtioTestDriver.descriptors + UInt64(head) * 16 + 8)
        memory.store(UInt16(4), at: VirtioTestDriver.descriptors + UInt64(head) * 16 + 12)
        driver.nextDescriptor += 1
        driver.submit(head: head)
        let used = driver.waitUsed()
        #expect(used?.0 == head)
        #expect(memory.load(UInt8.self, at: 0x32000) == 0)
        #expect(Array(image.contents[2048..<2560]) == [UInt8](repeating: 0x5a, count: 512))

        // Two descriptors that point at each other: the device stops and asks for a reset.
        let first = driver.descriptor(0x30000, 16, writable: false, next: true)
        _ = driver.descriptor(0x32000, 1, writable: true, next: true)
        memory.store(first, at: VirtioTestDriver.descriptors + UInt64(first + 1) * 16 + 14)
        driver.write(0x064, 3)
        driver.submit(head: first)
        let deadline = Date().addingTimeInterval(5)
        while driver.read(0x070) & 64 == 0 && Date() < deadline { usleep(1000) }
        #expect(driver.read(0x070) & 64 != 0, "DEVICE_NEEDS_RESET")
        #expect(driver.read(0x060) & 2 != 0 && line.high, "a configuration change interrupt")
    }

    @Test func stateTravelsAndAnotherImageIsRefused() throws {
        let image = TestImage(size: 1 << 20)
        let (device, memory, _, disk) = try makeDevice(image)
        defer { device.stop() }
        var driver = VirtioTestDriver(device: device, memory: memory, base: 0xd000_0000)
        let initialised = driver.initialise(accepting: Self.wanted)
        #expect(initialised)
        disk.trackWrites(true)
        let trackedWrite = driver.request(type: 1, sector: 24, data: [UInt8](repeating: 9, count: 4096))
        #expect(trackedWrite?.status == 0)
        #expect(disk.fetchWritten().first == 1 << 3, "block 3 (sectors 24-31) was written")
        #expect(disk.fetchWritten().first == 0, "a fetch starts over")
        device.pause()
        let state = device.saveState()

        // The same bytes in another file: the destination of a migration.
        let copy = TestImage(size: 1 << 20)
        _ = copy.contents
        _ = FileManager.default.createFile(atPath: copy.path, contents: Data(image.contents))
        let (target, _, _, _) = try makeDevice(copy)
        defer { target.stop() }
        try target.restoreState(state)
        #expect(target.saveState() == state)

        let other = TestImage(size: 1 << 20, fill: 1)
        let (stranger, _, _, _) = try makeDevice(other)
        defer { stranger.stop() }
        #expect { try stranger.checkState(state) } throws: { "\($0)".contains("does not hold the sender's disk") }
        #expect { try stranger.checkState(Array(state.dropLast())) } throws: { "\($0)".contains("malformed virtio-blk state") }
    }

    /// A request made available while the machine pauses is not lost: it travels in guest memory with the queue's
    /// positions, and the destination's device takes it once it resumes.
    @Test func aRequestInFlightAtThePauseIsReissuedOnTheDestination() throws {
        let image = TestImage(size: 1 << 20)
        let (device, memory, _, _) = try makeDevice(image)
        defer { device.stop() }
        var driver = VirtioTestDriver(device: device, memory: memory, base: 0xd000_0000)
        let initialised = driver.initialise(accepting: Self.wanted)
        #expect(initialised)
        device.pause()
        // The guest's last act before the pause: a write, notified, that the paused device does not take.
        let header = VirtioTestDriver.buffers
        memory.store(UInt32(1), at: header)
        memory.store(UInt64(40), at: header + 8)
        memory.fill(at: header + 0x1000, with: [UInt8](repeating: 0x77, count: 4096))
        let head = driver.descriptor(header, 16, writable: false, next: true)
        _ = driver.descriptor(header + 0x1000, 4096, writable: false, next: true)
        _ = driver.descriptor(header + 0x800, 1, writable: true, next: false)
        driver.submit(head: head)
        usleep(100_000)
        #expect(memory.load(UInt16.self, at: VirtioTestDriver.deviceArea + 2) == 0, "a paused device takes nothing")
        let state = device.saveState()

        // The destination: the same guest memory (it migrated) and a copy of the image.
        let copy = TestImage(size: 1 << 20)
        _ = FileManager.default.createFile(atPath: copy.path, contents: Data(image.contents))
        let disk = try DiskImage(DiskConfig(name: "vda", size: 1 << 20, serial: Self.serial, path: copy.path))
        let line = TestLine()
        struct NoPacing: Pacer { func sleep(nanoseconds: UInt64) {} }
        let console = FileManager.default.temporaryDirectory.appendingPathComponent("console-\(UUID().uuidString)").path
        defer { unlink(console) }
        let context = DeviceContext(
            memory: memory, vcpuCount: 1, console: try ConsoleLog(path: console),
            interruptLine: { _ in line }, pacer: NoPacing(), disks: ["vda": disk])
        let target = try VirtioBlock(
            config: VirtioBlock.configuration(disk: disk.config, mmio: 0xd000_0000, irq: 5), context: context)
        defer { target.stop() }
        try target.restoreState(state)
        target.resume()
        var destination = VirtioTestDriver(device: target, memory: memory, base: 0xd000_0000)
        let used = destination.waitUsed()
        #expect(used?.0 == head)
        #expect(memory.load(UInt8.self, at: header + 0x800) == 0)
        #expect(Array(copy.contents[20480..<24576]) == [UInt8](repeating: 0x77, count: 4096))
        #expect(image.contents[20480] == 0, "the source's image never saw it")
        #expect(line.high)
    }
}
