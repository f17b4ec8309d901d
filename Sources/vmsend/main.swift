import ArgumentParser
import Migration
import ToolSupport
import SystemPackage
import VMControl
import VMStream
#if canImport(Glibc)
import Glibc
#endif

struct VMSend: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmsend",
        abstract: "Write a virtual machine's migration stream to standard output.",
        discussion: "The stream is written to stdout; carry it with ssh, nc or a file: vmsend NAME | ssh dst vmrecv NAME")

    @Flag(name: .long, help: "Pause the VM, then send it (warm migration; to a file it is a cold save).")
    var warm = false

    @Option(name: [.short, .customLong("compress")], help: "Compression: none or lz4.")
    var compression: CompressionChoice = .none

    @Flag(name: .long, help: "Resume the VM after the send: a consistent snapshot that leaves the source running.")
    var keepRunning = false

    @Flag(name: [.short, .customLong("dry-run")], help: "Send nothing; with -v, estimate the stream's size.")
    var dryRun = false

    @Flag(name: .short, help: "Print a summary on stderr when done.")
    var verbose = false

    @Option(name: .long, help: "Where VM sockets live (default: $VMSEND_RUN_DIR or /run/vmsend).")
    var runDir: String?

    @Argument(help: "The VM to send.")
    var name: String

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let runDirectory = RunDirectory.resolve(flag: runDir)
        let source = try ControlSocketSource(name: name, runDirectory: runDirectory)
        let mode: MigrationMode = warm ? (StandardStreams.outputIsRegularFile ? .cold : .warm) : .warm
        let sender = Sender(source: source, output: .standardOutput,
                            options: SendOptions(mode: mode, compression: compression.value, keepRunning: keepRunning))
        if dryRun {
            let estimate = try sender.estimate()
            if verbose {
                StandardStreams.error("would send VM '\(estimate.machine)' (\(ByteCount(estimate.guestBytes))): "
                    + "\(estimate.populatedPages) populated pages, \(estimate.zeroPages) of them zero; "
                    + "estimated stream size \(ByteCount(estimate.estimatedStreamBytes)) before compression")
            }
            return
        }
        let interrupts = InterruptWatcher(machineName: name) { [name] in
            try ControlSocketSource(name: name, runDirectory: runDirectory)
        }
        sender.phaseObserver = interrupts
        let report = try sender.run()
        if verbose { StandardStreams.error(report.summary) }
        if keepRunning {
            StandardStreams.error("vmsend: VM '\(name)' was resumed (--keep-running); the stream is a snapshot of it")
        } else {
            let flag = runDir.map { " --run-dir \($0)" } ?? ""
            StandardStreams.error("vmsend: VM '\(name)' is paused here and must not run alongside its copy; "
                + "'vmctl\(flag) destroy \(name)' removes it, 'vmctl\(flag) resume \(name)' resumes it if the copy was not started")
        }
    }
}

enum CompressionChoice: String, ExpressibleByArgument {
    case none, lz4
    var value: Compression { self == .lz4 ? .lz4() : .none }
}

ToolMain.run(VMSend.self)
