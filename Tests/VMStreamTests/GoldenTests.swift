import Glibc
import SystemPackage
import Testing

@testable import VMStream

/// A stream written by version 1 of the format, frozen byte for byte.
///
/// If this fails, the writer's output changed: that needs a new format version, not a new golden file.
/// (Set VMSTREAM_WRITE_GOLDEN=1 to rewrite it only when the format version itself changes.)
@Suite struct GoldenTests {
    static let path = FilePath(#filePath).removingLastComponent().appending("Resources/golden-v1.vms")
    /// The same with a disk: the disks feature, disk fields in BEGIN, DISK EXTENTS and DISK BLOCKS, END's disk totals.
    static let diskPath = FilePath(#filePath).removingLastComponent().appending("Resources/golden-v1-disk.vms")

    static func readGolden(_ path: FilePath = path) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, .readOnly)
        return try fd.closeAfter {
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
                if count == 0 { return bytes }
                bytes += chunk[0..<count]
            }
        }
    }

    static func generate(diskSize: UInt64 = 0) throws -> [UInt8] {
        try Fixture.sample(memorySize: 64 << 10, compression: .lz4(), diskSize: diskSize)
    }

    @Test(arguments: [(UInt64(0), path), (32 << 10, diskPath)])
    func writerReproducesTheGoldenStream(diskSize: UInt64, path: FilePath) throws {
        let written = try Self.generate(diskSize: diskSize)
        if getenv("VMSTREAM_WRITE_GOLDEN") != nil {
            let fd = try FileDescriptor.open(
                path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
            try fd.closeAfter { _ = try fd.writeAll(written) }
        }
        let golden = try Self.readGolden(path)
        #expect(golden.count == written.count)
        #expect(
            golden == written,
            "first difference at byte \(golden.indices.first { $0 < written.count && golden[$0] != written[$0] } ?? -1)")
    }

    @Test func readerAcceptsTheGoldenStream() throws {
        let golden = try Self.readGolden()
        let reader = StreamReader(bytes: golden)
        var types: [RecordType] = []
        while try reader.next(into: DiscardingPageSink()) != nil { types.append(reader.lastRecord!.type) }
        #expect(types.first == .begin && types.last == .end)
        #expect(reader.begin?.uuidString == "10111213-1415-1617-1819-1a1b1c1d1e1f")
        #expect(reader.statistics.compressedBatches > 0 && reader.statistics.rawBatches > 0)
        #expect(reader.statistics.pages == 16 + 16)
    }

    @Test func readerAcceptsTheGoldenStreamWithADisk() throws {
        let reader = StreamReader(bytes: try Self.readGolden(Self.diskPath))
        var types: [RecordType] = []
        while try reader.next(into: DiscardingPageSink()) != nil { types.append(reader.lastRecord!.type) }
        // RESUME opens continuations only (ResumeTests).
        #expect(Set(types) == Set(RecordType.known).subtracting([.resume]))
        #expect(reader.begin?.machine.disks.map(\.name) == ["vda"])
        #expect(reader.statistics.diskBlocks == 8 + 2)
        #expect(reader.statistics.pages == 16 + 16)
    }
}
