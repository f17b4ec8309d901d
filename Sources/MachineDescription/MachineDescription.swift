/// The vocabulary shared by the stream format, the control protocol and the VMM:
/// what a machine is, where it ran, and the opaque state chunks that carry it.
/// Nothing here knows about KVM or about bytes on the wire.

/// The host a machine ran on, as the bhyve prototype's hw.machine/hw.model/hw.pagesize check.
public struct HostSpec: Codable, Sendable, Equatable {
    /// `uname -m`, e.g. `x86_64`.
    public var architecture: String
    /// CPUID vendor string, e.g. `GenuineIntel`.
    public var cpuVendor: String
    /// `/proc/cpuinfo` model name.
    public var cpuModel: String
    public var pageSize: UInt32
    /// Hypervisor kind, e.g. `kvm` (later `bhyve`).
    public var hypervisor: String
    /// Hypervisor version, e.g. `api 12 (linux 6.18.44)`.
    public var hypervisorVersion: String

    public init(
        architecture: String, cpuVendor: String, cpuModel: String, pageSize: UInt32,
        hypervisor: String, hypervisorVersion: String
    ) {
        self.architecture = architecture
        self.cpuVendor = cpuVendor
        self.cpuModel = cpuModel
        self.pageSize = pageSize
        self.hypervisor = hypervisor
        self.hypervisorVersion = hypervisorVersion
    }
}

/// One contiguous range of guest-physical memory.
///
/// Segments are stored back to back, in the order a `MachineConfig` lists them, in the
/// machine's memory file (a memfd): the first at file offset 0, the next right after it.
public struct MemorySegment: Codable, Sendable, Equatable {
    /// `lowmem` (at guest-physical 0, at most 3 GiB) or `highmem` (from 4 GiB up).
    public var name: String
    public var guestPhysicalBase: UInt64
    /// Bytes; a multiple of the page size.
    public var size: UInt64

    public init(name: String, guestPhysicalBase: UInt64, size: UInt64) {
        self.name = name
        self.guestPhysicalBase = guestPhysicalBase
        self.size = size
    }

    /// Where each of `segments` starts in the memory file, where they lie back to back in order.
    public static func fileOffsets(_ segments: [MemorySegment]) -> [UInt64] {
        var next: UInt64 = 0
        return segments.map { segment in
            defer { next += segment.size }
            return next
        }
    }

    /// The bhyve layout: RAM up to 3 GiB at 0, the rest from 4 GiB up.
    public static func standardLayout(memorySize: UInt64) -> [MemorySegment] {
        let lowLimit: UInt64 = 3 << 30
        if memorySize <= lowLimit {
            return [MemorySegment(name: "lowmem", guestPhysicalBase: 0, size: memorySize)]
        }
        return [
            MemorySegment(name: "lowmem", guestPhysicalBase: 0, size: lowLimit),
            MemorySegment(name: "highmem", guestPhysicalBase: 4 << 30, size: memorySize - lowLimit),
        ]
    }
}

/// An emulated device and the configuration needed to recreate it.
public struct DeviceConfig: Codable, Sendable, Equatable {
    /// Instance name, unique in a machine, e.g. `uart0`. Device state chunks carry it.
    public var name: String
    /// Model, e.g. `uart16550`, `guest-status`. A receiver refuses a kind it does not know.
    public var kind: String
    /// Version of the device's state layout.
    public var version: UInt32
    /// Kind-specific settings, e.g. `port=0x3f8`, `irq=4`.
    public var configuration: [String: String]

    public init(name: String, kind: String, version: UInt32, configuration: [String: String]) {
        self.name = name
        self.kind = kind
        self.version = version
        self.configuration = configuration
    }
}

/// One CPUID leaf as the guest was given it (KVM_GET_CPUID2 of a vCPU).
public struct CPUIDLeaf: Codable, Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32, flags: UInt32, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

/// A disk the guest sees (a virtio-blk device names it), and how it travels with the machine.
public struct DiskConfig: Codable, Sendable, Equatable {
    /// Unique in a machine (`vda`, `vdb`); a virtio-blk device's `disk` setting and the stream's disk records use it.
    public var name: String
    /// Bytes; a multiple of 4 KiB, the unit disk data travels in.
    public var size: UInt64
    public var readOnly: Bool
    /// What the guest reads as the disk's id (virtio-blk GET_ID, at most 20 bytes); the same after a migration.
    public var serial: String
    /// The raw image on this host. A stream carries it only with shared storage, where both hosts open that path.
    public var path: String?
    /// Both hosts reach the same image (NFS, a SAN): its data does not travel, only its identity.
    public var sharedStorage: Bool

    /// The unit disk data travels and is tracked in.
    public static let blockSize: UInt64 = 4096
    /// Longest serial virtio-blk can report.
    public static let maximumSerialLength = 20

