import Glibc
import MachineDescription
import Migration
import SystemPackage
import SystemSupport
import VMControl
import VMStream

/// Where a receiver puts disks whose data travels in the stream.
public struct DiskPlacementChoice: Sendable {
    /// The folder for the images: `DIRECTORY/MACHINE-DISK.img`.
    public var directory: String
    /// Overwrite an image that already exists (as `zfs recv -F` does); refused otherwise.
    public var overwrite: Bool

    public init(directory: String, overwrite: Bool) {
        self.directory = RunDirectory.absolute(directory)
        self.overwrite = overwrite
    }

    /// The image path of `disk` of machine `machine`.
    public func path(machine: String, disk: String) -> String { directory + "/" + machine + "-" + disk + ".img" }

    /// Refuses, before anything is created, disks this host cannot take: an image that exists (without
    /// `overwrite`), a folder that cannot hold what the disks had allocated, a shared image that is missing or of
    /// another size. `vmrecv -n` and a receive both ask.
    public func checkRoom(for begin: StreamBegin, as machine: String) throws {
        var needed: UInt64 = 0
        for (disk, allocated) in zip(begin.machine.disks, begin.diskAllocation) {
            if disk.sharedStorage {
                try IncomingDisks.checkShared(disk)
                continue
            }
            let path = path(machine: machine, disk: disk.name)
            if !overwrite && access(path, F_OK) == 0 { throw MigrationError("\(path) exists; use -F to overwrite it") }
            needed += allocated
        }
        guard begin.machine.disks.contains(where: { !$0.sharedStorage }) else { return }
        var info = statvfs()
        guard statvfs(directory, &info) == 0 else {
            throw MigrationError("disk folder \(directory): \(String(cString: strerror(errno)))")
        }
        guard access(directory, W_OK) == 0 else { throw MigrationError("disk folder \(directory): write permission is needed") }
        let available = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        guard needed <= available else {
            throw MigrationError(
                "not enough space for the disks in \(directory): they hold \(ByteSize.format(needed)), the file system has \(ByteSize.format(available)) free"
            )
        }
    }
}

/// The disks of a machine being received: new sparse images for disks that travel, the same images for shared
/// storage (checked: present, of the right size). Only the files created here are ever removed.
final class IncomingDisks {
    /// The configuration with every disk's local path filled in.
    private(set) var config: MachineConfig
    private var created: [String] = []
    private var files: [Int: FileDescriptor] = [:]

    init(config received: MachineConfig, placement: DiskPlacementChoice) throws {
        config = received
        do {
            for index in config.disks.indices {
                if config.disks[index].sharedStorage {
                    try Self.checkShared(config.disks[index])
                } else {
                    let path = placement.path(machine: config.name, disk: config.disks[index].name)
                    files[index] = try create(path, size: config.disks[index].size, overwrite: placement.overwrite)
                    config.disks[index].path = path
                }
            }
        } catch {
            remove()
            throw error
        }
    }

    /// The images a partial receive created before (`config` as its vmrun holds it): opened again to go on writing
    /// them, and removed should the receive fail, as if created here.
    init(reopening config: MachineConfig) throws {
        self.config = config
        do {
            for (index, disk) in config.disks.enumerated() where !disk.sharedStorage {
                guard let path = disk.path else { throw MigrationError("disk \(disk.name) of the partial receive has no image") }
                let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
                guard fd >= 0 else {
                    throw MigrationError(
                        "cannot open the partial receive's disk image \(path): \(String(cString: strerror(errno)))")
                }
                files[index] = FileDescriptor(rawValue: fd)
                created.append(path)
            }
        } catch {
            for file in files.values { try? file.close() }
            throw error
        }
    }

    deinit { for file in files.values { try? file.close() } }

    /// A shared image must be there, readable and writable, and exactly the disk's size.
    static func checkShared(_ disk: DiskConfig) throws {
        guard let path = disk.path else { throw MigrationError("disk \(disk.name): shared storage without a path") }
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw MigrationError(
                "disk \(disk.name): the shared image \(path) is missing here (\(String(cString: strerror(errno))))")
        }
        guard UInt64(info.st_size) == disk.size else {
            throw MigrationError(
                "disk \(disk.name): the shared image \(path) holds \(info.st_size) bytes, the disk has \(disk.size)")
        }
        guard access(path, disk.readOnly ? R_OK : R_OK | W_OK) == 0 else {
            throw MigrationError("disk \(disk.name): \(path) needs \(disk.readOnly ? "read" : "read and write") permission here")
        }
    }

    /// A new sparse image of `size` bytes; an existing file only with `overwrite`.
    private func create(_ path: String, size: UInt64, overwrite: Bool) throws -> FileDescriptor {
        let flags = O_RDWR | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL)
        let fd = Glibc.open(path, flags, 0o600)
        guard fd >= 0 else {
            if errno == EEXIST { throw MigrationError("\(path) exists; use -F to overwrite it") }
            throw MigrationError("cannot create the disk image \(path): \(String(cString: strerror(errno)))")
        }
        created.append(path)
        let file = FileDescriptor(rawValue: fd)
        guard ftruncate(fd, off_t(size)) == 0 else {
            let error = SystemError.last("cannot size the disk image", path: path)
            try? file.close()
            throw MigrationError("\(error)")
        }
        return file
    }

    /// One-segment stores of the created images (nil for shared disks); each maps its own descriptor.
    func stores() throws -> [(any GuestMemory)?] {
        try config.disks.indices.map { index in
            guard let file = files[index] else { return nil }
            let disk = config.disks[index]
            return try MemoryFileGuestMemory(
                descriptor: FileDescriptor(rawValue: dup(file.rawValue)),
                segments: [MemorySegment(name: disk.name, guestPhysicalBase: 0, size: disk.size)], writable: true,
                writesBack: true)
        }
    }

    /// fdatasync of every created image.
    func sync() throws {
        for (index, file) in files { try file.dataSync(what: config.disks[index].path ?? config.disks[index].name) }
    }

    /// Removes the images created here.
    func remove() {
        for path in created { unlink(path) }
        created = []
    }
}
