import ArgumentParser
import Glibc
import MachineDescription
import SystemPackage
import SystemSupport
import ToolSupport
import VMControl
import VMM

/// `vmrun [options] NAME`: runs one VM and serves its control socket.
struct VMRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmrun",
        abstract: "Run a virtual machine with the bundled self-checking guest.",
        discussion: "By default the VM runs in the background; manage it with vmctl.",
        version: Release.versionLine(tool: "vmrun"))

    @Argument(help: "The VM's name; its socket is <run dir>/NAME.sock.")
    var name: String

    @Option(parsing: .unconditional, help: "Number of vCPUs (default 1; with --incoming, the configuration's).")
    var cpus: Int?

    @Option(
        parsing: .unconditional,
        help:
            "Guest RAM, e.g. 512M, 6G, 4.5G (default 256M; with --incoming, the configuration's). Beyond 3G, the rest sits from 4 GiB up."
    )
    var memory: String?

    @Option(help: "Guest RAM the bundled guest works over, split between its vCPUs (default: 64M or half the RAM).")
    var guestWorkingSet: String?

    @Option(help: "Bytes per second the guest dirties in all, e.g. 100M/s; 0 = flat out.")
    var guestDirtyRate: String = "0"

    @Option(help: "Preload guest RAM from this file (segments back to back).")
    var memoryImage: String?

    @Option(
        help:
            "Guest RAM is this file on tmpfs (or hugetlbfs: huge pages), shared: what the guest writes lands there. Missing or empty: sized to --memory; else it must hold that many bytes, the RAM the guest starts with."
    )
    var memoryFile: String?

    @Option(
        name: .customLong("disk"),
        help:
            "A raw image the guest sees as a virtio-blk disk (vda, vdb, ...): PATH[,readonly]. Repeatable; its size must be a multiple of 4K."
    )
    var disks: [String] = []

    @Option(help: "Bytes per second the bundled guest writes to its first disk, e.g. 10M/s (default 1M/s).")
    var guestDiskRate: String = "0"

    @Option(help: "Boot this Linux kernel (an uncompressed vmlinux with a PVH entry) instead of the bundled guest.")
    var kernel: String?

    @Option(help: "With --kernel: the initramfs.")
    var initrd: String?

    @Option(help: "With --kernel: the kernel command line (default: serial console, /init, and what this host needs).")
    var cmdline: String?

    @Flag(help: "Create the VM without starting its vCPUs.")
    var paused = false

    @Flag(
        help:
            "Back guest RAM with 2 MiB huge pages from the host's pool (/sys/kernel/mm/hugepages/hugepages-2048kB), all of it reserved at start; --memory must be a multiple of 2M."
    )
    var hugepages = false

    @Flag(help: "Run in this process instead of in the background.")
    var foreground = false

    @Option(help: "Directory for sockets and logs (default: $VMSEND_RUN_DIR, else /run/vmsend for root).")
    var runDir: String?

    @Flag(help: "Create the VM in the incoming state from a MachineConfig JSON document on stdin (used by vmrecv).")
    var incoming = false

    @Flag(
        help:
            "Create nothing: check a configuration and a state read from stdin against this host's KVM, as --incoming and a restore would (used by vmrecv -n)."
    )
    var check = false

    /// Internal: this is the background VM process; report readiness on this descriptor.
    @Option(help: .private)
    var readyFd: Int32?

    static let defaultCPUs = 1
    static let defaultMemory = "256M"

    /// Every value that can be wrong without looking at the host is a usage error (exit 2).
    func validate() throws {
        try asUsageError { try MachineName.validate(name) }
        if let cpus, !(1...255).contains(cpus) { throw ValidationError("--cpus must be 1 to 255, not \(cpus)") }
        let memorySize = try asUsageError { try ByteSize.parse(memory ?? Self.defaultMemory) }
        if memory != nil || !(incoming || check) {
            try asUsageError { try MachinePlan.checkMemoryShape(memorySize, flag: "--memory \(memory ?? Self.defaultMemory)") }
            if hugepages && !HugePagePool.holds(wholePages: memorySize) {
                throw ValidationError("--hugepages: --memory \(memory ?? Self.defaultMemory) is not a multiple of 2M")
            }
        }
        _ = try asUsageError { try ByteSize.parseRate(guestDirtyRate) }
        _ = try asUsageError { try ByteSize.parseRate(guestDiskRate) }
        if let guestWorkingSet {
            let workingSet = try asUsageError { try ByteSize.parse(guestWorkingSet) }
            if !(incoming || check), workingSet > memorySize {
                throw ValidationError(
                    "--guest-working-set \(guestWorkingSet) is larger than the guest's memory (\(ByteSize.format(memorySize)))")
            }
        }
        if incoming && check { throw ValidationError("--incoming and --check exclude each other") }
        if memoryFile != nil && incoming { throw ValidationError("--memory-file is for a VM vmrun starts, not --incoming") }
        if memoryFile != nil && memoryImage != nil {
            throw ValidationError("--memory-file is the RAM itself: copy the image into it instead of --memory-image")
        }
        if memoryFile != nil && hugepages {
            throw ValidationError("--memory-file and --hugepages exclude each other: for huge pages, put the file on hugetlbfs")
        }
        if check
            && (paused || foreground || memoryImage != nil || memoryFile != nil || readyFd != nil || !disks.isEmpty
                || kernel != nil || hugepages)
        {
            throw ValidationError("--check runs in the foreground and creates nothing: it takes no other option but --run-dir")
        }
    }

    func run() throws {
        let status = try execute()
        if status != 0 { throw ExitCode(status) }
    }

    /// Runs the command; returns the exit status.
    func execute() throws -> Int32 {
        if check { return try IncomingCheckMode(name: name).run() }
        let runDirectory = RunDirectory.resolve(flag: runDir)
        let plan = try MachinePlan(command: self, runDirectory: runDirectory)
        if readyFd == nil && !foreground {
            return try BackgroundLauncher(plan: plan, command: self).launch()
        }
        return try VMProcess(plan: plan, readyFd: readyFd).run()
    }

    /// How to reach the VM, for the messages printed once it runs.
    func reachHint(runDirectory: RunDirectory) -> String {
        let flag = runDir == nil ? "" : " --run-dir \(runDirectory.path)"
        return "vmctl\(flag) status \(name)"
    }
}

