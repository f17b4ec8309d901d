import Devices
import Foundation
import Glibc
import MachineDescription
import Synchronization
import SystemSupport
import Testing

@testable import VMM

/// A device as small as a device gets: eight scratch bytes at a port, carried in its state chunk.
final class ScratchDevice: Device {
    static let kind = "scratch"
    static let stateVersion: UInt32 = 1
    static let settingKeys: Set<String> = ["port"]
    let name: String
    let regions: [IORegion]
    private let bytes = Mutex([UInt8](repeating: 0, count: 8))

    init(config: DeviceConfig, context: DeviceContext) throws {
        name = config.name
        regions = [IORegion(.port, base: try config.number("port"), length: 8)]
    }

    static func configuration(port: UInt64 = 0x510) -> DeviceConfig {
        DeviceConfig(name: "scratch0", kind: kind, version: stateVersion, configuration: ["port": "0x" + String(port, radix: 16)])
    }

    func read(_ access: IOAccess, into data: UnsafeMutableRawBufferPointer) {
        data[0] = bytes.withLock { $0[Int(access.offset)] }
    }
    func write(_ access: IOAccess, from data: UnsafeRawBufferPointer) { bytes.withLock { $0[Int(access.offset)] = data[0] } }
    func saveState() -> [UInt8] { bytes.withLock { $0 } }
    func checkState(_ state: [UInt8]) throws {
        guard state.count == 8 else { throw DeviceError(name, "state is \(state.count) bytes, expected 8") }
    }
    func restoreState(_ state: [UInt8]) throws {
        try checkState(state)
        bytes.withLock { $0 = state }
    }
}

struct DeviceBusTests {
    @Test func theBusDispatchesByAddressAndRefusesOverlaps() throws {
        let scratch = Scratch()
        let context = try testContext(scratch)
        let device = try ScratchDevice(config: ScratchDevice.configuration(), context: context)
        let notes = Mutex<[String]>([])
        let bus = try IOBus(devices: [device]) { line in notes.withLock { $0.append(line) } }
        [UInt8(42)].withUnsafeBytes { bus.write(.port, address: 0x513, vcpu: 0, from: $0) }
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { bus.read(.port, address: 0x513, vcpu: 0, into: $0) }
        #expect(byte == 42)
        #expect(device.saveState()[3] == 42)

        // Nobody answers at 0x520 or in MMIO: reads are all ones, and each address is noted once.
        var word: UInt32 = 0
        for _ in 0..<3 { withUnsafeMutableBytes(of: &word) { bus.read(.mmio, address: 0xd000_0000, vcpu: 0, into: $0) } }
        #expect(word == 0xffff_ffff)
        withUnsafeMutableBytes(of: &byte) { bus.read(.port, address: 0x520, vcpu: 0, into: $0) }
        #expect(byte == 0xff)
        #expect(
            notes.withLock { $0 } == [
                "no device answers mmio read at 0xd0000000; treated as open bus",
                "no device answers port read at 0x520; treated as open bus",
            ])

        let other = try ScratchDevice(config: ScratchDevice.configuration(port: 0x514), context: context)
        #expect { try IOBus(devices: [device, other]) { _ in } } throws: { "\($0)".contains("overlaps device scratch0") }
    }

    private func testContext(_ scratch: Scratch) throws -> DeviceContext {
        struct NoMemory: GuestMemoryAccess {
            func pointer(guestPhysical address: UInt64, length: Int) -> UnsafeMutableRawPointer? { nil }
            func noteWritten(guestPhysical address: UInt64, length: Int) {}
        }
        struct NoLine: InterruptLine { func set(_ high: Bool) {} }
        struct NoPacing: Pacer { func sleep(nanoseconds: UInt64) {} }
        return DeviceContext(
            memory: NoMemory(), vcpuCount: 1, console: try ConsoleLog(path: scratch.file("console")),
            interruptLine: { _ in NoLine() }, pacer: NoPacing())
    }
}

