import MachineDescription
import Migration
import Synchronization
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
    private let finished = Mutex(false)
    /// Sparse stand-ins for the disks that travel, in a folder of their own: they hold only the blocks a disk's
    /// fingerprint samples, which is all a check of its state reads. Their names go as soon as vmrun has opened
    /// them, so that nothing is left even if this process is killed; the open files live on until `finish`.
    private var shadowFolder: String?
    private var shadows: [Int: FileDescriptor] = [:]

    public init(name: String, vmrun: String) throws {
        child = try ChildProcess.spawn(vmrun, arguments: ["--check", name])
        close(child.errors)
    }

    deinit { finish() }

    public func checkConfiguration(_ config: MachineConfig) throws {
        var checked = config
        defer { removeShadowNames() }
        for index in config.disks.indices where !config.disks[index].sharedStorage {
            checked.disks[index].path = try shadow(index, size: config.disks[index].size)
        }
        try ask(try MachineConfigJSON.encode(checked))
    }

    private func removeShadowNames() {
        guard let shadowFolder else { return }
        for index in shadows.keys { unlink("\(shadowFolder)/disk\(index).img") }
        rmdir(shadowFolder)
        self.shadowFolder = nil
    }

    public func checkState(_ state: MachineState, diskSamples: [Int: [UInt64: [UInt8]]]) throws {
        for (disk, blocks) in diskSamples {
            guard let file = shadows[disk] else { continue }
            for (block, bytes) in blocks {
                try file.writeAll(toAbsoluteOffset: Int64(block) * Int64(DiskConfig.blockSize), bytes)
            }
        }
        try ask(try StateEncoding.encode(state))
    }

    /// Closes the child's input, waits for it to exit, and removes the stand-in disks.
    /// Once, whichever thread comes first (the receive, or an interrupt); a second call waits for the first.
    public func finish() {
        finished.withLock { finished in
            guard !finished else { return }
            finished = true
            close(child.input)
            close(child.output)
            _ = ChildProcess.wait(child.pid)
            for file in shadows.values { try? file.close() }
            removeShadowNames()
        }
    }

    /// A sparse image of `size` bytes for disk `index`, in a private folder under the system's temporary one.
    private func shadow(_ index: Int, size: UInt64) throws -> String {
        if shadowFolder == nil {
            var template = Array("/tmp/vmrecv-check-XXXXXX".utf8CString)
            guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
                throw MigrationError("cannot make a folder for the dry run's disks", errno: errno)
            }
            shadowFolder = String(cString: made)
        }
        let path = "\(shadowFolder!)/disk\(index).img"
        let file = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusiveCreate], permissions: .ownerReadWrite)
        shadows[index] = file
        guard ftruncate(file.rawValue, off_t(size)) == 0 else { throw MigrationError("cannot size \(path)", errno: errno) }
        return path
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
