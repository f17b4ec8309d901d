import Foundation
import Glibc
import SystemSupport
import Testing

/// A reader of guest memory keeps only what it reads at the moment mapped, however scattered the pages it reads.
struct MemoryFileMappingTests {
    /// Resident bytes of the mapping that starts at `address`, from /proc/self/smaps.
    static func residentBytes(ofMappingAt address: UnsafeRawPointer) throws -> Int {
        // Read to the end: a file of /proc has no size, and a single read stops at a page.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        let start = String(UInt(bitPattern: address), radix: 16) + "-"
        var inMapping = false
        for line in smaps.split(separator: "\n") {
            if line.first?.isHexDigit == true && line.contains("-") && !line.hasSuffix(":") && !line.contains(": ") {
                inMapping = line.hasPrefix(start)
            } else if inMapping && line.hasPrefix("Rss:") {
                return (Int(line.split(separator: " ")[1]) ?? .max) << 10
            }
        }
        throw SystemError("no mapping at \(start) in /proc/self/smaps", errno: .noSuchFileOrDirectory)
    }

    /// A live round reads single dirty pages far apart. Each read fault maps its neighbours too (fault-around);
    /// dropping what was read must drop them as well.
    @Test func scatteredReadsDroppedOneByOneLeaveNothingMapped() throws {
        let bytes = 16 << 20
        let file = try MemoryFile.create(name: "scattered-reads", segmentSizes: [UInt64(bytes)])
        let data = [UInt8](repeating: 7, count: bytes)
        try data.withUnsafeBytes { try file.write(at: 0, $0) }  // in the file, not mapped
        #expect(try Self.residentBytes(ofMappingAt: file.base) == 0)
        var sum = 0
        for page in stride(from: 3, to: bytes / 4096, by: 16) {
            sum += Int(file.base.load(fromByteOffset: page * 4096, as: UInt8.self))
            file.dropMapping(segment: 0, pages: UInt64(page)..<UInt64(page + 1))
        }
        #expect(sum == 7 * bytes / 4096 / 16)
        let resident = try Self.residentBytes(ofMappingAt: file.base)
        #expect(resident <= 64 << 10, "\(resident) bytes of \(bytes) still mapped after every read was dropped")
    }
}
