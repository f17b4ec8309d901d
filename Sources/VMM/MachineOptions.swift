import MachineDescription

/// How `vmrun` wants a machine set up, beyond its `MachineConfig`.
public struct MachineOptions: Sendable {
    /// File whose bytes preload guest RAM (segments back to back), for benchmarks.
    /// With `startPaused`, RAM holds exactly the image (or the memory file) until the first `resume` writes the guest's boot area
    /// (GDT, page tables, code: the first 4 MiB); without it, the boot area is written at once.
    public var memoryImage: String?
    /// Guest RAM is this file, mapped shared (as QEMU's `memory-backend-file,share=on`): what it holds is the RAM the
    /// guest starts with, what the guest writes lands in it, and it outlives the VM. Created if missing, grown to
    /// the guest's size if smaller; on hugetlbfs, huge pages. Nil: a new memfd of the VM's own.
    public var memoryFile: String?
    /// Create the machine but do not run its vCPUs (as `qemu -S`).
    public var startPaused: Bool
    /// Where the UART's output is appended.
    public var consoleLog: String
    /// Bytes of guest RAM the bundled guest works over, split between its vCPUs. (An incoming machine takes
    /// this and the rate from its received configuration instead.)
    public var guestWorkingSet: UInt64
    /// Bytes per second the guest dirties in all; 0 means as fast as it can.
    public var guestDirtyRate: UInt64
    /// Disks, each a virtio-blk device; the bundled guest writes and checks the first.
    public var disks: [DiskConfig]
    /// Bytes per second the bundled guest writes to its disk; 0 is its default, 1 MiB/s.
    public var guestDiskRate: UInt64
    /// Boot this Linux kernel instead of the bundled guest.
    public var linux: LinuxBootOptions?
    /// Guest RAM on 2 MiB huge pages from the host's pool, all reserved at creation. A choice of this host's,
    /// never carried in a stream: each side of a migration makes its own.
    public var hugePages: Bool

    public init(
        memoryImage: String? = nil, memoryFile: String? = nil, startPaused: Bool = false, consoleLog: String,
        guestWorkingSet: UInt64 = 64 << 20, guestDirtyRate: UInt64 = 0, disks: [DiskConfig] = [], guestDiskRate: UInt64 = 0,
        linux: LinuxBootOptions? = nil, hugePages: Bool = false
    ) {
        self.linux = linux
        self.hugePages = hugePages
        self.memoryImage = memoryImage
        self.memoryFile = memoryFile
        self.startPaused = startPaused
        self.consoleLog = consoleLog
        self.guestWorkingSet = guestWorkingSet
        self.guestDirtyRate = guestDirtyRate
        self.disks = disks
        self.guestDiskRate = guestDiskRate
    }
}
