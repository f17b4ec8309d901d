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

    static func readGolden() throws -> [UInt8] {
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

    static func generate() throws -> [UInt8] { try Fixture.sample(memorySize: 64 << 10, compression: .lz4()) }

    @Test func writerReproducesTheGoldenStream() throws {
        let written = try Self.generate()
        if getenv("VMSTREAM_WRITE_GOLDEN") != nil {
            let fd = try FileDescriptor.open(
                Self.path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
            try fd.closeAfter { _ = try fd.writeAll(written) }
        }
        let golden = try Self.readGolden()
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
}
