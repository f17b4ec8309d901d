import Glibc
import MachineDescription
import Synchronization
import SystemSupport
import VMControl

/// Serves the control protocol (see `ControlProtocol`) for one machine on one thread, so the
/// machine sees every call from that thread. Returns when the machine is gone.
public final class ControlServer: Sendable {
    /// Why `serve` returned. In every case the machine has been destroyed and the socket removed.
    public enum Outcome: Sendable, Equatable {
        case destroyed
        /// `stop()` was called (vmrun: SIGTERM or SIGINT).
        case stopped
        /// The owner of the incoming machine disconnected before resuming it.
        case ownerLeft
        /// Nobody claimed the incoming machine in time.
        case ownerNeverCame
    }

    /// How long a client may take to send the rest of a message or read a reply.
    static let stallSeconds = 3

    private let socket: ControlSocket
    private let machine: any ControlledMachine
    private let ownerTimeout: Duration
    /// The machine's console and log: removed when it ends, or kept under another name if `destroy` asks so.
    private let ownedFiles: [String]
    private let wakeRead: Int32
    /// Writing a byte here ends `serve`; safe to do from a signal handler.
    public let stopDescriptor: Int32

    public init(
        socket: ControlSocket, machine: any ControlledMachine, ownerTimeout: Duration = .seconds(30), ownedFiles: [String] = []
    ) throws {
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else {
            throw ControlError("cannot create a pipe: \(String(cString: strerror(errno)))")
        }
        for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(pipeEnds[1], F_SETFL, O_NONBLOCK)
        self.socket = socket
        self.machine = machine
        self.ownerTimeout = ownerTimeout
        self.ownedFiles = ownedFiles
        self.wakeRead = pipeEnds[0]
        self.stopDescriptor = pipeEnds[1]
    }

    deinit {
        close(wakeRead)
        close(stopDescriptor)
    }

    /// Makes `serve` return `.stopped` soon.
    public func stop() {
        var byte: UInt8 = 1
        _ = write(stopDescriptor, &byte, 1)
    }

    /// Serves until the machine is destroyed, stopped or abandoned; then destroys it and removes the socket and its
    /// files: a machine that ended (or an incoming one that was never restored) leaves nothing in the run directory,
    /// and a new machine of the same name never inherits its console.
    public func serve() -> Outcome {
        var session = Session(machine: machine, name: socket.name, ownerDeadline: .now + ownerTimeout, ownedFiles: ownedFiles)
        let outcome = session.run(listening: socket.listeningDescriptor, wake: wakeRead, releaseSocket: socket.release)
        session.closeAll()
        machine.destroy()
        for path in ownedFiles { unlink(path) }
        socket.release()
        return outcome
    }
}
