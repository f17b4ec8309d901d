import CKVM
import Glibc
import MachineDescription
import SystemPackage

/// Guest RAM: one memfd holding every segment back to back, mapped shared into this process.
///
/// Nothing is populated up front: pages cost memory only once the guest (or an image) writes them.
/// `@unchecked Sendable`: the mapping is fixed for the object's life; the bytes are the guest's to race on.
final class GuestMemory: @unchecked Sendable {
    let segments: [MemorySegment]
    let fileDescriptor: Int32
    let base: UnsafeMutableRawPointer
    let size: Int

    init(name: String, segments: [MemorySegment]) throws {
        self.segments = segments
        size = Int(segments.reduce(0) { $0 + $1.size })
        let fd = ckvm_memfd_create("vm-" + name)
        guard fd >= 0 else { throw MachineError("memfd_create: \(Errno(rawValue: Glibc.errno))") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let error = Errno(rawValue: Glibc.errno)
            Glibc.close(fd)
            throw MachineError("cannot size guest memory to \(size) bytes: \(error)")
        }
        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0),
              mapping != MAP_FAILED else {
            let error = Errno(rawValue: Glibc.errno)
            Glibc.close(fd)
            throw MachineError("cannot map \(size) bytes of guest memory: \(error)")
        }
        fileDescriptor = fd
        base = mapping
    }

    /// Unmaps and closes; only once no vCPU can touch the memory any more.
    func release() {
        munmap(base, size)
        Glibc.close(fileDescriptor)
    }

    /// Offset of segment `index` in the memfd (and the mapping).
    func fileOffset(ofSegment index: Int) -> Int {
        Int(MemorySegment.fileOffsets(segments)[index])
    }

    /// Host address of `length` bytes at guest-physical `address`, when they lie in one segment.
    func pointer(guestPhysical address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        var offset = 0
        for segment in segments {
            if address >= segment.guestPhysicalBase, address - segment.guestPhysicalBase + UInt64(length) <= segment.size {
                return base + offset + Int(address - segment.guestPhysicalBase)
            }
            offset += Int(segment.size)
        }
        return nil
    }

    /// Reads an image file into RAM (segments back to back), skipping all-zero pages so holes stay holes.
    func load(imagePath path: String) throws {
        let file: FileDescriptor
        do { file = try FileDescriptor.open(path, .readOnly) } catch {
            throw MachineError("--memory-image \(path): \(error)")
        }
        defer { try? file.close() }
        let chunkSize = 1 << 20
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { chunk.deallocate() }
        var offset = 0
        while true {
            let count: Int
            do { count = try file.read(into: chunk) } catch {
                throw MachineError("--memory-image \(path): \(error)")
            }
            if count == 0 { return }
            guard offset + count <= size else {
                throw MachineError("--memory-image \(path) is larger than guest memory (\(size) bytes)")
            }
            var page = 0
            while page < count {
                let length = min(4096, count - page)
                let source = UnsafeRawBufferPointer(rebasing: chunk[page..<page + length])
                if !isAllZero(source) {
                    (base + offset + page).copyMemory(from: source.baseAddress!, byteCount: length)
                }
                page += length
            }
            offset += count
        }
    }
}

/// Whether every byte is zero, a word at a time.
func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    var index = 0
    while index + 8 <= bytes.count {
        if bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
        index += 8
    }
    while index < bytes.count {
        if bytes[index] != 0 { return false }
        index += 1
    }
    return true
}
