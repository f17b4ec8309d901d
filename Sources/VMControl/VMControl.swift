import MachineDescription
import SystemPackage

/// Where machines' sockets and console logs live: `--run-dir`, else `$VMSEND_RUN_DIR`,
/// else `/run/vmsend` for root and `$XDG_RUNTIME_DIR/vmsend` (or `/tmp/vmsend-UID`) otherwise.
public struct RunDirectory: Sendable {
    public var path: String
    public init(path: String) { self.path = path }
    /// Resolves the run directory from a command-line flag and the environment.
    public static func resolve(flag: String?) -> RunDirectory { fatalError("control work") }
    public func socketPath(for name: String) -> String { path + "/" + name + ".sock" }
    public func consoleLogPath(for name: String) -> String { path + "/" + name + ".console" }
}

/// A connection to one vmrun's control socket. (Interface fixed; body lands with the control work.)
public final class ControlClient {
    /// Connects and checks the protocol version. Throws a clear error for an unknown VM.
    public static func connect(name: String, runDirectory: RunDirectory) throws -> ControlClient { fatalError() }
    public func status() throws -> MachineStatus { fatalError() }
    public func describe() throws -> (config: MachineConfig, host: HostSpec) { fatalError() }
    public func pause() throws {}
    public func resume() throws {}
    public func destroy() throws {}
    /// The machine's memfd, received over SCM_RIGHTS; the caller owns and closes it.
    public func memoryFile() throws -> FileDescriptor { fatalError() }
    public func dirtyLogStart() throws {}
    /// One bit per page of the segment, fetched and cleared in the VM.
    public func dirtyLogFetch(segment: Int) throws -> [UInt64] { fatalError() }
    public func dirtyLogStop() throws {}
    public func saveState() throws -> MachineState { fatalError() }
    public func restoreState(_ state: MachineState) throws {}
    public func consoleInput(_ bytes: [UInt8]) throws {}
    public func close() {}
}
