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
        discussion: "Carry the stream with ssh, nc or a file: vmsend NAME | ssh dst vmrecv NAME")

    @Flag(name: .long, help: "Pause the VM, then send it (warm migration; to a file it is a cold save). Default: live.")
    var warm = false

    @Option(name: [.short, .customLong("compress")], help: "Compression: none or lz4.")
    var compression: CompressionChoice = .none

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

    @Flag(name: [.customShort("n"), .customLong("dry-run")], help: "Send nothing; with -v, estimate the stream's size.")
    var dryRun = false

    @Flag(name: .short, help: "Print each round and a summary on stderr.")
    var verbose = false

    @Flag(name: .customShort("P"), help: "Print rounds and progress as tab-separated lines on stderr.")
    var parsable = false

    @Option(name: .long, help: "Where VM sockets live (default: $VMSEND_RUN_DIR, else /run/vmsend for root; see vmrun(8)).")
    var runDir: String?

    @Argument(help: "The VM to send.")
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
        let watcher = InterruptWatcher(machineName: name, progressRequest: progressRequest) {
            try ControlSocketSource(name: name, runDirectory: runDirectory)
        }
        let source = try ControlSocketSource(name: name, runDirectory: runDirectory)
        let mode: MigrationMode = warm ? (StandardStreams.outputIsRegularFile ? .cold : .warm) : .live
        let convergence = Convergence(downtimeTarget: .milliseconds(downtime), maxRounds: maxRounds, autoConverge: !noThrottle)
        var options = SendOptions(mode: mode, compression: compression.value, keepRunning: keepRunning, convergence: convergence)
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
            if verbose {
                StandardStreams.error(
                    "would send VM '\(estimate.machine)' (\(ByteSize.format(estimate.guestBytes))): "
                        + "\(estimate.populatedPages) populated pages, \(estimate.zeroPages) of them zero; "
                        + "estimated stream size \(ByteSize.format(estimate.estimatedStreamBytes)) before compression")
            }
            return
        }
        sender.phaseObserver = watcher
        sender.onProgress = progressPrinter()
        let report = try sender.run()
        if verbose { StandardStreams.error(report.summary) }
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

    /// Round lines with -v, tab-separated with -P, a bar redrawn in place when stderr is a terminal;
    /// SIGUSR1 asks for a line whatever the flags.
    private func progressPrinter() -> (RoundProgress) -> Void {
        let terminal = isatty(2) == 1
        let verbose = self.verbose
        let parsable = self.parsable
        return { progress in
            if parsable {
                StandardStreams.error(progress.parsable)
            } else if progress.inProgress && terminal && verbose && !progress.onDemand {
                StandardStreams.errorText(progress.bar)
            } else if verbose || progress.onDemand {
                StandardStreams.error((terminal && verbose ? "\r\u{1b}[K" : "") + progress.line)
            }
        }
    }
}

enum CompressionChoice: String, ExpressibleByArgument {
    case none, lz4
    var value: Compression { self == .lz4 ? .lz4() : .none }
}

ToolMain.run(VMSend.self)