/// What to create, checked before any process is started.
struct MachinePlan {
    let name: String
    let runDirectory: RunDirectory
    let cpus: UInt32
    let memorySize: UInt64
    /// The received configuration of an incoming machine, and its JSON as read from stdin.
    let incomingConfig: MachineConfig?
    let incomingJSON: [UInt8]
    let options: MachineOptions

    /// The largest MachineConfig document vmrun reads from stdin.
    static let maximumConfigLength = 16 << 20

    init(command: VMRun, runDirectory: RunDirectory) throws {
        name = command.name
        self.runDirectory = runDirectory
        let rate = try ByteSize.parseRate(command.guestDirtyRate)
        var image = command.memoryImage
        if let path = image {
            guard access(path, R_OK) == 0 else {
                throw ControlError("cannot read memory image \(path): \(String(cString: strerror(errno)))")
            }
            image = RunDirectory.absolute(path)
        }
        if command.incoming {
            incomingJSON = try readStandardInput(limit: Self.maximumConfigLength)
            var config = try decodeMachineConfig(incomingJSON)
            config.name = command.name
            try Self.checkIncoming(config)
            // The flags are only shown (in ps); they may not say something else than the configuration.
            if let flag = command.cpus, flag != Int(config.vcpuCount) {
                throw ControlError("--incoming: --cpus \(flag), but the configuration has \(config.vcpuCount) vCPUs")
            }
            if let flag = command.memory, try ByteSize.parse(flag) != config.memorySize {
                throw ControlError("--incoming: --memory \(flag), but the configuration has \(config.memorySize) bytes")
            }
            incomingConfig = config
            cpus = config.vcpuCount
            memorySize = config.memorySize
        } else {
            cpus = UInt32(command.cpus ?? VMRun.defaultCPUs)
            memorySize = try ByteSize.parse(command.memory ?? VMRun.defaultMemory)
            incomingConfig = nil
            incomingJSON = []
        }
        if !command.incoming { try Self.checkMemorySize(memorySize, flag: "--memory \(command.memory ?? VMRun.defaultMemory)") }
        var memoryFile: GuestMemoryFile?
        if let path = command.memoryFile { memoryFile = try Self.memoryFile(path, memorySize: memorySize) }
        let workingSet = try command.guestWorkingSet.map(ByteSize.parse) ?? min(64 << 20, memorySize / 2)
        let disks = try command.disks.enumerated().map { try Self.disk($1, index: $0, machine: command.name) }
        var linux: LinuxBootOptions?
        if let kernel = command.kernel {
            for (flag, path) in [("--kernel", kernel), ("--initrd", command.initrd)] {
                if let path, access(path, R_OK) != 0 {
                    throw ControlError("\(flag) \(path): \(String(cString: strerror(errno)))")
                }
            }
            linux = LinuxBootOptions(
                kernel: RunDirectory.absolute(kernel), initrd: command.initrd.map(RunDirectory.absolute),
                commandLine: command.cmdline)
        } else if command.initrd != nil || command.cmdline != nil {
            throw ControlError("--initrd and --cmdline go with --kernel")
        }
        options = MachineOptions(
            memoryImage: image, memoryFile: memoryFile, startPaused: command.paused,
            consoleLog: runDirectory.consoleLogPath(for: command.name),
            guestWorkingSet: workingSet, guestDirtyRate: rate, disks: disks,
            guestDiskRate: try ByteSize.parseRate(command.guestDiskRate), linux: linux, hugePages: command.hugepages)
        // Before a background process is started: a short pool is this host's refusal, said at once. (Mapping the
        // memory reserves the pages, and is the check that counts should another process take them meanwhile.)
        if command.hugepages {
            guard HugePagePool.holds(wholePages: memorySize) else {
                throw ControlError(
                    "--hugepages: its memory (\(ByteSize.format(memorySize))) is not a whole number of 2 MiB pages")
            }
            guard (HugePagePool.availablePages() ?? 0) >= memorySize / HugePagePool.pageSize else {
                throw HugePagePool.shortage(bytes: memorySize)
            }
        }
    }

