import Foundation
import Glibc
import SystemSupport
import Testing

/// A reader of guest memory keeps only what it reads at the moment mapped, however scattered the pages it reads, and
/// pages it lets go of keep their data.
struct MemoryFileMappingTests {
    /// Resident bytes of the mapping that starts at `address`, from /proc/self/smaps.
    static func residentBytes(ofMappingAt address: UnsafeRawPointer) throws -> Int {
        // Read to the end: a file of /proc has no size, and one read stops at a page.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        let start = String(UInt(bitPattern: address), radix: 16) + "-"
        var inMapping = false
        for line in smaps.split(separator: "\n") {
            if line.split(separator: " ").first?.contains("-") == true {  // a mapping's header: START-END PERMS ...
                inMapping = line.hasPrefix(start)
            } else if inMapping && line.hasPrefix("Rss:") {
                return (Int(line.split(separator: " ")[1]) ?? .max) << 10
            }
        }
        throw SystemError("no mapping at \(start) in /proc/self/smaps", errno: .noSuchFileOrDirectory)
    }

    /// Whether the page at `address` is mapped in this process now (/proc/self/pagemap, bit 63).
    static func isMapped(_ address: UnsafeRawPointer) throws -> Bool {
        let pagemap = open("/proc/self/pagemap", O_RDONLY)
        try #require(pagemap >= 0)
        defer { close(pagemap) }
        var entry: UInt64 = 0
        let offset = off_t(UInt(bitPattern: address) / 4096 * 8)
        try #require(pread(pagemap, &entry, 8, offset) == 8)
        return entry >> 63 == 1
    }

    /// A memory file of `bytes` whose every byte is `value`, held in the file and not mapped yet.
    static func filledFile(_ name: String, bytes: Int, value: UInt8) throws -> MemoryFile {
        let file = try MemoryFile.create(name: name, segmentSizes: [UInt64(bytes)])
        try [UInt8](repeating: value, count: bytes).withUnsafeBytes { try file.write(at: 0, $0) }
        return file
    }

    /// A live round reads single dirty pages far apart. Each read fault maps its neighbours too (fault-around); what
    /// the reader lets go of takes them along, and the data stays in the file.
    @Test func scatteredReadsLeaveNothingMappedButTheLastWindow() throws {
        let bytes = 16 << 20
        let file = try Self.filledFile("scattered-reads", bytes: bytes, value: 7)
        #expect(try Self.residentBytes(ofMappingAt: file.base) == 0)
        var release = ReadRelease(file)
        var sum = 0
        for page in stride(from: 3, to: bytes / 4096, by: 16) {
            sum += Int(file.base.load(fromByteOffset: page * 4096, as: UInt8.self))
            if page == 3 {
                // The premise: the fault mapped more than the page read (fault-around is on, as by default).
                #expect(try Self.residentBytes(ofMappingAt: file.base) > 4096)
            }
            release.done(reading: Int64(page * 4096)..<Int64(page * 4096 + 4096))
        }
        #expect(sum == 7 * bytes / 4096 / 16)
        let resident = try Self.residentBytes(ofMappingAt: file.base)
        #expect(resident <= 64 << 10, "\(resident) bytes of \(bytes) still mapped after every read was let go of")
        let pages = UnsafeRawBufferPointer(start: file.base, count: bytes)
        #expect(pages.allSatisfy { $0 == 7 }, "what was let go of is still in the file")
    }

    /// Reads that ascend within one window find it mapped (no fault each); it goes once a read ends in another one.
    @Test func theLastWindowStaysUntilAReadEndsInAnother() throws {
        let bytes = 1 << 20
        let file = try Self.filledFile("ascending-reads", bytes: bytes, value: 1)
        var release = ReadRelease(file)
        let window = file.faultAroundWindow(containing: 5 * 4096)
        let neighbour = window.lowerBound == 5 * 4096 ? 6 * 4096 : Int(window.lowerBound)  // a page of it not read
        _ = file.base.load(fromByteOffset: 5 * 4096, as: UInt8.self)
        release.done(reading: 5 * 4096..<6 * 4096)
        #expect(try Self.isMapped(file.base + neighbour), "the window of the last read stays mapped")
        let past = Int(window.upperBound) + 4096
        _ = file.base.load(fromByteOffset: past, as: UInt8.self)
        release.done(reading: Int64(past)..<Int64(past + 4096))
        #expect(try !Self.isMapped(file.base + neighbour), "gone once a read moved past it")
        #expect(try !Self.isMapped(file.base + 5 * 4096))
        // The mapping's last page: its window ends with the mapping, and goes when a read ends elsewhere (backwards).
        let lastPage = bytes - 4096
        #expect(file.faultAroundWindow(containing: Int64(lastPage)).upperBound == Int64(bytes))
        _ = file.base.load(fromByteOffset: lastPage, as: UInt8.self)
        release.done(reading: Int64(lastPage)..<Int64(bytes))
        #expect(try Self.isMapped(file.base + lastPage))
        release.done(reading: 0..<4096)
        #expect(try !Self.isMapped(file.base + lastPage))
    }

    /// A slice of a dense round spans many windows: all go but the last.
    @Test func aReadAcrossWindowsLeavesOnlyItsLastWindowMapped() throws {
        let bytes = 1 << 20
        let file = try Self.filledFile("wide-read", bytes: bytes, value: 2)
        var release = ReadRelease(file)
        let read = 4096..<(5 * MemoryFile.faultAroundBytes + 3 * 4096)  // from inside one window to inside the sixth on
        var sum = 0
        for offset in stride(from: read.lowerBound, to: read.upperBound, by: 4096) {
            sum += Int(file.base.load(fromByteOffset: offset, as: UInt8.self))
        }
        #expect(sum == 2 * read.count / 4096)
        release.done(reading: Int64(read.lowerBound)..<Int64(read.upperBound))
        let last = file.faultAroundWindow(containing: Int64(read.upperBound - 1))
        for offset in stride(from: 0, to: Int(last.lowerBound), by: 4096) {
            #expect(try !Self.isMapped(file.base + offset), "page at \(offset), before the last window")
        }
        #expect(try Self.isMapped(file.base + read.upperBound - 4096), "the last page read")
    }
}
