/// Little-endian fields in byte arrays: the one codec every format of the project uses (stream records,
/// the control socket, device state).

/// Appends little-endian fields to a byte array.
public struct ByteWriter: Sendable {
    public var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) { integer(value) }
    public mutating func u32(_ value: UInt32) { integer(value) }
    public mutating func u64(_ value: UInt64) { integer(value) }
    public mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }
    public mutating func raw(_ value: some Sequence<UInt8>) { bytes.append(contentsOf: value) }

    /// A string prefixed with its UTF-8 length as u16; the caller has checked it fits.
    public mutating func string16(_ value: String) {
        let utf8 = Array(value.utf8)
        u16(UInt16(utf8.count))
        raw(utf8)
    }

    public mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Reads little-endian fields from a byte array; a read past the end returns nil instead of trapping.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var position: Int
    public let end: Int

    public init(_ bytes: [UInt8], range: Range<Int>? = nil) {
        self.bytes = bytes
        position = range?.lowerBound ?? 0
        end = range?.upperBound ?? bytes.count
    }

    public var remaining: Int { end - position }
    public var atEnd: Bool { position == end }

    public mutating func u8() -> UInt8? { integer(UInt8.self) }
    public mutating func u16() -> UInt16? { integer(UInt16.self) }
    public mutating func u32() -> UInt32? { integer(UInt32.self) }
    public mutating func u64() -> UInt64? { integer(UInt64.self) }

    /// A byte that must be 0 or 1.
    public mutating func bool() -> Bool? {
        guard let byte = u8(), byte <= 1 else { return nil }
        return byte == 1
    }

    public mutating func raw(_ count: Int) -> [UInt8]? {
        guard count >= 0, count <= remaining else { return nil }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    /// Moves past `count` bytes; false when fewer remain.
    public mutating func skip(_ count: Int) -> Bool {
        guard count >= 0, count <= remaining else { return false }
        position += count
        return true
    }

    public mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard size <= remaining else { return nil }
        var value: T = 0
        for index in 0..<size { value |= T(truncatingIfNeeded: bytes[position + index]) << (8 * index) }
        position += size
        return value
    }
}

/// Reads a little-endian integer from raw memory of any alignment.
@inlinable @inline(__always)
public func loadLE<T: FixedWidthInteger>(_ buffer: UnsafeRawBufferPointer, _ offset: Int, as: T.Type) -> T {
    T(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: T.self))
}

/// Stores a little-endian integer into raw memory of any alignment.
@inlinable @inline(__always)
public func storeLE<T: FixedWidthInteger>(_ buffer: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: T) {
    buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
}
