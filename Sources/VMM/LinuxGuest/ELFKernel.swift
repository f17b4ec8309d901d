import Glibc
import SystemPackage
import SystemSupport

/// An uncompressed x86-64 Linux `vmlinux` as the PVH boot protocol loads it: its PT_LOAD segments go to their
/// physical addresses, and it starts at the address of its `XEN_ELFNOTE_PHYS32_ENTRY` note (not `e_entry`, the
/// 64-bit entry). Only the headers are read up front; segments are read straight into guest RAM.
struct ELFKernel {
    struct Segment {
        var physicalAddress: UInt64
        var fileOffset: UInt64
        var fileSize: UInt64
        var memorySize: UInt64
    }

    let path: String
    let segments: [Segment]
    /// `XEN_ELFNOTE_PHYS32_ENTRY`: where the 32-bit PVH entry code (`pvh_start_xen`) is, physically.
    let entry: UInt64

    static let pvhEntryNote: UInt32 = 18

    init(path: String) throws {
        self.path = path
        let file: FileDescriptor
        do { file = try FileDescriptor.open(path, .readOnly) } catch {
            throw MachineError("--kernel \(path): \(error)")
        }
        defer { try? file.close() }
        let size = try file.size(what: path)
        func read(_ count: Int, at offset: UInt64) throws -> ByteReader {
            guard offset.addingReportingOverflow(UInt64(count)).partialValue <= size else {
                throw MachineError("--kernel \(path): truncated ELF (\(count) bytes at \(offset) in a \(size)-byte file)")
            }
            var bytes = [UInt8](repeating: 0, count: count)
            try bytes.withUnsafeMutableBytes { try file.readFully(into: $0, at: offset, what: path) }
            return ByteReader(bytes)
        }
        var header = try read(64, at: 0)
        guard header.raw(4) == [0x7f, 0x45, 0x4c, 0x46], header.u8() == 2, header.u8() == 1 else {
            throw MachineError(
                "--kernel \(path): not a little-endian 64-bit ELF file (an uncompressed vmlinux is needed, not a bzImage)")
        }
        _ = header.skip(10)
        guard header.u16() == 2, header.u16() == 0x3e else { throw MachineError("--kernel \(path): not an x86-64 executable") }
        _ = header.skip(4 + 8)
        let programHeaders = header.u64()!
        _ = header.skip(8 + 4 + 2)
        let entrySize = header.u16()!
        let count = header.u16()!
        guard entrySize >= 56, count > 0, count < 256 else { throw MachineError("--kernel \(path): bad program header table") }
        var segments: [Segment] = []
        var entry: UInt64?
        for index in 0..<UInt64(count) {
            var program = try read(56, at: programHeaders + index * UInt64(entrySize))
            let type = program.u32()!
            _ = program.u32()
            let offset = program.u64()!
            _ = program.u64()  // virtual address: PVH loads at physical addresses
            let physical = program.u64()!
            let fileSize = program.u64()!
            let memorySize = program.u64()!
            guard fileSize <= memorySize, offset.addingReportingOverflow(fileSize).partialValue <= size else {
                throw MachineError("--kernel \(path): segment \(index) runs past the end of the file")
            }
            switch type {
            case 1:  // PT_LOAD
                if memorySize > 0 {
                    segments.append(
                        Segment(physicalAddress: physical, fileOffset: offset, fileSize: fileSize, memorySize: memorySize))
                }
            case 4:  // PT_NOTE
                entry = try entry ?? Self.pvhEntry(in: read(Int(min(fileSize, 1 << 20)), at: offset))
            default: break
            }
        }
        guard let entry else {
            throw MachineError(
                "--kernel \(path): no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); build the kernel with CONFIG_PVH")
        }
        self.segments = segments
        self.entry = entry
    }

    /// Finds the PVH entry among notes: `namesz, descsz, type`, then name and descriptor, each padded to 4 bytes.
    private static func pvhEntry(in notes: ByteReader) -> UInt64? {
        var reader = notes
        while let nameSize = reader.u32(), let descriptorSize = reader.u32(), let type = reader.u32() {
            let name = reader.raw(Int((nameSize + 3) & ~3))
            guard let descriptor = reader.raw(Int((descriptorSize + 3) & ~3)), name != nil else { return nil }
            if type == pvhEntryNote, name!.starts(with: Array("Xen".utf8)), descriptorSize == 4 || descriptorSize == 8 {
                var value = ByteReader(descriptor)
                return descriptorSize == 8 ? value.u64() : value.u32().map(UInt64.init)
            }
        }
        return nil
    }

    /// Copies every segment into guest RAM and zeroes the rest of each (.bss).
    func load(into ram: GuestRAM) throws {
        let file: FileDescriptor
        do { file = try FileDescriptor.open(path, .readOnly) } catch {
            throw MachineError("--kernel \(path): \(error)")
        }
        defer { try? file.close() }
        for segment in segments {
            guard let target = ram.pointer(guestPhysical: segment.physicalAddress, length: Int(segment.memorySize)) else {
                throw MachineError(
                    "--kernel \(path): a segment at 0x\(String(segment.physicalAddress, radix: 16)) of \(segment.memorySize) bytes lies outside guest RAM; give the machine more --memory"
                )
            }
            try file.readFully(
                into: UnsafeMutableRawBufferPointer(start: target, count: Int(segment.fileSize)), at: segment.fileOffset,
                what: path)
            (target + Int(segment.fileSize)).initializeMemory(
                as: UInt8.self, repeating: 0, count: Int(segment.memorySize - segment.fileSize))
        }
    }

    /// The highest physical address a segment reaches.
    var end: UInt64 { segments.map { $0.physicalAddress + $0.memorySize }.max() ?? 0 }
}
