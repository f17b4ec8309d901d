import ArgumentParser
import MachineDescription
import Migration
import SystemPackage
import ToolSupport
import VMControl
import VMRunBackend

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

    @Argument(help: "The name the VM gets on this host.")
    var name: String

    func validate() throws {
        try asUsageError { try MachineName.validate(name) }
    }

    func run() throws {
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
        if let existing = try? ControlClient.connect(name: name, runDirectory: runDirectory) {
            let state = (try? existing.status().state) ?? existing.initialState
            existing.close()
            throw MigrationError("a VM named '\(name)' already exists here (\(state.rawValue), pid \(existing.pid))")
        }
        let compatibility = Compatibility.local()
        let vmrun = IncomingMachine.locateVMRun()
        if diskDir == nil { try runDirectory.create() }
        let disks = DiskPlacementChoice(directory: diskDir ?? runDirectory.path, overwrite: force)
        let name = self.name
        let receiver = Receiver(
            input: .standardInput, options: ReceiveOptions(name: name, leavePaused: paused, dryRun: dryRun),
            checkCompatibility: { begin in
                try compatibility.check(begin, as: name)
                try disks.checkRoom(for: begin, as: name)
                if verbose && dryRun { StandardStreams.error(begin.dryRunDescription(as: name)) }
            },
            makeDestination: { config in
                try IncomingMachine(config: config, runDirectory: runDirectory, vmrun: vmrun, disks: disks)
            },
            makeCheck: { _ in try VMRunCheck(name: name, vmrun: vmrun) })
        receiver.warn = { StandardStreams.error("vmrecv: warning: \($0)") }
        receiver.progressRequest = progressRequest
        receiver.onStart = printer.start
        receiver.onProgress = printer.show
        receiver.phaseObserver = interrupts
        let report = try receiver.run()
        printer.finish(
            streamBytes: report.streamBytes, summary: report.summary(dryRun: dryRun), parsable: report.parsableSummary)
    }
}

ToolMain.run(VMRecv.self)
