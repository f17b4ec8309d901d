import Glibc
import Synchronization

/// A 16550 UART at a port base (0x3f8): registers, a receive FIFO, and its interrupt line.
///
/// Transmit is instant (THR always empty); output is appended to the console log, a line at a time.
/// Its state chunk (`encodeState`) carries the registers and the unread receive bytes, so console input the
/// guest has not read yet survives a migration.
final class UART16550: Sendable {
    static let kind = "uart16550"
    static let stateVersion: UInt32 = 1
    /// More than a real 16550's 16 bytes: console input arrives in bursts and the guest polls.
    static let receiveCapacity = 4096

    private struct Registers {
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0
        var modemControl: UInt8 = 0
        var scratch: UInt8 = 0
        var divisorLow: UInt8 = 1
        var divisorHigh: UInt8 = 0
        var fifoControl: UInt8 = 0
        var transmitInterruptPending = false
        var receive: [UInt8] = []
        var lineHigh = false
        var output: [UInt8] = []
    }

    private let registers = Mutex(Registers())
    private let consoleLog: Int32
    /// Drives the interrupt line (KVM_IRQ_LINE on the in-kernel irqchip).
    private let setLine: @Sendable (Bool) -> Void

    init(consoleLogPath: String, setLine: @escaping @Sendable (Bool) -> Void) throws {
        consoleLog = open(consoleLogPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard consoleLog >= 0 else {
            throw MachineError("console log \(consoleLogPath): \(String(cString: strerror(errno)))")
        }
        self.setLine = setLine
    }

    deinit { Glibc.close(consoleLog) }

    /// One port access at `offset` (0-7) from the base; returns the byte read.
    func access(offset: UInt16, isWrite: Bool, value: UInt8) -> UInt8 {
        registers.withLock { r in
            let dlab = r.lineControl & 0x80 != 0
            var result: UInt8 = 0
            switch (offset, isWrite) {
            case (0, false) where dlab: result = r.divisorLow
            case (0, true) where dlab: r.divisorLow = value
            case (0, false):
                if !r.receive.isEmpty { result = r.receive.removeFirst() }
            case (0, true):
                r.output.append(value)
                if value == 10 || r.output.count >= 512 { flush(&r) }
                r.transmitInterruptPending = true
            case (1, false): result = dlab ? r.divisorHigh : r.interruptEnable
            case (1, true):
                if dlab { r.divisorHigh = value } else {
                    r.interruptEnable = value & 0x0f
                    if value & 0x02 != 0 { r.transmitInterruptPending = true }
                }
            case (2, false):
                let fifo: UInt8 = r.fifoControl & 1 != 0 ? 0xc0 : 0
                if r.interruptEnable & 0x01 != 0 && !r.receive.isEmpty {
                    result = fifo | 0x04
                } else if r.interruptEnable & 0x02 != 0 && r.transmitInterruptPending {
                    result = fifo | 0x02
                    r.transmitInterruptPending = false
                } else {
                    result = fifo | 0x01
                }
            case (2, true):
                if value & 0x02 != 0 { r.receive.removeAll() }
                r.fifoControl = value & 0xc9
            case (3, false): result = r.lineControl
            case (3, true): r.lineControl = value
            case (4, false): result = r.modemControl
            case (4, true): r.modemControl = value & 0x1f
            case (5, false): result = 0x60 | (r.receive.isEmpty ? 0 : 0x01)   // THR empty, transmitter empty, data ready
            case (6, false): result = 0xb0                                      // DCD, DSR, CTS
            case (7, false): result = r.scratch
            case (7, true): r.scratch = value
            default: break
            }
            updateLine(&r)
            return result
        }
    }

    /// Queues console input for the guest; refuses what would overflow the receive buffer.
    func receive(_ bytes: [UInt8]) throws {
        try registers.withLock { r in
            guard r.receive.count + bytes.count <= Self.receiveCapacity else {
                throw MachineError("console input: the UART's receive buffer is full (\(Self.receiveCapacity) bytes unread)")
            }
            r.receive.append(contentsOf: bytes)
            updateLine(&r)
        }
    }

    /// Writes buffered output to the console log.
    func flush() { registers.withLock { flush(&$0) } }

    /// Appends a line of the VMM's own (e.g. that the guest crashed) to the console log.
    func logNote(_ text: String) {
        registers.withLock { r in
            flush(&r)
            r.output = Array(text.utf8)
            flush(&r)
        }
    }

    private func flush(_ r: inout Registers) {
        var written = 0
        while written < r.output.count {
            let result = r.output[written...].withUnsafeBytes { Glibc.write(consoleLog, $0.baseAddress, $0.count) }
            if result < 0 && errno == EINTR { continue }
            if result <= 0 { break }   // a full disk must not stop the guest; the bytes are dropped
            written += result
        }
        r.output.removeAll(keepingCapacity: true)
    }

    private func updateLine(_ r: inout Registers) {
        let high = (r.interruptEnable & 0x01 != 0 && !r.receive.isEmpty)
            || (r.interruptEnable & 0x02 != 0 && r.transmitInterruptPending)
        if high != r.lineHigh {
            r.lineHigh = high
            setLine(high)
        }
    }

    /// Version 1: IER, LCR, MCR, SCR, DLL, DLM, FCR, THRE-pending, line level (one byte each),
    /// receive count (u32 little-endian), the unread receive bytes.
    func encodeState() -> [UInt8] {
        registers.withLock { r in
            var bytes: [UInt8] = [r.interruptEnable, r.lineControl, r.modemControl, r.scratch, r.divisorLow, r.divisorHigh,
                                  r.fifoControl, r.transmitInterruptPending ? 1 : 0, r.lineHigh ? 1 : 0]
            withUnsafeBytes(of: UInt32(r.receive.count).littleEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: r.receive)
            return bytes
        }
    }

    /// Restores `encodeState` bytes and re-raises the interrupt line if it was asserted.
    func restoreState(_ bytes: [UInt8], version: UInt32) throws {
        guard version == Self.stateVersion else {
            throw MachineError("device uart0: state version \(version), this vmrun understands \(Self.stateVersion)")
        }
        guard bytes.count >= 13 else { throw MachineError("device uart0: state is \(bytes.count) bytes, too short") }
        let count = Int(UInt32(bytes[9]) | UInt32(bytes[10]) << 8 | UInt32(bytes[11]) << 16 | UInt32(bytes[12]) << 24)
        guard count <= Self.receiveCapacity, bytes.count == 13 + count else {
            throw MachineError("device uart0: malformed state (\(bytes.count) bytes, receive count \(count))")
        }
        registers.withLock { r in
            r.interruptEnable = bytes[0] & 0x0f
            r.lineControl = bytes[1]
            r.modemControl = bytes[2] & 0x1f
            r.scratch = bytes[3]
            r.divisorLow = bytes[4]
            r.divisorHigh = bytes[5]
            r.fifoControl = bytes[6]
            r.transmitInterruptPending = bytes[7] != 0
            r.receive = Array(bytes[13...])
            r.lineHigh = false
            updateLine(&r)
        }
    }
}
