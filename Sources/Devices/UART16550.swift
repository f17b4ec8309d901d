import DequeModule
import MachineDescription
import Synchronization
import SystemSupport

/// A 16550 UART: registers, a receive FIFO, and its interrupt line. Configuration: `port` (base, e.g. 0x3f8) and
/// `irq` (e.g. 4).
///
/// Transmit is instant (THR always empty); output is appended to the console log, a line at a time. Interrupts
/// follow the 16550: received data, then the transmitter-empty interrupt, which a THR write or an IIR read that
/// reports it clears and enabling it (or the next instant transmit) raises. In loopback (MCR bit 4) transmitted
/// bytes come back as received ones and the modem status lines mirror the modem control outputs, as the Linux 8250
/// driver's probe expects.
/// Its state chunk carries the registers and the unread receive bytes, so console input the guest has not read
/// yet survives a migration.
public final class UART16550: Device {
    public static let kind = "uart16550"
    public static let stateVersion: UInt32 = 1
    public static let settingKeys: Set<String> = ["port", "irq"]
    /// More than a real 16550's 16 bytes: console input arrives in bursts and the guest polls.
    public static let receiveCapacity = 4096

    private struct Registers {
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0
        var modemControl: UInt8 = 0
        var scratch: UInt8 = 0
        var divisorLow: UInt8 = 1
        var divisorHigh: UInt8 = 0
        var fifoControl: UInt8 = 0
        var transmitInterruptPending = false
        var receive = Deque<UInt8>()
        var lineHigh = false
        var output: [UInt8] = []
    }

    public let name: String
    public let regions: [IORegion]
    private let registers = Mutex(Registers())
    private let console: ConsoleLog
    private let line: any InterruptLine

    public init(config: DeviceConfig, context: DeviceContext) throws {
        name = config.name
        let port = try config.number("port", in: 0...0xfff8)
        let irq = try config.number("irq", in: 0...23)
        regions = [IORegion(.port, base: port, length: 8)]
        line = try context.interruptLine(UInt32(irq))
        console = context.console
    }

    /// The configuration of the standard PC serial port COM1.
    public static func com1(name: String = "uart0") -> DeviceConfig {
        DeviceConfig(name: name, kind: kind, version: stateVersion, configuration: ["port": "0x3f8", "irq": "4"])
    }

    public func read(_ access: IOAccess, into data: UnsafeMutableRawBufferPointer) {
        let value = registers.withLock { r in
            defer { updateLine(&r) }
            return readRegister(UInt16(access.offset), &r)
        }
        data.initializeMemory(as: UInt8.self, repeating: 0)
        data[0] = value
    }

    public func write(_ access: IOAccess, from data: UnsafeRawBufferPointer) {
        registers.withLock { r in
            writeRegister(UInt16(access.offset), data[0], &r)
            updateLine(&r)
        }
    }

    private func readRegister(_ offset: UInt16, _ r: inout Registers) -> UInt8 {
        let dlab = r.lineControl & 0x80 != 0
        switch offset {
        case 0 where dlab: return r.divisorLow
        case 0: return r.receive.popFirst() ?? 0
        case 1: return dlab ? r.divisorHigh : r.interruptEnable
        case 2:
            let fifo: UInt8 = r.fifoControl & 1 != 0 ? 0xc0 : 0
            if r.interruptEnable & 0x01 != 0 && !r.receive.isEmpty { return fifo | 0x04 }
            if r.interruptEnable & 0x02 != 0 && r.transmitInterruptPending {
                r.transmitInterruptPending = false
                return fifo | 0x02
            }
            return fifo | 0x01
        case 3: return r.lineControl
        case 4: return r.modemControl
        case 5: return 0x60 | (r.receive.isEmpty ? 0 : 0x01)  // THR empty, transmitter empty, data ready
        case 6:
            // Loopback: CTS <- RTS, DSR <- DTR, RI <- OUT1, DCD <- OUT2. Otherwise DCD, DSR, CTS.
            guard r.modemControl & 0x10 != 0 else { return 0xb0 }
            let m = r.modemControl
            return (m & 0x02) << 3 | (m & 0x01) << 5 | (m & 0x04) << 4 | (m & 0x08) << 4
        case 7: return r.scratch
        default: return 0
        }
    }

