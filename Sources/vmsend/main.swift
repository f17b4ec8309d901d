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

    @Option(name: .long, parsing: .unconditional, help: "Live: the pause to aim for, in milliseconds.")
    var downtime: Int = Int(
        Convergence.defaultDowntimeTarget.components.seconds * 1000
            + Convergence.defaultDowntimeTarget.components.attoseconds / 1_000_000_000_000_000)

    @Option(name: .long, parsing: .unconditional, help: "Live: switch over after this many rounds at most.")
    var maxRounds: Int = Convergence.defaultMaxRounds

    @Flag(name: .long, help: "Live: never slow the guest down to converge.")
    var noThrottle = false

    @Flag(name: .long, help: "Resume the VM after the send: a consistent snapshot that leaves the source running.")
    var keepRunning = false

    @Flag(name: .long, help: "Both hosts reach the disk images at the same paths: send their identity, not their data.")
    var sharedStorage = false

    @Flag(name: [.customShort("n"), .customLong("dry-run")], help: "Send nothing; with -v or -P, estimate the stream's size.")
    var dryRun = false

    @Flag(name: .long, help: "Send a VM that was migrated already (only when its copy is known to be gone).")
    var force = false

    @Flag(
        name: .long,
        help: "Destroy the VM once its stream, written to a file, has been read back and verified.")
    var destroySource = false

    @Flag(
        name: [.customShort("s"), .customLong("resumable")],
        help: ArgumentHelp(
            "Should the stream break, keep what vmsend -t needs to continue it (see --resume-window): warm, the VM stays "
                + "paused; live, it keeps running with its writes logged."))
    var resumable = false

    @Option(
        name: [.customShort("t"), .customLong("resume-token")],
        help: ArgumentHelp("Continue the broken stream this token names (vmrecv -s printed it).", valueName: "token"))
    var resumeToken: String?

    @Option(
        name: .long, parsing: .unconditional,
        help: ArgumentHelp("With -s: how long the VM keeps a broken stream for vmsend -t (e.g. 90s, 10m, 1h).", valueName: "time")
    )
    var resumeWindow: String = "10m"

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
        try asUsageError { try MachineName.validate(name) }
        _ = try Self.parseWindow(resumeWindow)
        if resumable && keepRunning {
            throw ValidationError(
                "-s and --keep-running do not go together: a snapshot that breaks is taken again, not continued")
        }
        if let resumeToken {
            _ = try asUsageError { try ResumeToken(parsing: resumeToken) }
            guard !warm, compression.method == .none, !sharedStorage, !keepRunning, !dryRun, !destroySource else {
                throw ValidationError(
                    "-t continues a stream with the settings it was started with: drop --warm, -c, --shared-storage, "
                        + "--keep-running, -n and --destroy-source")
            }
        }
        guard downtime >= 0 else { throw ValidationError("--downtime must be 0 or more milliseconds, not \(downtime)") }
        guard maxRounds >= 2 else { throw ValidationError("--max-rounds must be at least 2, not \(maxRounds)") }
        if destroySource {
            guard !keepRunning, !dryRun else { throw ValidationError("--destroy-source excludes --keep-running and --dry-run") }
            // Through a pipe vmsend cannot learn whether the receiver restored the machine; a file it can read back.
            guard StandardStreams.outputIsRegularFile else {
                throw ValidationError(
                    "--destroy-source needs standard output to be a file vmsend can read back and verify; through a pipe, "
                        + "destroy the source once the receiver succeeded: vmsend \(name) | ssh dst vmrecv \(name) && vmctl destroy \(name)"
                )
            }
        }
    }

    /// A resume window: seconds, or a number with s, m or h; more than 0 and at most a week.
    static func parseWindow(_ text: String) throws -> Duration {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        let unit = text.last.flatMap { units[$0] }
        let number = unit == nil ? text : String(text.dropLast())
        guard let value = Double(number), value.isFinite, value > 0, value * (unit ?? 1) <= 7 * 86400 else {
            throw ValidationError("--resume-window must be a time above 0 and at most a week (90, 90s, 10m, 1h), not '\(text)'")
        }
        return .milliseconds(Int64((value * (unit ?? 1) * 1000).rounded(.up)))
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        // Where this stream starts in the file, what --destroy-source reads back: the end of what is there for `>>`
        // (an appending descriptor writes there whatever its offset), else the descriptor's offset.
        let streamStart = destroySource ? try Self.writeOffset(of: .standardOutput) : 0
        let runDirectory = RunDirectory.resolve(flag: runDir)
        let name = self.name
        let progressRequest = ProgressRequest()
        let printer = ProgressPrinter(verbose: verbose, parsable: parsable)
        printer.attach(to: progressRequest)
        let watcher = InterruptWatcher(machineName: name, progressRequest: progressRequest) {
            // Undoes this send's own pause over a connection of its own, which vmrun would otherwise refuse.
            try ControlSocketSource(name: name, runDirectory: runDirectory, resumesWithForce: true)
        }
        let source = try ControlSocketSource(name: name, runDirectory: runDirectory)
        let mode: MigrationMode = warm ? (StandardStreams.outputIsRegularFile ? .cold : .warm) : .live
        let convergence = Convergence(downtimeTarget: .milliseconds(downtime), maxRounds: maxRounds, autoConverge: !noThrottle)
        var options = SendOptions(
            mode: mode, compression: Compression.named(compression.method.rawValue) ?? .none, keepRunning: keepRunning,
            convergence: convergence)
        options.sharedStorage = sharedStorage
        options.force = force
        options.destination = OutputDestination.describe()
        options.resumable = resumable
        options.resumeWindow = try Self.parseWindow(resumeWindow)
        if let resumeToken {
            let token = try ResumeToken(parsing: resumeToken)
            options.continuation = token
        }
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
        if let point = report.continuedFrom, verbose {
            StandardStreams.error(
                "vmsend: continued stream \(report.stream) from record \(point.record) (byte \(point.offset)): "
                    + "\(report.bytesWritten) bytes written of \(report.statistics.bytes)")
        }
        let vmctl = "vmctl" + (runDir.map { " --run-dir \($0)" } ?? "")
        if keepRunning {
            StandardStreams.error(
                report.sourceWasRunning
                    ? "vmsend: VM '\(name)' was resumed (--keep-running); the stream is a snapshot of it"
                    : "vmsend: VM '\(name)' was paused before the send and stays paused; the stream is a snapshot of it")
        } else if destroySource {
            try destroyAfterVerifying(report, from: streamStart, runDirectory: runDirectory)
        } else if report.sourceMigrated {
            StandardStreams.error(
                "vmsend: VM '\(name)' is migrated (stream \(report.stream)) and stays paused so that it never runs beside its copy: "
                    + "'\(vmctl) destroy \(name)' removes it; '\(vmctl) resume --force \(name)' runs it again if the copy never started"
            )
        } else {
            StandardStreams.error(
                "vmsend: VM '\(name)' stays paused here and must not run alongside its copy: "
                    + "'\(vmctl) destroy \(name)' removes it; '\(vmctl) resume --force \(name)' resumes it if the copy never started"
            )
        }
    }

    /// Where the next write to `file` lands.
    static func writeOffset(of file: FileDescriptor) throws -> Int64 {
        if fcntl(file.rawValue, F_GETFL) & O_APPEND != 0 { return try file.seek(offset: 0, from: .end) }
        return try file.seek(offset: 0, from: .current)
    }

    /// --destroy-source: makes the file durable, reads this very stream back from where it started through a reader
    /// of its own, and destroys the source only when it is whole: every checksum verifies, it is the stream just sent
    /// (its UUID) and as long. A file that fails any of this cannot make a copy, so the source is resumed instead.
    private func destroyAfterVerifying(_ report: SendReport, from start: Int64, runDirectory: RunDirectory) throws {
        let verdict: Error?
        do {
            guard fsync(1) == 0 else { throw ToolError("it cannot be made durable: \(String(cString: strerror(errno)))") }
            let file = try FileDescriptor.open("/proc/self/fd/1", .readOnly)
            defer { try? file.close() }
            _ = try file.seek(offset: start, from: .start)
            let reader = try StreamReader(input: file)
            var uuid: String?
            while let record = try reader.next(into: DiscardingPageSink()) {
                if case .begin(let begin) = record { uuid = begin.uuidString }
            }
            if uuid != report.stream {
                verdict = ToolError("it holds stream \(uuid ?? "none"), not \(report.stream)")
            } else if reader.statistics.bytes != report.statistics.bytes {
                verdict = ToolError("\(reader.statistics.bytes) bytes of it were read back, \(report.statistics.bytes) were sent")
            } else {
                verdict = nil
            }
        } catch {
            verdict = error
        }
        let client = try ControlClient.connect(name: name, runDirectory: runDirectory)
        defer { client.close() }
        if let verdict {
            if report.sourceWasRunning { try? client.resume(force: true) }
            throw ToolError(
                "the stream read back from \(OutputDestination.describe() ?? "standard output") does not verify (\(verdict)); "
                    + "VM '\(name)' was not destroyed\(report.sourceWasRunning ? " and was resumed" : "")")
        }
        try client.destroyAndWait()
        StandardStreams.error(
            "vmsend: VM '\(name)' was destroyed after its stream (\(report.stream)) was read back and verified from \(OutputDestination.describe() ?? "standard output")"
        )
    }
}

ToolMain.run(VMSend.self)
