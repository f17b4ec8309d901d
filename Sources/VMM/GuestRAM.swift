import Devices
import Glibc
import KVM
import MachineDescription
import Synchronization
import SystemPackage
import SystemSupport

/// Guest RAM: one memory file holding every segment back to back, registered with KVM slot by slot and reached by
/// guest-physical address. The file's descriptor is what vmrun lends its migration clients.
final class GuestRAM: GuestMemoryAccess, @unchecked Sendable {
    let segments: [MemorySegment]
    let file: MemoryFile
    /// Pages devices wrote while dirty logging is on, one bitmap per segment: KVM's log does not see them.
    private let deviceWritten = Mutex<[[UInt64]]?>(nil)

    /// A new memfd (on huge pages with `hugePages`), or the memory file the user named.
    init(name: String, segments: [MemorySegment], hugePages: Bool, memoryFile: GuestMemoryFile? = nil) throws {
        self.segments = segments
        let sizes = segments.map(\.size)
        if let memoryFile {
            do { file = try MemoryFile.open(path: memoryFile.path, segmentSizes: sizes, create: memoryFile.isNew) } catch {
                throw MachineError("--memory-file \(memoryFile.path): \(error)")
            }
        } else {
            file = try MemoryFile.create(name: name, segmentSizes: sizes, hugePages: hugePages)
        }
    }

    /// Unmaps and closes; only once no vCPU can touch the memory any more.
    func release() { file.release() }

    var descriptor: Int32 { file.descriptor.rawValue }

    func pointer(guestPhysical address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        for (index, segment) in segments.enumerated()
        where address >= segment.guestPhysicalBase && address - segment.guestPhysicalBase + UInt64(length) <= segment.size {
            return file.base + Int(file.segmentOffsets[index] + address - segment.guestPhysicalBase)
        }
        return nil
    }

    func noteWritten(guestPhysical address: UInt64, length: Int) {
        guard length > 0 else { return }
        deviceWritten.withLock { bitmaps in
            guard bitmaps != nil else { return }
            for (index, segment) in segments.enumerated()
            where address < segment.guestPhysicalBase + segment.size && address + UInt64(length) > segment.guestPhysicalBase {
                let first = (max(address, segment.guestPhysicalBase) - segment.guestPhysicalBase) / UInt64(pageSize)
                let last =
                    (min(address + UInt64(length), segment.guestPhysicalBase + segment.size) - 1 - segment.guestPhysicalBase)
                    / UInt64(pageSize)
                for page in first...last { bitmaps![index][Int(page / 64)] |= 1 << (page % 64) }
            }
        }
    }

    /// Starts (or stops) noting the pages devices write.
    func trackDeviceWrites(_ on: Bool) {
        deviceWritten.withLock { bitmaps in
            bitmaps = on ? segments.map { [UInt64](repeating: 0, count: Int(($0.size / UInt64(pageSize) + 63) / 64)) } : nil
        }
    }

    /// The pages devices wrote in `segment` since the last call; noting starts over.
    func takeDeviceWritten(segment: Int) -> [UInt64]? {
        deviceWritten.withLock { bitmaps in
            guard let words = bitmaps?[segment] else { return nil }
            bitmaps![segment] = [UInt64](repeating: 0, count: words.count)
            return words
        }
    }

    /// Registers every segment as a KVM memory slot (slot n = segment n), with or without dirty logging.
    func register(with vm: KVMVirtualMachine, logDirtyPages: Bool) throws(KVMError) {
        for (slot, segment) in segments.enumerated() {
            try vm.setMemoryRegion(
                slot: UInt32(slot), guestPhysical: segment.guestPhysicalBase, size: segment.size,
                userAddress: file.base + Int(file.segmentOffsets[slot]), logDirtyPages: logDirtyPages)
        }
    }

    /// Reads an image file into RAM (segments back to back), skipping all-zero pages so holes stay holes.
    func load(imagePath path: String) throws {
        let image: FileDescriptor
        do { image = try FileDescriptor.open(path, .readOnly) } catch {
            throw MachineError("--memory-image \(path): \(error)")
        }
        defer { try? image.close() }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: pageSize)
        defer { chunk.deallocate() }
        var offset = 0
        while true {
            let count: Int
            do { count = try image.read(into: chunk) } catch {
                throw MachineError("--memory-image \(path): \(error)")
            }
            if count == 0 { return }
            guard offset + count <= file.length else {
                throw MachineError("--memory-image \(path) is larger than guest memory (\(file.length) bytes)")
            }
            for page in stride(from: 0, to: count, by: pageSize) {
                let piece = UnsafeRawBufferPointer(rebasing: chunk[page..<min(page + pageSize, count)])
                if !isAllZero(piece) { (file.base + offset + page).copyMemory(from: piece.baseAddress!, byteCount: piece.count) }
            }
            offset += count
        }
    }
}
