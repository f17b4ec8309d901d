import Glibc
import MachineDescription
import Synchronization
import SystemSupport
import VMControl

/// The control socket a vmrun holds for its machine's name. Claiming it is what makes the name
/// taken: a second claim fails while the first process lives; a socket left by a dead process
/// is removed and taken over.
public final class ControlSocket: Sendable {
    public let name: String
    public let path: String
    let listeningDescriptor: Int32
    private let released = Atomic<Bool>(false)

    private init(name: String, path: String, descriptor: Int32) {
        self.name = name
        self.path = path
        self.listeningDescriptor = descriptor
    }

    /// Binds `<run dir>/NAME.sock` (creating the run directory), or says who holds the name.
    public static func claim(name: String, runDirectory: RunDirectory) throws -> ControlSocket {
        try MachineName.validate(name)
        try runDirectory.create()
        let path = runDirectory.socketPath(for: name)
        for _ in 0..<3 {
            do {
                return ControlSocket(name: name, path: path, descriptor: try UnixSocket.listen(path: path))
            } catch let error as ControlError where error.code == .addressInUse {
                try refuseIfAnswering(name: name, path: path)
                // Nobody answers: the vmrun that made this socket is gone.
                unlink(path)
            }
        }
        throw ControlError("cannot claim \(path): it keeps reappearing; is another vmrun starting with the name '\(name)'?")
    }

    /// Closes the socket and removes it from the run directory. Idempotent.
    public func release() {
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        unlink(path)
        close(listeningDescriptor)
    }

    deinit { release() }

    private static func refuseIfAnswering(name: String, path: String) throws {
        let probe: MessageSocket
        do {
            probe = try UnixSocket.connect(path: path)
        } catch let error as ControlError where error.code == .connectionRefused || error.code == .noSuchFileOrDirectory {
            return
        }
        probe.setReceiveTimeout(seconds: 5)
        let owner = try? ControlClient.handshake(socket: probe, ownIncoming: false)
        let who = owner.map { "\($0.initialState.rawValue), pid \($0.pid)" } ?? "its socket at \(path) answers"
        owner?.close()
        throw ControlError("a VM named '\(name)' already exists (\(who))")
    }
}