    public init(
        name: String, size: UInt64, readOnly: Bool = false, serial: String, path: String? = nil,
        sharedStorage: Bool = false
    ) {
        self.name = name
        self.size = size
        self.readOnly = readOnly
        self.serial = serial
        self.path = path
        self.sharedStorage = sharedStorage
    }

    /// 4 KiB blocks in the disk.
    public var blockCount: UInt64 { size / Self.blockSize }

    /// The 257 blocks, spread evenly over the disk, that its fingerprint samples (with its size): what a dry run
    /// keeps of a disk that travels, so that it can check the disk's state as a receive does.
    public var fingerprintBlocks: [UInt64] {
        let count = blockCount
        guard count > 0 else { return [] }
        return (0...UInt64(256)).map { min($0 * count / 256, count - 1) }
    }
}

/// Everything a receiver needs to recreate a machine before its state arrives.
public struct MachineConfig: Codable, Sendable, Equatable {
    public var name: String
    public var vcpuCount: UInt32
    public var segments: [MemorySegment]
    public var devices: [DeviceConfig]
    /// The CPUID the guest sees, so a receiver can check its host offers every feature first.
    public var cpuid: [CPUIDLeaf]
    /// Disks, in the order the stream numbers them.
    public var disks: [DiskConfig]

    public init(
        name: String, vcpuCount: UInt32, segments: [MemorySegment], devices: [DeviceConfig], cpuid: [CPUIDLeaf],
        disks: [DiskConfig] = []
    ) {
        self.name = name
        self.vcpuCount = vcpuCount
        self.segments = segments
        self.devices = devices
        self.cpuid = cpuid
        self.disks = disks
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        vcpuCount = try container.decode(UInt32.self, forKey: .vcpuCount)
        segments = try container.decode([MemorySegment].self, forKey: .segments)
        devices = try container.decode([DeviceConfig].self, forKey: .devices)
        cpuid = try container.decode([CPUIDLeaf].self, forKey: .cpuid)
        disks = try container.decodeIfPresent([DiskConfig].self, forKey: .disks) ?? []
    }

    /// Total guest RAM in bytes.
    public var memorySize: UInt64 { segments.reduce(0) { $0 + $1.size } }
}

/// A named, versioned blob of saved state: `vcpu0/regs`, `vm/pit`, `uart0`.
public struct StateChunk: Sendable, Equatable {
    public var name: String
    public var version: UInt32
    public var data: [UInt8]

    public init(name: String, version: UInt32, data: [UInt8]) {
        self.name = name
        self.version = version
        self.data = data
    }
}

/// The whole saved state of a paused machine, apart from its memory.
public struct MachineState: Sendable, Equatable {
    /// Hypervisor state: per vCPU and per VM, in save order.
    public var kernel: [StateChunk]
    /// One chunk per emulated device, named after the device.
    public var devices: [StateChunk]

    public init(kernel: [StateChunk], devices: [StateChunk]) {
        self.kernel = kernel
        self.devices = devices
    }
}

/// Where a machine is in its life. `incoming` is created but waiting for memory and state; `migrated` is paused
/// after a complete send, so that it never runs beside its copy (QEMU's postmigrate); `crashed` stopped by itself
/// (a triple fault, a KVM error) and cannot run again.
public enum RunState: String, Codable, Sendable {
    case running, paused, incoming, migrated, crashed
}

/// A send in progress, or one whose sender went away after its stream was complete.
public struct SendRecord: Codable, Sendable, Equatable {
    /// The stream's UUID, as text.
    public var stream: String
    /// Who sends, as it introduced itself: `vmsend pid 4242`.
    public var sender: String
    /// When the send started, ns since the Unix epoch.
    public var started: UInt64
    /// The sender paused the machine for this send.
    public var pausedBySender: Bool
    /// The sender was writing END or had written it: a copy may be running elsewhere.
    public var committed: Bool
    /// The sender's connection closed before it said how the send ended.
    public var senderGone: Bool

    public init(
        stream: String, sender: String, started: UInt64, pausedBySender: Bool = false, committed: Bool = false,
        senderGone: Bool = false
    ) {
        self.stream = stream
        self.sender = sender
        self.started = started
        self.pausedBySender = pausedBySender
        self.committed = committed
        self.senderGone = senderGone
    }
}

/// The send that made a machine `migrated`.
public struct MigrationRecord: Codable, Sendable, Equatable {
    public var stream: String
    /// When the stream was complete and taken by its reader, ns since the Unix epoch.
    public var completed: UInt64
    /// Where the stream went, as far as the sender could tell (a file, the command reading the pipe), if known.
    public var destination: String?

    public init(stream: String, completed: UInt64, destination: String?) {
        self.stream = stream
        self.completed = completed
        self.destination = destination
    }
}

