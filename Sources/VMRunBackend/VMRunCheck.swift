import MachineDescription
import Migration
import SystemPackage
import SystemSupport
import VMControl

#if canImport(Glibc)
    import Glibc
#endif

/// `vmrecv -n`'s hypervisor side: a `vmrun --check NAME` process that creates the machine as `--incoming` would,
/// in itself only (no socket, no files, nothing runs), and checks the state as a restore would. The same code
/// answers as in a real receive, so the two refuse the same streams with the same words.
///
/// Talks over the child's stdin and stdout: frames (u32 LE length, bytes) in, one line per frame out, `ok` or
/// `refused: REASON`. The process ends when its stdin closes, so it never outlives this one.
public final class VMRunCheck: IncomingCheck {
    private let child: ChildProcess.Spawned
    private var finished = false

    public init(name: String, vmrun: String) throws {
        child = try ChildProcess.spawn(vmrun, arguments: ["--check", name])
        close(child.errors)
    }

    deinit { finish() }

    public func checkConfiguration(_ config: MachineConfig) throws {
        try ask(try MachineConfigJSON.encode(config))
    }

    public func checkState(_ state: MachineState) throws {
        try ask(try StateEncoding.encode(state))
    }

    /// Closes the child's input and waits for it to exit.
    public func finish() {
        guard !finished else { return }
        finished = true
        close(child.input)
        close(child.output)
        _ = ChildProcess.wait(child.pid)
    }

    private func ask(_ frame: [UInt8]) throws {
        var length = UInt32(frame.count).littleEndian
        let header = withUnsafeBytes(of: &length) { Array($0) }
        do {
            try FileDescriptor(rawValue: child.input).writeFully(header + frame, what: "vmrun --check's standard input")
        } catch {
            throw MigrationError("vmrun --check ended early: \(error)")
        }
        let answer = try readLine()
        if answer == "ok" { return }
        if answer.hasPrefix("refused: ") { throw MigrationError(String(answer.dropFirst(9))) }
        throw MigrationError("vmrun --check gave no answer\(answer.isEmpty ? "" : ": " + answer)")
    }

    /// One line of the child's output, at most 64 KiB.
    private func readLine() throws -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 65536 {
            let count = retryingInterrupts { read(child.output, &byte, 1) }
            if count <= 0 || byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }
}
