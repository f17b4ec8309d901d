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

struct VMSend: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmsend",
        abstract: "Write a virtual machine's migration stream to standard output.",
        discussion: "Carry the stream with ssh, nc or a file: vmsend NAME | ssh dst vmrecv NAME",
        version: Release.versionLine(tool: "vmsend"))

    @Flag(name: .long, help: "Pause the VM, then send it (warm migration; to a file it is a cold save). Default: live.")
    var warm = false

    @OptionGroup var compression: CompressionOption

    @Option(name: .long, help: "Live: the pause to aim for, in milliseconds.")
    var downtime: Int = Int(
        Convergence.defaultDowntimeTarget.components.seconds * 1000
            + Convergence.defaultDowntimeTarget.components.attoseconds / 1_000_000_000_000_000)

    @Option(name: .long, help: "Live: switch over after this many rounds at most.")
    var maxRounds: Int = Convergence.defaultMaxRounds

    @Flag(name: .long, help: "Live: never slow the guest down to converge.")
    var noThrottle = false

    @Flag(name: .long, help: "Resume the VM after the send: a consistent snapshot that leaves the source running.")
    var keepRunning = false

    @Flag(name: .long, help: "Both hosts reach the disk images at the same paths: send their identity, not their data.")
    var sharedStorage = false

    @Flag(name: [.customShort("n"), .customLong("dry-run")], help: "Send nothing; with -v or -P, estimate the stream's size.")
    var dryRun = false

    @Flag(name: .shortAndLong, help: "Print each round, progress (a bar on a terminal) and a summary on stderr.")
    var verbose = false

    @Flag(
        name: [.customShort("P"), .long],
        help: "Print a size line, rounds, progress and a summary as tab-separated lines on stderr.")
    var parsable = false

    @Option(name: .long, help: "Where VM sockets live (default: $VMSEND_RUN_DIR, else /run/vmsend for root; see vmrun(8)).")
    var runDir: String?

    @Argument(
        help: "The VM to send.",
        completion: .custom { words, _, prefix in RunDirectory.completeMachineNames(words: words, prefix: prefix) })
    var name: String

    func validate() throws {
        guard downtime >= 0 else { throw ValidationError("--downtime must be 0 or more milliseconds") }
        guard maxRounds >= 2 else { throw ValidationError("--max-rounds must be at least 2") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let runDirectory = RunDirectory.resolve(flag: runDir)
        let name = self.name
        let progressRequest = ProgressRequest()
        let printer = ProgressPrinter(verbose: verbose, parsable: parsable)
        printer.attach(to: progressRequest)
        let watcher = InterruptWatcher(machineName: name, progressRequest: progressRequest) {
            try ControlSocketSource(name: name, runDirectory: runDirectory)
        }
        let source = try ControlSocketSource(name: name, runDirectory: runDirectory)
        let mode: MigrationMode = warm ? (StandardStreams.outputIsRegularFile ? .cold : .warm) : .live
        let convergence = Convergence(downtimeTarget: .milliseconds(downtime), maxRounds: maxRounds, autoConverge: !noThrottle)
        var options = SendOptions(
            mode: mode, compression: Compression.named(compression.method.rawValue) ?? .none, keepRunning: keepRunning,
            convergence: convergence)
        options.sharedStorage = sharedStorage
        #if DEBUG
            // Tests prove a check can fail by breaking a send on purpose; release builds have no such switch.
            options.fault = try getenv("VMSEND_TEST_FAULT").map { name in
                try SendFault(rawValue: String(cString: name))
                    ?? { throw ValidationError("unknown VMSEND_TEST_FAULT '\(String(cString: name))'") }()
            }
        #endif
        let sender = Sender(source: source, output: .standardOutput, options: options, progressRequest: progressRequest)
        if dryRun {
            let estimate = try sender.estimate()
            if parsable {
                StandardStreams.error(
                    TransferStart(
                        mode: mode.rawValue, machine: estimate.machine, uuid: "-",
                        estimatedTotalBytes: estimate.estimatedStreamBytes
                    ).parsable)
            } else if verbose {
                StandardStreams.error(
                    "would send VM '\(estimate.machine)' (\(ByteSize.format(estimate.guestBytes))): "
                        + "\(estimate.populatedPages) populated pages, \(estimate.zeroPages) of them zero; "
                        + "estimated stream size \(ByteSize.format(estimate.estimatedStreamBytes)) before compression")
            }
            return
        }
        sender.phaseObserver = watcher
        sender.onStart = printer.start
        sender.onProgress = printer.show
        let report = try sender.run()
        printer.finish(
            streamBytes: report.statistics.bytes, summary: report.summary, parsable: report.parsableSummary)
        if let missed = report.missedDowntimeTarget(convergence.downtimeTarget) {
            StandardStreams.error("vmsend: warning: \(missed)")
        }
        if !report.sourceWasRunning {
            StandardStreams.error("vmsend: VM '\(name)' was paused before the send and stays paused")
        } else if keepRunning {
            StandardStreams.error("vmsend: VM '\(name)' was resumed (--keep-running); the stream is a snapshot of it")
        } else {
            let flag = runDir.map { " --run-dir \($0)" } ?? ""
            StandardStreams.error(
                "vmsend: VM '\(name)' stays paused here and must not run alongside its copy: "
                    + "'vmctl\(flag) destroy \(name)' removes it; 'vmctl\(flag) resume \(name)' resumes it if the copy never started"
            )
        }
    }
}

ToolMain.run(VMSend.self)
