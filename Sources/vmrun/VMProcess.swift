import Glibc
import MachineDescription
import Synchronization
import SystemSupport
import ToolSupport
import VMControl
import VMM

/// The process that owns the VM: claims the name, creates the machine, serves the control
/// socket until the machine is destroyed, and reports readiness to a waiting parent.
struct VMProcess {
    let plan: MachinePlan
    /// Where a background parent waits for "ready" or a one-line error; nil in the foreground.
    let readyFd: Int32?

    func run() throws -> Int32 {
        do {
            let server = try start()
            report("ready")
            if readyFd == nil {
                StandardStreams.error(
                    "vmrun: '\(plan.name)' is \(plan.incomingConfig == nil ? "running" : "waiting for its state") (pid \(getpid())); console: \(plan.runDirectory.consoleLogPath(for: plan.name))"
                )
            }
            return finish(server.serve())
        } catch {
            report("\(error)")
            throw error
        }
    }

    private func start() throws -> ControlServer {
        if readyFd != nil {
            // A daemon holds no directory and no terminal.
            _ = chdir("/")
            let null = open("/dev/null", O_RDWR)
            if null >= 0 {
                dup2(null, 0)
                close(null)
            }
        }
        signal(SIGPIPE, SIG_IGN)
        try Self.checkKVMDevice()
        let socket = try ControlSocket.claim(name: plan.name, runDirectory: plan.runDirectory)
        // The name is ours now: so are NAME.log and NAME.console, started afresh (never another machine's lines).
        let logPath = plan.runDirectory.processLogPath(for: plan.name)
        let files = [plan.options.consoleLog] + (readyFd == nil ? [] : [logPath])
        if readyFd != nil {
            let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
            if log >= 0 {
                dup2(log, 1)
                dup2(log, 2)
                close(log)
            }
        }
        let machine: KVMMachine
        do {
            if let config = plan.incomingConfig {
                // Worded whole by the machine: `this host cannot run VM 'NAME': why`.
                machine = try KVMMachine.incoming(config: config, options: plan.options)
            } else {
                do {
                    machine = try KVMMachine.boot(
                        name: plan.name, vcpus: plan.cpus, memorySize: plan.memorySize, options: plan.options)
                } catch {
                    throw ControlError("cannot create the VM '\(plan.name)': \(error)")
                }
            }
        } catch {
            for path in files { unlink(path) }
            socket.release()
            throw error
        }
        let server = try ControlServer(socket: socket, machine: machine, ownedFiles: files)
        installStopSignals(writingTo: server.stopDescriptor)
        return server
    }

    private func finish(_ outcome: ControlServer.Outcome) -> Int32 {
        switch outcome {
        case .destroyed, .stopped:
            return 0
        case .ownerLeft:
            StandardStreams.error("vmrun: the receiver of '\(plan.name)' disconnected before resuming it; the VM was destroyed")
            return 1
        case .ownerNeverCame:
            StandardStreams.error("vmrun: nobody claimed the incoming VM '\(plan.name)' in time; the VM was destroyed")
            return 1
        }
    }

    static func checkKVMDevice() throws {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let error = errno
            if error == EACCES, let missing = FileAccess.missingPermission("/dev/kvm", wanted: R_OK | W_OK) {
                throw ControlError(
                    "cannot open /dev/kvm: permission denied: \(missing); run it as root or as a user with that permission")
            }
            throw ControlError(
                "cannot open /dev/kvm: \(String(cString: strerror(error))); this host cannot run VMs (is the kvm module loaded?)")
        }
        close(fd)
    }

    /// Tells the waiting parent how the start went, once.
    private func report(_ line: String) {
        guard let readyFd else { return }
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(readyFd, $0.baseAddress, $0.count) }
        close(readyFd)
    }
}

/// The stop pipe of the running server, for the signal handler.
private let stopWriteEnd = Atomic<Int32>(-1)

/// SIGTERM and SIGINT end the server, which destroys the machine and removes the socket.
private func installStopSignals(writingTo descriptor: Int32) {
    stopWriteEnd.store(descriptor, ordering: .sequentiallyConsistent)
    let handler: @convention(c) (Int32) -> Void = { _ in
        var byte: UInt8 = 1
        _ = write(stopWriteEnd.load(ordering: .relaxed), &byte, 1)
    }
    signal(SIGTERM, handler)
    signal(SIGINT, handler)
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGTERM)
    sigaddset(&signals, SIGINT)
    pthread_sigmask(SIG_UNBLOCK, &signals, nil)
}
