import Glibc
import MachineDescription
import SystemPackage
import SystemSupport
import VMControl
import VMM

/// `vmrun --check NAME`, for `vmrecv -n`: the checks of a receive without a machine that anyone could see.
///
/// Reads frames from standard input, each a u32 little-endian length and that many bytes: first the received
/// `MachineConfig` as JSON, then its `MachineState` as `StateEncoding`. Answers each with one line on standard
/// output, `ok` or `refused: REASON`. The machine is created exactly as `--incoming` creates it (KVM VM, vCPUs that
/// never run, memory that is never touched) but claims no name and writes no file; the state is checked exactly as
/// a restore checks it, and nothing is restored. At end of input the machine is destroyed and vmrun exits 0.
struct IncomingCheckMode {
    let name: String

    func run() throws -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        guard let configJSON = try readFrame(limit: MachinePlan.maximumConfigLength) else { return 0 }
        let machine: KVMMachine
        do {
            var config = try decodeMachineConfig(configJSON)
            config.name = name
            try MachinePlan.checkIncoming(config)
            try VMProcess.checkKVMDevice()
            machine = try KVMMachine.incoming(config: config, options: MachineOptions(consoleLog: "/dev/null"))
        } catch {
            answer("refused: \(error)")
            return 0
        }
        defer { machine.destroy() }
        answer("ok")
        while let frame = try readFrame(limit: ControlProtocol.maximumPayloadLength) {
            do {
                try machine.checkState(try StateEncoding.decode(frame))
                answer("ok")
            } catch {
                answer("refused: \(error)")
            }
        }
        return 0
    }

    /// One frame, or nil at end of input.
    private func readFrame(limit: Int) throws -> [UInt8]? {
        var header = [UInt8](repeating: 0, count: 4)
        let got = try header.withUnsafeMutableBytes { try readFully(into: $0) }
        if got == 0 { return nil }
        let length = header.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
        guard got == 4, length <= limit else { throw ControlError("--check: malformed input frame") }
        var frame = [UInt8](repeating: 0, count: length)
        guard try frame.withUnsafeMutableBytes({ try readFully(into: $0) }) == length else {
            throw ControlError("--check: input ended inside a frame")
        }
        return frame
    }

    private func readFully(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try transferAll([buffer], stopAtZero: true) { Glibc.readv(0, $0, $1) }
    }

    private func answer(_ line: String) {
        try? FileDescriptor.standardOutput.writeFully(
            Array((UntrustedText.escapeControls(line) + "\n").utf8), what: "standard output")
    }
}