@Suite(.serialized, .enabled(if: kvmUnavailable == nil, "needs /dev/kvm"))
struct DeviceMachineTests {
    /// A new device is one conformance plus a catalog entry; its state travels with the machine's.
    @Test func aDeviceAddedThroughTheBusMigratesItsState() throws {
        let scratch = Scratch()
        let catalog = DeviceCatalog.standard.adding(ScratchDevice.self)
        let source = try KVMMachine.boot(
            name: "with-scratch", vcpus: 1, memorySize: 32 << 20,
            options: MachineOptions(consoleLog: scratch.file("source"), guestWorkingSet: 4 << 20),
            extraDevices: [ScratchDevice.configuration()], catalog: catalog)
        defer { source.destroy() }
        for (offset, value) in [UInt8](arrayLiteral: 7, 9, 11).enumerated() {
            [value].withUnsafeBytes { source.bus.write(.port, address: 0x510 + UInt64(offset), vcpu: 0, from: $0) }
        }
        try source.pause()
        let state = try source.saveState()
        #expect(state.devices.map(\.name) == ["uart0", "status0", "scratch0"])
        #expect(state.devices.last?.data == [7, 9, 11, 0, 0, 0, 0, 0])

        #expect {
            try KVMMachine.incoming(config: source.config, options: MachineOptions(consoleLog: scratch.file("refused")))
        } throws: { "\($0)".contains("this host cannot run VM 'with-scratch': device 'scratch0': unknown kind 'scratch'") }
        let target = try KVMMachine.incoming(
            config: source.config, options: MachineOptions(consoleLog: scratch.file("target")),
            catalog: catalog)
        defer { target.destroy() }
        copyMemory(from: source, to: target)
        var broken = state
        broken.devices[2].data = [1, 2, 3]
        #expect { try target.restoreState(broken) } throws: {
            "\($0)" == "this host cannot run VM 'with-scratch': device 'scratch0': state is 3 bytes, expected 8"
        }
        #expect(target.status().state == .incoming)  // a refused chunk restores nothing
        try target.restoreState(state)
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { target.bus.read(.port, address: 0x511, vcpu: 0, into: $0) }
        #expect(byte == 9)
        try target.resume()
        #expect(eventually { target.status().vcpus[0].checksPassed > 0 })
    }

    /// A guest that reads and writes an address no device claims keeps running: open bus, noted once.
    @Test func anUnclaimedMMIOAccessDoesNotKillTheGuest() throws {
        let scratch = Scratch()
        let machine = try KVMMachine.boot(
            name: "mmio", vcpus: 1, memorySize: 32 << 20,
            options: MachineOptions(
                startPaused: true, consoleLog: scratch.file("console"),
                guestWorkingSet: 4 << 20))
        defer { machine.destroy() }
        // In place of the bundled guest: loop { rax = [0x30000000]; [0x30000008] = rax; [0x3f0000] = rax; [0x3f0008] += 1 }.
        // 0x30000000 is inside the guest's identity-mapped first GiB but beyond its 32 MiB of RAM: an MMIO exit.
        let code: [UInt8] = [
            0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x30,
            0x48, 0x89, 0x04, 0x25, 0x08, 0x00, 0x00, 0x30,
            0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0x3f, 0x00,
            0x48, 0xff, 0x04, 0x25, 0x08, 0x00, 0x3f, 0x00,
            0xeb, 0xde,
        ]
        #expect(
            code.withUnsafeBytes { pwrite(machine.memoryFile, $0.baseAddress, $0.count, off_t(GuestLayout.codeBase)) }
                == code.count)
        try machine.resume()
        func loops() -> UInt64 {
            readMemory(machine, offset: 0x3f0008, length: 8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        }
        #expect(eventually { loops() > 1000 })
        #expect(machine.failure == nil)
        #expect(readMemory(machine, offset: 0x3f0000, length: 8) == [UInt8](repeating: 0xff, count: 8))
        try machine.pause()
        let console = scratch.read("console")
        #expect(console.components(separatedBy: "no device answers mmio read at 0x30000000").count == 2, "\(console)")
        #expect(console.contains("no device answers mmio write at 0x30000008"))
    }
}
