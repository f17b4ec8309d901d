import Glibc
import MachineDescription
import Synchronization
import VMControl

@testable import VMM

/// A machine that only records what the control server asks of it.
final class FakeMachine: ControlledMachine {
    struct Record {
        var state: RunState
        var destroyed = 0
        var dirtyLogging = false
        /// Whether the dirty log runs with manual clearing, and every clear asked for.
        var manualClear = false
        var clears: [DirtyLogClear] = []
        var throttle = 0
        var restored: MachineState?
        var console: [UInt8] = []
    }

    let config: MachineConfig
    let host = HostSpec(
        architecture: "x86_64", cpuVendor: "FakeVendor", cpuModel: "fake", pageSize: 4096,
        hypervisor: "fake", hypervisorVersion: "0")
    let memoryFile: Int32
    let saved = MachineState(
        kernel: [
            StateChunk(name: "vcpu0/regs", version: 1, data: Array(0..<144)), StateChunk(name: "vm/clock", version: 2, data: []),
        ],
        devices: [StateChunk(name: "uart0", version: 1, data: [0x3f, 0x8])])
    let record: Mutex<Record>
    /// Whether this machine's kernel could clear chosen pages (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
    let supportsManualClear: Bool

    struct DirtyLogClear: Equatable {
        var segment: Int
        var firstPage: UInt64
        var bitmap: [UInt64]
    }

    init(state: RunState = .running, memorySize: UInt64 = 1 << 20, supportsManualClear: Bool = true) {
        self.supportsManualClear = supportsManualClear
        config = MachineConfig(
            name: "fake", vcpuCount: 2, segments: MemorySegment.standardLayout(memorySize: memorySize),
            devices: [DeviceConfig(name: "uart0", kind: "uart16550", version: 1, configuration: ["port": "0x3f8"])],
            cpuid: [])
        var template = Array("/tmp/fake-memory-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        _ = ftruncate(fd, off_t(memorySize))
        memoryFile = fd
        record = Mutex(Record(state: state))
    }

    deinit { close(memoryFile) }

    func status() -> MachineStatus {
        let state = record.withLock { $0.state }
        return MachineStatus(
            name: config.name, state: state, memorySize: config.memorySize,
            vcpus: [VCPUStatus(tick: 7, checksPassed: 3, checksFailed: 0)], uptimeSeconds: 1.5, pid: getpid())
    }

    func pause() throws { record.withLock { $0.state = .paused } }
    func resume() throws { record.withLock { $0.state = .running } }
    func destroy() { record.withLock { $0.destroyed += 1 } }
    func dirtyLogStart(manualClear: Bool) throws -> Bool {
        record.withLock {
            $0.dirtyLogging = true
            $0.manualClear = manualClear && supportsManualClear
            return $0.manualClear
        }
    }
    func dirtyLogFetch(segment: Int) throws -> [UInt64] { [0x8000_0000_0000_0001, UInt64(segment)] }
    func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        try record.withLock {
            guard $0.manualClear else {
                throw MachineError("dirty logging was started without manual clearing: fetches clear the log")
            }
            $0.clears.append(DirtyLogClear(segment: segment, firstPage: firstPage, bitmap: bitmap))
        }
    }
    func dirtyLogStop() throws { record.withLock { $0.dirtyLogging = false } }
    func setThrottle(percent: Int) throws { record.withLock { $0.throttle = percent } }
    func saveState() throws -> MachineState { saved }
    func restoreState(_ state: MachineState) throws {
        record.withLock {
            $0.restored = state
            $0.state = .paused
        }
    }
    func consoleInput(_ bytes: [UInt8]) throws { record.withLock { $0.console += bytes } }
    func diskFile(_ disk: Int) throws -> Int32 { throw MachineError("the fake machine has no disks") }
    func diskWrittenFetch(_ disk: Int) throws -> [UInt64] { throw MachineError("the fake machine has no disks") }
}

/// A fresh directory under /tmp, removed with everything in it.
struct TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/vmctl-test-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    var runDirectory: RunDirectory { RunDirectory(path: path) }

    func exists(_ file: String) -> Bool { access(path + "/" + file, F_OK) == 0 }

    func remove() {
        if let directory = opendir(path) {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(path + "/" + name) }
            }
            closedir(directory)
        }
        rmdir(path)
    }
}

/// A control server serving on its own thread, as vmrun runs it.
final class ServerThread: Sendable {
    let server: ControlServer
    let machine: FakeMachine
    private let outcome = Mutex<ControlServer.Outcome?>(nil)
    private let thread = Mutex<pthread_t?>(nil)

    init(
        name: String = "fake", directory: TemporaryDirectory, machine: FakeMachine = FakeMachine(),
        ownerTimeout: Duration = .seconds(30)
    ) throws {
        let socket = try ControlSocket.claim(name: name, runDirectory: directory.runDirectory)
        self.server = try ControlServer(socket: socket, machine: machine, ownerTimeout: ownerTimeout)
        self.machine = machine
        let context = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        pthread_create(
            &handle, nil,
            { context in
                let me = Unmanaged<ServerThread>.fromOpaque(context!).takeRetainedValue()
                let result = me.server.serve()
                me.outcome.withLock { $0 = result }
                return nil
            }, context)
        thread.withLock { $0 = handle }
    }

    /// Waits for `serve` to return, stopping it first unless it already ended on its own.
    func finish(stopping: Bool = true) -> ControlServer.Outcome? {
        if stopping { server.stop() }
        if let handle = thread.withLock({ value -> pthread_t? in
            defer { value = nil }
            return value
        }) {
            pthread_join(handle, nil)
        }
        return outcome.withLock { $0 }
    }
}

/// A fake machine served in a temporary run directory, and a raw socket to it: for tests of the wire itself.
final class RawConnection {
    let directory = TemporaryDirectory()
    let served: ServerThread
    let socket: MessageSocket

    init() throws {
        do {
            served = try ServerThread(directory: directory)
        } catch {
            directory.remove()
            throw error
        }
        do {
            socket = try UnixSocket.connect(path: directory.runDirectory.socketPath(for: "fake"))
        } catch {
            _ = served.finish()
            directory.remove()
            throw error
        }
    }

    func close() {
        socket.close()
        _ = served.finish()
        directory.remove()
    }
}
