import Glibc
import MachineDescription

/// How `vmrun` wants a machine set up, beyond its `MachineConfig`.
public struct MachineOptions: Sendable {
    /// File whose bytes preload guest RAM (segments back to back), for benchmarks (see `defersBootArea`).
    public var memoryImage: String?
    /// Guest RAM is this file (`vmrun --memory-file`); nil: a new memfd of the VM's own.
    public var memoryFile: GuestMemoryFile?
    /// RAM starts as bytes the user gave (an image, or a memory file that holds some) and the machine starts paused:
    /// the bundled guest's boot area waits for the first resume, so that a machine sent before it ever ran carries
    /// the user's bytes as they are.
    public var defersBootArea: Bool { startPaused && (memoryImage != nil || memoryFile?.holdsBytes == true) }
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
        memoryImage: String? = nil, memoryFile: GuestMemoryFile? = nil, startPaused: Bool = false, consoleLog: String,
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

/// A file named as guest RAM, as vmrun found it before opening it: what a failed start must put back.
public struct GuestMemoryFile: Sendable {
    public var path: String
    /// Nothing was there: vmrun creates it, and removes it should the machine not start.
    public var isNew: Bool
    /// It had bytes, which are the RAM the guest starts with; an empty file is sized, and emptied again on failure.
    public var holdsBytes: Bool

    public init(path: String, isNew: Bool, holdsBytes: Bool) {
        self.path = path
        self.isNew = isNew
        self.holdsBytes = holdsBytes
    }

    /// Leaves the file as it was found, after a start that failed.
    public func putBack() {
        if isNew {
            unlink(path)
        } else if !holdsBytes {
            truncate(path, 0)
        }
    }
}