/// What the bundled guest last reported for one vCPU through its status device.
public struct VCPUStatus: Codable, Sendable, Equatable {
    /// Monotonic work counter; it continues across a migration, never restarts at 0.
    public var tick: UInt64
    public var checksPassed: UInt64
    public var checksFailed: UInt64

    public init(tick: UInt64, checksPassed: UInt64, checksFailed: UInt64) {
        self.tick = tick
        self.checksPassed = checksPassed
        self.checksFailed = checksFailed
    }
}

/// What the bundled guest last reported of its disk: blocks written, and blocks read back and checked.
public struct DiskCheckStatus: Codable, Sendable, Equatable {
    public var writes: UInt64
    public var checksPassed: UInt64
    public var checksFailed: UInt64

    public init(writes: UInt64, checksPassed: UInt64, checksFailed: UInt64) {
        self.writes = writes
        self.checksPassed = checksPassed
        self.checksFailed = checksFailed
    }
}

/// The last heartbeat a guest printed on its console (`vmtest: beat=N key=value ...`, as the Linux test guest
/// does once a second): whether it is alive, and its own counters.
public struct GuestHeartbeat: Codable, Sendable, Equatable {
    public var beat: UInt64
    /// Seconds since the line arrived.
    public var secondsAgo: Double
    /// Every `key=value` of the line, `beat` included.
    public var fields: [String: String]

    public init(beat: UInt64, secondsAgo: Double, fields: [String: String]) {
        self.beat = beat
        self.secondsAgo = secondsAgo
        self.fields = fields
    }

    /// A guest that beats once a second and has not for this long is taken to be stuck.
    public static let aliveWithin = 5.0
    public var alive: Bool { secondsAgo <= Self.aliveWithin }
}

/// A machine's state as `vmctl status` shows it.
public struct MachineStatus: Codable, Sendable, Equatable {
    public var name: String
    public var state: RunState
    public var memorySize: UInt64
    /// Guest memory is on huge pages (`vmrun --hugepages`, or a memory file on hugetlbfs); absent from older vmruns,
    /// which had none.
    public var hugePages: Bool?
    /// Their size: 2 MiB, or 1 GiB for a memory file on a mount of 1 GiB pages; absent on small pages.
    public var hugePageSize: UInt64?
    public var vcpus: [VCPUStatus]
    public var uptimeSeconds: Double
    /// The vmrun process that owns the machine.
    public var pid: Int32
    /// The bundled guest's disk checks, when it has a disk.
    public var disk: DiskCheckStatus?
    /// The last heartbeat line the guest printed, when it prints them (the Linux test guest).
    public var heartbeat: GuestHeartbeat?
    /// Why a `crashed` machine stopped.
    public var failure: String?
    /// The send in progress, or the one whose sender went away with the outcome unknown.
    public var send: SendRecord?
    /// The send that made the machine `migrated`.
    public var migration: MigrationRecord?
    /// A resumable send's state kept here, for `vmsend -t`.
    public var resumable: ResumableSend?
    /// The partial receive an incoming machine holds (`vmrecv -s`).
    public var partial: PartialReceive?

    public init(
        name: String, state: RunState, memorySize: UInt64, vcpus: [VCPUStatus], uptimeSeconds: Double, pid: Int32,
        disk: DiskCheckStatus? = nil, heartbeat: GuestHeartbeat? = nil, failure: String? = nil, send: SendRecord? = nil,
        migration: MigrationRecord? = nil, hugePageSize: UInt64 = 0
    ) {
        self.hugePages = hugePageSize > 0
        self.hugePageSize = hugePageSize > 0 ? hugePageSize : nil
        self.heartbeat = heartbeat
        self.name = name
        self.state = state
        self.memorySize = memorySize
        self.vcpus = vcpus
        self.uptimeSeconds = uptimeSeconds
        self.pid = pid
        self.disk = disk
        self.failure = failure
        self.send = send
        self.migration = migration
    }
}

/// The limits on a machine's saved state that every layer shares, so that a state one layer accepts (a stream
/// reader, `vmrecv -n`) is never refused by another for its size (the control socket that carries it to vmrun).
public enum StateLimits {
    /// Bytes of chunk data in all, kernel and device: a receiver holds the state until END verifies.
    public static let maximumDataBytes = 64 << 20
    /// Distinct kernel chunks, and device chunks (one per device, at most this many devices).
    public static let maximumKernelChunks = 65536
    public static let maximumDevices = 1024
    /// Bytes of a chunk's name.
    public static let maximumNameLength = 255
    /// The most a whole state takes in the control socket's encoding: counts, then per chunk a u16 name length,
    /// the name, u32 version and u32 data length, then the data.
    public static let maximumEncodedBytes =
        8 + (maximumKernelChunks + maximumDevices) * (2 + maximumNameLength + 8) + maximumDataBytes
}
