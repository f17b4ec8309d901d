import ArgumentParser
import Glibc
import MachineDescription
import SystemPackage
import SystemSupport
import ToolSupport
import VMControl

/// `vmctl`: look at and manage the VMs that vmrun runs.
struct VMCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmctl",
        abstract: "Manage virtual machines run by vmrun.",
        version: Release.versionLine(tool: "vmctl"),
        subcommands: [List.self, Status.self, Pause.self, Resume.self, Destroy.self, Console.self])

    func run() throws { throw ValidationError("missing subcommand: list, status, pause, resume, destroy or console") }
}

struct GlobalOptions: ParsableArguments {
    @Option(help: "Directory of the VMs' sockets (default: $VMSEND_RUN_DIR, else /run/vmsend for root).")
    var runDir: String?

    var runDirectory: RunDirectory { RunDirectory.resolve(flag: runDir) }

    func connect(_ name: String) throws -> ControlClient {
        try ControlClient.connect(name: name, runDirectory: runDirectory)
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the VMs in the run directory.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print a JSON array of statuses.") var json = false

    func run() throws {
        var statuses: [MachineStatus] = []
        for name in try global.runDirectory.listedSocketNames() {
            // A socket nobody answers on belongs to a dead vmrun: not a VM, so not listed.
            guard let client = try? global.connect(name) else { continue }
            defer { client.close() }
            if let status = try? client.status() { statuses.append(status) }
        }
        if json {
            print(try encodeJSON(statuses))
            return
        }
        // A state that came from a peer is shown escaped; names are already of the run directory's safe alphabet.
        let rows =
            [["NAME", "STATE", "VCPUS", "MEMORY", "PID"]]
            + statuses.map {
                [$0.name, $0.state.rawValue, String($0.vcpus.count), ByteSize.format($0.memorySize), String($0.pid)]
            }
        printTable(rows)
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a VM's state, guest progress, memory and uptime.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print the status as JSON (MachineStatus).") var json = false
    @Argument(help: "The VM's name.", completion: .machineNames) var name: String

    func validate() throws { try asUsageError { try MachineName.validate(name) } }

    func run() throws {
        let client = try global.connect(name)
        defer { client.close() }
        let status = try client.status()
        if json {
            print(try encodeJSON(status))
            return
        }
        var rows = [
            ["name:", status.name], ["state:", status.stateDescription], ["pid:", String(status.pid)],
            [
                "memory:",
                ByteSize.format(status.memorySize)
                    + (status.hugePages == true ? " on \(ByteSize.format(status.hugePageSize ?? 2 << 20)) huge pages" : ""),
            ],
            ["uptime:", formatSeconds(status.uptimeSeconds)],
        ]
        for (index, vcpu) in status.vcpus.enumerated() {
            rows.append(["vcpu\(index):", "tick \(vcpu.tick), checks \(vcpu.checksPassed) ok, \(vcpu.checksFailed) failed"])
        }
        if let heartbeat = status.heartbeat {
            let counters = ["mem_failures", "disk_failures", "clock_jumps", "max_gap_ms"].compactMap { key in
                heartbeat.fields[key].map { "\(key)=\($0)" }
            }
            rows.append([
                "guest:",
                "\(heartbeat.alive ? "alive" : "silent"), beat \(heartbeat.beat) \(formatSeconds(heartbeat.secondsAgo)) ago"
                    + (counters.isEmpty ? "" : ", " + counters.joined(separator: " ")),
            ])
        }
        if let disk = status.disk {
            rows.append(["disk:", "\(disk.writes) blocks written, checks \(disk.checksPassed) ok, \(disk.checksFailed) failed"])
        }
        if let resumable = status.resumable { rows.append(["resumable:", resumable.summary]) }
        if let partial = status.partial {
            rows.append(["partial:", partial.summary])
            rows.append([
                "resume with:",
                "vmsend -t \(partial.token) \(UntrustedText.escape(partial.sourceMachine)) | ... vmrecv -s \(status.name)",
            ])
        }
        printTable(rows)
    }
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop a VM's vCPUs; its state is kept.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The VM's name.", completion: .machineNames) var name: String

    func validate() throws { try asUsageError { try MachineName.validate(name) } }
    func run() throws { try global.connect(name).pause() }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a paused VM's vCPUs again.",
        discussion: "A migrated VM, or one whose send may have started a copy elsewhere, is resumed only with --force.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Resume even a migrated VM: only when its copy is known never to have started, or to be gone.")
    var force = false
    @Argument(help: "The VM's name.", completion: .machineNames) var name: String

    func validate() throws { try asUsageError { try MachineName.validate(name) } }
    func run() throws { try global.connect(name).resume(force: force) }
}

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a VM for good; its vmrun exits and removes the socket, the console and the log.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Keep the VM's console and log, renamed with the time (NAME.console.20261121T104512Z).")
    var keepLogs = false
    @Argument(help: "The VM's name.", completion: .machineNames) var name: String

    func validate() throws { try asUsageError { try MachineName.validate(name) } }

    func run() throws {
        let kept = try global.connect(name).destroyAndWait(keepLogs: keepLogs)
        if keepLogs {
            print(kept.isEmpty ? "vmctl: '\(name)' had no console or log to keep" : "kept: " + kept.joined(separator: " "))
        }
    }
}

struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a VM's console (UART) output, follow it, or send it input.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Keep printing output as it arrives, until the VM ends or SIGINT.") var follow = false
    @Option(help: "Send TEXT to the UART instead of showing output; '-' sends standard input.") var input: String?
    @Argument(help: "The VM's name.", completion: .machineNames) var name: String

    /// The most input sent from standard input in one go.
    static let maximumInput = 1 << 20

    func validate() throws { try asUsageError { try MachineName.validate(name) } }

    func run() throws {
        let client = try global.connect(name)
        defer { client.close() }
        if let input {
            let bytes =
                input == "-"
                ? try FileDescriptor.standardInput.readToEnd(limit: Self.maximumInput, what: "standard input") : Array(input.utf8)
            for start in stride(from: 0, to: bytes.count, by: 4096) {
                try client.consoleInput(Array(bytes[start..<min(start + 4096, bytes.count)]))
            }
            return
        }
        let path = global.runDirectory.consoleLogPath(for: name)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ControlError("cannot open the console log \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = retryingInterrupts { chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
            if count > 0 {
                try FileDescriptor.standardOutput.writeFully(chunk[..<count], what: "standard output")
                continue
            }
            guard follow, processIsAlive(client.pid) else { return }
            usleep(100_000)
        }
    }
}

func printTable(_ rows: [[String]]) {
    guard let columns = rows.first?.count else { return }
    let widths = (0..<columns).map { column in rows.map { $0[column].count }.max() ?? 0 }
    for row in rows {
        let cells = row.enumerated().map { index, cell in
            index == columns - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count + 2)
        }
        print(cells.joined())
    }
}

func formatSeconds(_ seconds: Double) -> String {
    let tenths = Int((seconds * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) s"
}

extension CompletionKind {
    /// The VMs in the run directory the command line names, for shell completion.
    static var machineNames: CompletionKind {
        .custom { words, _, prefix in RunDirectory.completeMachineNames(words: words, prefix: prefix) }
    }
}
