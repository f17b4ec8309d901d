import Devices
import Foundation
import MachineDescription
import Testing

/// The 16550 as the Linux 8250 driver probes and drives it.
struct UARTTests {
    func makeUART() throws -> (UART16550, TestLine, String) {
        let line = TestLine()
        let console = FileManager.default.temporaryDirectory.appendingPathComponent("uart-\(UUID().uuidString)").path
        struct NoPacing: Pacer { func sleep(nanoseconds: UInt64) {} }
        let context = DeviceContext(
            memory: TestMemory(), vcpuCount: 1, console: try ConsoleLog(path: console),
            interruptLine: { _ in line }, pacer: NoPacing())
        return (try UART16550(config: UART16550.com1(), context: context), line, console)
    }

    func read(_ uart: UART16550, _ offset: UInt64) -> UInt8 {
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { uart.read(IOAccess(region: 0, offset: offset, vcpu: 0), into: $0) }
        return byte
    }

    func write(_ uart: UART16550, _ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { uart.write(IOAccess(region: 0, offset: offset, vcpu: 0), from: $0) }
    }

    @Test func loopbackMirrorsTheModemLinesAndTheData() throws {
        let (uart, _, console) = try makeUART()
        defer { unlink(console) }
        write(uart, 4, 0x1a)  // LOOP | OUT2 | RTS: what the 8250 driver's probe writes
        #expect(read(uart, 6) & 0xf0 == 0x90, "CTS and DCD, as the probe expects")
        write(uart, 4, 0x1f)
        #expect(read(uart, 6) & 0xf0 == 0xf0)
        write(uart, 0, 0x41)
        #expect(read(uart, 5) & 1 == 1, "the byte came back")
        #expect(read(uart, 0) == 0x41)
        write(uart, 4, 0x0b)  // out of loopback: DTR | RTS | OUT2
        #expect(read(uart, 6) == 0xb0)
    }

    @Test func theTransmitterEmptyInterruptFollowsThe16550() throws {
        let (uart, line, console) = try makeUART()
        defer { unlink(console) }
        #expect(!line.high)
        write(uart, 1, 0x02)  // ETBEI: THR is empty, so the interrupt is pending at once
        #expect(line.high)
        #expect(read(uart, 2) & 0x0f == 0x02, "IIR reports THRE")
        #expect(!line.high, "reading IIR cleared it")
        #expect(read(uart, 2) & 0x0f == 0x01, "nothing pending")
        write(uart, 0, 0x0a)  // a byte sent: THR empty again
        #expect(line.high)
        write(uart, 1, 0x03)  // receive interrupts too; data has priority over THRE
        try uart.receive([0x61])
        #expect(read(uart, 2) & 0x0f == 0x04)
        #expect(read(uart, 0) == 0x61)
        #expect(read(uart, 2) & 0x0f == 0x02)
        write(uart, 1, 0)
        #expect(!line.high)
        #expect(read(uart, 5) & 0x60 == 0x60, "THRE and TEMT")
    }
}
