import ArgumentParser
import MachineDescription
import Migration
import SystemPackage
import ToolSupport
import VMControl
import VMRunBackend
import VMStream

#if canImport(Glibc)
    import Glibc
#endif

struct VMRecv: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmrecv",
        abstract: "Restore a virtual machine from a migration stream on standard input.",
        version: Release.versionLine(tool: "vmrecv"))

    @Flag(name: .long, help: "Leave the restored VM paused.")
    var paused = false

    @Flag(name: [.customShort("n"), .customLong("dry-run")], help: "Read and verify the whole stream; create nothing.")
    var dryRun = false

    @Flag(
        name: .shortAndLong,
        help: "Print each round, progress (a bar on a terminal) and a summary on stderr; with -n, what would be done.")
    var verbose = false

    @Flag(
        name: [.customShort("P"), .long],
        help: "Print a size line, rounds, progress and a summary as tab-separated lines on stderr.")
    var parsable = false

    @Option(name: .long, help: "Where VM sockets live (default: $VMSEND_RUN_DIR, else /run/vmsend for root; see vmrun(8)).")
    var runDir: String?

    @Option(
        name: .long, help: "Where the disks that travel in the stream are written, as NAME-vda.img (default: the run directory).")
    var diskDir: String?

    @Flag(name: [.customShort("F"), .customLong("force")], help: "Overwrite disk images that already exist.")
    var force = false

    @Flag(
        help:
            "Put the VM's memory on 2 MiB huge pages from this host's pool (/sys/kernel/mm/hugepages/hugepages-2048kB), as vmrun --hugepages."
    )
    var hugepages = false

    @Flag(
        name: [.customShort("s"), .customLong("resumable")],
        help: "Should the stream break, keep what verified as a partial receive that vmsend -t can continue.")
    var resumable = false

    @Flag(
        name: [.customShort("A"), .customLong("abort")],
        help: "Abort the partial receive NAME holds: its vmrun and the disk images it created go.")
    var abort = false

    @Argument(help: "The name the VM gets on this host.")
    var name: String

    func validate() throws {
        try asUsageError { try MachineName.validate(name) }
        if resumable && dryRun { throw ValidationError("-s keeps a partial receive; -n creates nothing") }
        if abort && (resumable || dryRun || paused || force || diskDir != nil || hugepages) {
            throw ValidationError("-A takes only the name (and --run-dir)")
        }
    }

    func run() throws {
        if abort {
            let partial = try IncomingMachine.abortPartial(name: name, runDirectory: RunDirectory.resolve(flag: runDir))
            StandardStreams.error(
                "vmrecv: partial receive of stream \(partial.stream) into '\(name)' aborted; nothing of it is left")
            return
        }
        let progressRequest = ProgressRequest()
        // Before any other thread starts: an interrupt destroys what was created and says so; SIGUSR1 asks for a line.
        let interrupts = ReceiveInterruptWatcher(machineName: name, progressRequest: progressRequest)
        // vmrun may exit before reading the configuration we write to it; that is its error to report, not a signal.
        signal(SIGPIPE, SIG_IGN)
        // Labelled: with `vmsend -v | vmrecv -v` both ends print to one terminal.
        let printer = ProgressPrinter(verbose: verbose, parsable: parsable, label: "received ")
        printer.attach(to: progressRequest)
        let runDirectory = RunDirectory.resolve(flag: runDir)
        // Before anything is read, with -n too: a receive refuses a name in use, so a dry run says so as well.
        // A partial receive of the name is taken up by a continuation only; any other stream is refused once its
        // first record shows what it is.
        var heldPartial: PartialReceive?
        if let existing = try? ControlClient.connect(name: name, runDirectory: runDirectory) {
            let status = try? existing.status()
            existing.close()
            heldPartial = status?.partial
            if heldPartial == nil || dryRun {
                let state = status?.state ?? existing.initialState
                throw MigrationError("a VM named '\(name)' already exists here (\(state.rawValue), pid \(existing.pid))")
            }
        }
        let vmrun = IncomingMachine.locateVMRun()
        if diskDir == nil { try runDirectory.create() }
        let disks = DiskPlacementChoice(directory: diskDir ?? runDirectory.path, overwrite: force)
        let name = self.name
        let receiver = Receiver(
            input: .standardInput,
            options: {
                var options = ReceiveOptions(name: name, leavePaused: paused, dryRun: dryRun)
                options.keepPartial = resumable
                return options
            }(),
            checkCompatibility: { [hugepages] begin in
                // Read when BEGIN arrives, which may be long after vmrecv started (behind nc -l, say).
                try Compatibility.local(hugePages: hugepages).check(begin, as: name)
                try disks.checkRoom(for: begin, as: name)
                if verbose && dryRun && !parsable { StandardStreams.error(begin.dryRunDescription(as: name)) }
            },
            makeDestination: { config in
                if let heldPartial {
                    throw MigrationError(
                        "VM '\(name)' holds a partial receive of stream \(heldPartial.stream): continue it with the token "
                            + "'vmctl status \(name)' shows (vmsend -t), or abort it with 'vmrecv -A \(name)'")
                }
                return try IncomingMachine(
                    config: config, runDirectory: runDirectory, vmrun: vmrun, disks: disks, hugePages: hugepages)
            },
            makeCheck: { _ in try VMRunCheck(name: name, vmrun: vmrun) })
        receiver.warn = { StandardStreams.error("vmrecv: warning: \($0)") }
        receiver.progressRequest = progressRequest
        receiver.onStart = printer.start
        receiver.onProgress = printer.show
        receiver.phaseObserver = interrupts
        receiver.takeUpPartial = { point in
            let (machine, bytes) = try IncomingMachine.takeUp(name: name, runDirectory: runDirectory)
            do {
                return (machine, try ReaderCheckpoint.decode(bytes))
            } catch {
                throw MigrationError("the partial receive '\(name)' cannot be continued: \(error)")
            }
        }
        let report = try receiver.run()
        printer.finish(
            streamBytes: report.streamBytes, summary: report.summary(dryRun: dryRun), parsable: report.parsableSummary)
    }
}

ToolMain.run(VMRecv.self)