    /// `--memory-file PATH` made absolute, with what is there now: a file this user may read and write, empty or at
    /// least as large as guest memory; or nothing, in a folder where this user may create it. (Opening it checks
    /// again, in the VM process, along with its filesystem.)
    static func memoryFile(_ path: String, memorySize: UInt64) throws -> GuestMemoryFile {
        func refuse(_ why: String) -> ControlError { ControlError("--memory-file \(path): \(why)") }
        var info = stat()
        guard stat(path, &info) == 0 else {
            guard errno == ENOENT else { throw refuse(String(cString: strerror(errno))) }
            let folder = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
            guard access(folder.isEmpty ? "/" : folder, W_OK | X_OK) == 0 else {
                throw refuse("cannot create it in \(folder.isEmpty ? "/" : folder): \(String(cString: strerror(errno)))")
            }
            return GuestMemoryFile(path: RunDirectory.absolute(path), isNew: true, holdsBytes: false)
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw refuse("not a regular file") }
        guard access(path, R_OK | W_OK) == 0 else { throw refuse(String(cString: strerror(errno))) }
        guard info.st_size == 0 || UInt64(info.st_size) >= memorySize else {
            throw refuse(
                "it holds \(info.st_size) bytes, fewer than --memory (\(ByteSize.format(memorySize))): name an empty file or one that size"
            )
        }
        return GuestMemoryFile(path: RunDirectory.absolute(path), isNew: false, holdsBytes: info.st_size > 0)
    }

    /// A `--disk PATH[,readonly]` as the machine's disk number `index`: vda, vdb, ...
    static func disk(_ spec: String, index: Int, machine: String) throws -> DiskConfig {
        var parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let path = parts.removeFirst()
        guard !path.isEmpty, parts.allSatisfy({ $0 == "readonly" }) else {
            throw ControlError("--disk \(spec): expected PATH or PATH,readonly")
        }
        guard index < DiskPlacement.maximumDisks else {
            throw ControlError("--disk \(spec): a machine has at most \(DiskPlacement.maximumDisks) disks")
        }
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw ControlError("--disk \(path): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw ControlError("--disk \(path): not a regular file (a raw image)") }
        let size = UInt64(info.st_size)
        guard size > 0, size % DiskConfig.blockSize == 0 else {
            throw ControlError("--disk \(path): \(size) bytes is not a positive multiple of 4K (truncate -s to round it)")
        }
        let readOnly = !parts.isEmpty
        guard access(path, readOnly ? R_OK : R_OK | W_OK) == 0 else {
            throw ControlError(
                "--disk \(path): \(readOnly ? "read" : "read and write") permission is needed: \(String(cString: strerror(errno)))"
            )
        }
        let name = DiskPlacement.name(index)
        return DiskConfig(
            name: name, size: size, readOnly: readOnly,
            serial: String("\(machine)-\(name)".prefix(DiskConfig.maximumSerialLength)),
            path: RunDirectory.absolute(path))
    }

    /// What vmrun checks of a received configuration before it creates anything, for `--incoming` and `--check` alike
    /// (the machine's own checks follow as it is created).
    static func checkIncoming(_ config: MachineConfig) throws {
        do {
            guard (1...255).contains(config.vcpuCount) else {
                throw ControlError("it has \(config.vcpuCount) vCPUs; vmrun runs 1 to 255")
            }
            try checkMemorySize(config.memorySize, flag: "its memory (\(ByteSize.format(config.memorySize)))")
        } catch {
            throw MachineError.hostRefusal(config.name, error)
        }
    }

    /// Refuses sizes that are not whole pages or too small to hold the guest: what is wrong whatever the host.
    static func checkMemoryShape(_ size: UInt64, flag: String) throws {
        guard size >= 4 << 20 else { throw ControlError("\(flag) is too small: the guest needs at least 4M") }
        guard size % 4096 == 0 else { throw ControlError("\(flag) is not a whole number of 4 KiB pages") }
    }

    /// Refuses sizes of the wrong shape, or more than the host has.
    static func checkMemorySize(_ size: UInt64, flag: String) throws {
        try checkMemoryShape(size, flag: flag)
        if let hostMemory = hostMemorySize(), size > hostMemory {
            throw ControlError("\(flag) is more than this host has (\(ByteSize.format(hostMemory)) of RAM)")
        }
    }

    /// MemTotal from /proc/meminfo, in bytes.
    static func hostMemorySize() -> UInt64? {
        guard let text = try? FileDescriptor.readFile("/proc/meminfo", limit: 1 << 16) else { return nil }
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kilobytes = UInt64(fields[1]) { return kilobytes * 1024 }
        }
        return nil
    }
}

/// Reads standard input to its end, refusing more than `limit` bytes.
func readStandardInput(limit: Int) throws -> [UInt8] {
    try FileDescriptor.standardInput.readToEnd(limit: limit, what: "standard input")
}
