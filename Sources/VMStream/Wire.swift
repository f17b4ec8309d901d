import MachineDescription

/// Appends little-endian fields to a byte array.
struct WireEncoder {
    var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u16(_ value: UInt16) { append(value) }
    mutating func u32(_ value: UInt32) { append(value) }
    mutating func u64(_ value: UInt64) { append(value) }
    mutating func raw(_ value: [UInt8]) { bytes.append(contentsOf: value) }
    /// A string prefixed with its UTF-8 length as u16.
    mutating func string16(_ value: String) {
        let utf8 = Array(value.utf8)
        u16(UInt16(utf8.count))
        raw(utf8)
    }

    private mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Reads little-endian fields; running short throws instead of trapping.
struct WireDecoder {
    let bytes: [UInt8]
    var position: Int
    let end: Int
    /// Builds the error thrown for malformed content.
    let fail: @Sendable (String) -> StreamError

    init(_ bytes: [UInt8], range: Range<Int>? = nil, fail: @escaping @Sendable (String) -> StreamError) {
        self.bytes = bytes
        self.position = range?.lowerBound ?? 0
        self.end = range?.upperBound ?? bytes.count
        self.fail = fail
    }

    var remaining: Int { end - position }
    var atEnd: Bool { position == end }

    mutating func u8() throws -> UInt8 { UInt8(try integer(1)) }
    mutating func u16() throws -> UInt16 { UInt16(try integer(2)) }
    mutating func u32() throws -> UInt32 { UInt32(try integer(4)) }
    mutating func u64() throws -> UInt64 { try integer(8) }

    mutating func raw(_ count: Int) throws -> [UInt8] {
        guard count >= 0, count <= remaining else { throw fail("field runs past the end of the record") }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    /// UTF-8 text; invalid encodings are an error, not a repair.
    mutating func text(_ count: Int, what: String) throws -> String {
        let utf8 = try raw(count)
        guard let string = String(validating: utf8, as: UTF8.self) else { throw fail("\(what) is not valid UTF-8") }
        return string
    }

    mutating func string16(what: String) throws -> String {
        try text(Int(try u16()), what: what)
    }

    private mutating func integer(_ width: Int) throws -> UInt64 {
        guard width <= remaining else { throw fail("field runs past the end of the record") }
        var value: UInt64 = 0
        for index in 0..<width { value |= UInt64(bytes[position + index]) << (8 * index) }
        position += width
        return value
    }
}

/// Reads a little-endian integer from raw memory of any alignment.
@inline(__always)
func loadLE<T: FixedWidthInteger>(_ buffer: UnsafeRawBufferPointer, _ offset: Int, as: T.Type) -> T {
    T(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: T.self))
}

@inline(__always)
func storeLE<T: FixedWidthInteger>(_ buffer: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: T) {
    buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
}
