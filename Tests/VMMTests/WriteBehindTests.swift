import Glibc
import SystemSupport
import Testing

/// Guest memory stored behind the reader's back (`WriteBehind`): after `drain`, every byte is where it was sent
/// and nothing else was written; a store that fails is reported, never lost, and never raises a signal.
struct WriteBehindTests {
    @Test func everyStoreLandsWhereItWasSentAndNowhereElse() throws {
        let file = try MemoryFile.create(name: "write-behind", segmentSizes: [64 << 20])
        let storer = try WriteBehind(file: file, buffers: 3)
        defer { storer.stop() }
        // More stores than buffers, some larger than a buffer, from one source buffer rewritten between calls (the
        // caller's buffer is its own again once `write` returns), 3 MiB apart.
        let source = UnsafeMutableRawPointer.allocate(byteCount: 3 << 20, alignment: 4096)
        defer { source.deallocate() }
        var sent: [(offset: Int, bytes: Int, seed: UInt8)] = []
        for index in 0..<20 {
            let bytes = index % 4 == 3 ? (5 << 19) : (index % 3 + 1) * 4096
            let seed = UInt8(truncatingIfNeeded: index &* 37 &+ 1)
            source.initializeMemory(as: UInt8.self, repeating: seed, count: bytes)
            try storer.write(offset: Int64(index * (3 << 20)), from: source, bytes: bytes)
            source.initializeMemory(as: UInt8.self, repeating: 0xee, count: 3 << 20)
            sent.append((index * (3 << 20), bytes, seed))
        }
        try storer.drain()
        // Counted before reading back: reading a hole of shared memory through the mapping fills it.
        var info = stat()
        #expect(fstat(file.descriptor.rawValue, &info) == 0)
        #expect(UInt64(info.st_blocks) * 512 == UInt64(sent.reduce(0) { $0 + $1.bytes }), "the rest is holes")
        for store in sent {
            let landed = UnsafeRawBufferPointer(start: file.base + store.offset, count: store.bytes + 4096)
            #expect(landed.prefix(store.bytes).allSatisfy { $0 == store.seed }, "store at \(store.offset)")
            #expect(landed.suffix(4096).allSatisfy { $0 == 0 }, "nothing past the store at \(store.offset)")
        }
    }

    @Test func aStoreThatFailsIsReportedByDrainAndByTheNextWrite() throws {
        let file = try MemoryFile.create(name: "write-behind-fails", segmentSizes: [1 << 20])
        let storer = try WriteBehind(file: file)
        defer { storer.stop() }
        let page = [UInt8](repeating: 1, count: 4096)
        try page.withUnsafeBytes { try storer.write(offset: .max - 1024, from: $0.baseAddress!, bytes: 4096) }
        #expect(throws: SystemError.self) { try storer.drain() }
        #expect(throws: SystemError.self) {
            try page.withUnsafeBytes { try storer.write(offset: 0, from: $0.baseAddress!, bytes: 4096) }
        }
    }

    /// Pages read into a lent buffer are queued from it as they are, several stores from one buffer; the buffer is
    /// free again only once they have landed and it is given back (with one buffer, the next store would hang if not).
    @Test func storesFromALentBufferLandAndTheBufferComesBack() throws {
        let file = try MemoryFile.create(name: "write-behind-lent", segmentSizes: [8 << 20])
        let storer = try WriteBehind(file: file, buffers: 1)
        defer { storer.stop() }
        #expect(storer.lend(bytes: WriteBehind.bufferBytes + 1) == nil, "too large to lend")
        let lent = try #require(storer.lend(bytes: 3 * 4096))
        for page in 0..<3 { (lent + page * 4096).initializeMemory(as: UInt8.self, repeating: UInt8(page + 1), count: 4096) }
        try storer.write(offset: 0, from: lent, bytes: 4096)
        try storer.write(offset: 1 << 20, from: lent + 4096, bytes: 2 * 4096)
        storer.giveBack()
        let page = [UInt8](repeating: 9, count: 4096)
        try page.withUnsafeBytes { try storer.write(offset: 4 << 20, from: $0.baseAddress!, bytes: 4096) }
        try storer.drain()
        for (offset, value) in [(0, 1), (1 << 20, 2), ((1 << 20) + 4096, 3), (4 << 20, 9)] {
            #expect(
                UnsafeRawBufferPointer(start: file.base + offset, count: 4096).allSatisfy { $0 == UInt8(value) }, "at \(offset)")
        }
    }

    /// A store from the lent buffer that fails is reported like any other, and nothing more is lent afterwards.
    @Test func aFailedStoreFromTheLentBufferIsReportedAndEndsTheLending() throws {
        let file = try MemoryFile.create(name: "write-behind-lent-fails", segmentSizes: [1 << 20])
        let storer = try WriteBehind(file: file)
        defer { storer.stop() }
        let lent = try #require(storer.lend(bytes: 4096))
        try storer.write(offset: .max - 1024, from: lent, bytes: 4096)
        storer.giveBack()
        #expect(throws: SystemError.self) { try storer.drain() }
        #expect(storer.lend(bytes: 4096) == nil)
    }

    /// A file that cannot hold the pages (here shrunk under the mapping, as a full tmpfs would refuse them) fails a
    /// store through the mapping with an error; a copy alone would die of SIGBUS.
    @Test func aFileThatCannotTakeThePagesFailsAStoreThroughTheMappingWithoutASignal() throws {
        let file = try MemoryFile.create(name: "write-behind-short", segmentSizes: [1 << 20])
        #expect(ftruncate(file.descriptor.rawValue, 4096) == 0)
        let page = [UInt8](repeating: 1, count: 4096)
        try page.withUnsafeBytes { try file.store(at: 0, $0) }
        #expect(throws: SystemError.self) { try page.withUnsafeBytes { try file.store(at: 8192, $0) } }
        #expect(throws: SystemError.self) { try page.withUnsafeBytes { try file.store(at: 1 << 20, $0) } }
        #expect(file.base.load(as: UInt8.self) == 1)
    }

    /// With one buffer, a second store may have to wait for it while the first fails: it hears of the failure, and
    /// does not hang.
    @Test func aStoreWaitingForABufferHearsOfTheOneThatFailed() throws {
        let file = try MemoryFile.create(name: "write-behind-waits", segmentSizes: [1 << 20])
        let storer = try WriteBehind(file: file, threads: 1, buffers: 1)
        defer { storer.stop() }
        let page = [UInt8](repeating: 1, count: 4096)
        try page.withUnsafeBytes { try storer.write(offset: .max - 1024, from: $0.baseAddress!, bytes: 4096) }
        #expect(throws: SystemError.self) {
            try page.withUnsafeBytes { try storer.write(offset: 0, from: $0.baseAddress!, bytes: 4096) }
        }
        #expect(throws: SystemError.self) { try storer.drain() }
    }
}
