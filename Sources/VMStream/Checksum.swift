import CStreamSupport
import CXXHash
import SystemSupport

/// XXH3-64 helpers: every checksum in the format is XXH3-64 (man/vmstream.5, CHECKSUMS).
enum Checksum {
    static func hash(_ buffer: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        XXH3_64bits_withSeed(buffer.baseAddress, buffer.count, seed)
    }

    static func hash(_ bytes: [UInt8], seed: UInt64 = 0) -> UInt64 {
        bytes.withUnsafeBytes { hash($0, seed: seed) }
    }

    /// The record header checksum: XXH3-64 of the header's first eight bytes.
    static func header(type: UInt16, flags: UInt16, length: UInt32) -> UInt64 {
        var fields = ByteWriter()
        fields.u16(type)
        fields.u16(flags)
        fields.u32(length)
        return hash(fields.bytes)
    }

    /// The running checksum after a record: XXH3-64 of the record checksum (u64 LE), seeded with the previous value.
    static func chain(_ running: UInt64, _ recordChecksum: UInt64) -> UInt64 {
        withUnsafeBytes(of: recordChecksum.littleEndian) { hash($0, seed: running) }
    }
}

/// XXH3-64 over data that arrives in pieces (page batches written or read without a copy); AVX2 where the CPU has it.
final class StreamingChecksum {
    private let state: OpaquePointer

    init() {
        guard let state = css_xxh3_create() else { fatalError("XXH3 state: out of memory") }
        self.state = state
    }

    deinit { css_xxh3_free(state) }

    func reset(seed: UInt64) { css_xxh3_reset(state, seed) }
    func update(_ buffer: UnsafeRawBufferPointer) { css_xxh3_update(state, buffer.baseAddress, buffer.count) }
    var digest: UInt64 { css_xxh3_digest(state) }
}