    private func writeRegister(_ offset: UInt16, _ value: UInt8, _ r: inout Registers) {
        let dlab = r.lineControl & 0x80 != 0
        switch offset {
        case 0 where dlab: r.divisorLow = value
        case 0:
            if r.modemControl & 0x10 != 0 {
                if r.receive.count < Self.receiveCapacity { r.receive.append(value) }
            } else {
                r.output.append(value)
                if value == 10 || r.output.count >= 512 { flush(&r) }
            }
            r.transmitInterruptPending = true
        case 1:
            if dlab {
                r.divisorHigh = value
            } else {
                // Enabling the transmitter-empty interrupt with THR empty (always) raises it at once.
                if value & 0x02 != 0 && r.interruptEnable & 0x02 == 0 { r.transmitInterruptPending = true }
                r.interruptEnable = value & 0x0f
            }
        case 2:
            if value & 0x02 != 0 { r.receive.removeAll() }
            r.fifoControl = value & 0xc9
        case 3: r.lineControl = value
        case 4: r.modemControl = value & 0x1f
        case 7: r.scratch = value
        default: break
        }
    }

    /// Queues console input for the guest; refuses what would overflow the receive buffer.
    public func receive(_ bytes: [UInt8]) throws {
        try registers.withLock { r in
            guard r.receive.count + bytes.count <= Self.receiveCapacity else {
                throw DeviceError(name, "console input: the receive buffer is full (\(Self.receiveCapacity) bytes unread)")
            }
            r.receive.append(contentsOf: bytes)
            updateLine(&r)
        }
    }

    /// Writes buffered output to the console log.
    public func flush() { registers.withLock { flush(&$0) } }

    public func pause() { flush() }

    private func flush(_ r: inout Registers) {
        console.append(r.output)
        r.output.removeAll(keepingCapacity: true)
    }

    private func updateLine(_ r: inout Registers) {
        let high =
            (r.interruptEnable & 0x01 != 0 && !r.receive.isEmpty)
            || (r.interruptEnable & 0x02 != 0 && r.transmitInterruptPending)
        if high != r.lineHigh {
            r.lineHigh = high
            line.set(high)
        }
    }

    /// Version 1: IER, LCR, MCR, SCR, DLL, DLM, FCR, THRE-pending, line level (one byte each),
    /// receive count (u32 little-endian), the unread receive bytes.
    public func saveState() -> [UInt8] {
        registers.withLock { r in
            var out = ByteWriter(capacity: 13 + r.receive.count)
            out.raw([r.interruptEnable, r.lineControl, r.modemControl, r.scratch, r.divisorLow, r.divisorHigh, r.fifoControl])
            out.bool(r.transmitInterruptPending)
            out.bool(r.lineHigh)
            out.u32(UInt32(r.receive.count))
            out.raw(r.receive)
            return out.bytes
        }
    }

    private struct SavedState {
        var head: [UInt8]
        var transmitPending: Bool
        var receive: [UInt8]
    }

    private func decode(_ bytes: [UInt8]) throws -> SavedState {
        var reader = ByteReader(bytes)
        guard let head = reader.raw(7), let transmitPending = reader.bool(), reader.bool() != nil, let count = reader.u32(),
            count <= Self.receiveCapacity, let receive = reader.raw(Int(count)), reader.atEnd
        else {
            throw DeviceError(
                name, "malformed state (\(bytes.count) bytes; expected 13 plus at most \(Self.receiveCapacity) unread bytes)")
        }
        return SavedState(head: head, transmitPending: transmitPending, receive: receive)
    }

    public func checkState(_ bytes: [UInt8]) throws { _ = try decode(bytes) }

    public func restoreState(_ bytes: [UInt8]) throws {
        let saved = try decode(bytes)
        registers.withLock { r in
            r.interruptEnable = saved.head[0] & 0x0f
            r.lineControl = saved.head[1]
            r.modemControl = saved.head[2] & 0x1f
            r.scratch = saved.head[3]
            r.divisorLow = saved.head[4]
            r.divisorHigh = saved.head[5]
            r.fifoControl = saved.head[6]
            r.transmitInterruptPending = saved.transmitPending
            r.receive = Deque(saved.receive)
            r.lineHigh = false
            updateLine(&r)
        }
    }
}
