import MachineDescription

/// The binary form of a `MachineState` on the control socket. All integers little-endian:
///
///     u32 kernel chunk count, then that many chunks
///     u32 device chunk count, then that many chunks
///     chunk: u16 name length (1...255), name (UTF-8), u32 version, u32 data length, data
///
/// Decoding checks every length against the bytes that remain, so a bad payload is an error,
/// never a trap or an oversized allocation.
public enum StateEncoding {
    public static let maximumNameLength = 255

    public static func encode(_ state: MachineState) throws -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity((state.kernel + state.devices).reduce(8) { $0 + 11 + $1.name.utf8.count + $1.data.count })
        for chunks in [state.kernel, state.devices] {
            appendLE(UInt32(chunks.count), to: &bytes)
            for chunk in chunks {
                let name = Array(chunk.name.utf8)
                guard (1...maximumNameLength).contains(name.count) else {
                    throw ControlError("state chunk name '\(chunk.name)' must be 1 to \(maximumNameLength) bytes")
                }
                guard chunk.data.count <= Int(UInt32.max) else {
                    throw ControlError("state chunk '\(chunk.name)' is too large (\(chunk.data.count) bytes)")
                }
                appendLE(UInt16(name.count), to: &bytes)
                bytes += name
                appendLE(chunk.version, to: &bytes)
                appendLE(UInt32(chunk.data.count), to: &bytes)
                bytes += chunk.data
            }
        }
        return bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> MachineState {
        var reader = ByteReader(bytes)
        var lists: [[StateChunk]] = []
        for part in ["kernel", "device"] {
            guard let count = reader.readLE(UInt32.self) else { throw truncated(part + " chunk count") }
            var chunks: [StateChunk] = []
            for index in 0..<Int(count) {
                let what = "\(part) chunk \(index)"
                guard let nameLength = reader.readLE(UInt16.self) else { throw truncated(what) }
                guard (1...maximumNameLength).contains(Int(nameLength)) else {
                    throw ControlError("bad state: \(what) has a name of \(nameLength) bytes")
                }
                guard let nameBytes = reader.read(count: Int(nameLength)),
                      let version = reader.readLE(UInt32.self),
                      let dataLength = reader.readLE(UInt32.self),
                      let data = reader.read(count: Int(dataLength))
                else { throw truncated(what) }
                guard let name = String(validating: nameBytes, as: UTF8.self) else {
                    throw ControlError("bad state: \(what) has a name that is not UTF-8")
                }
                chunks.append(StateChunk(name: name, version: version, data: data))
            }
            lists.append(chunks)
        }
        guard reader.remaining == 0 else {
            throw ControlError("bad state: \(reader.remaining) bytes after the last chunk")
        }
        return MachineState(kernel: lists[0], devices: lists[1])
    }

    private static func truncated(_ what: String) -> ControlError {
        ControlError("bad state: truncated at \(what)")
    }
}

/// Dirty bitmaps travel as little-endian u64 words.
package enum BitmapEncoding {
    package static func encode(_ words: [UInt64]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(words.count * 8)
        for word in words { appendLE(word, to: &bytes) }
        return bytes
    }

    package static func decode(_ bytes: [UInt8]) throws -> [UInt64] {
        guard bytes.count % 8 == 0 else {
            throw ControlError("bad dirty bitmap: \(bytes.count) bytes is not a whole number of 64-bit words")
        }
        var reader = ByteReader(bytes)
        var words: [UInt64] = []
        words.reserveCapacity(bytes.count / 8)
        while let word = reader.readLE(UInt64.self) { words.append(word) }
        return words
    }
}

func appendLE<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
}

/// Reads fields from a byte array; a read past the end returns nil instead of trapping.
struct ByteReader {
    private let bytes: [UInt8]
    private var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    mutating func read(count: Int) -> [UInt8]? {
        guard count >= 0, count <= remaining else { return nil }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func readLE<T: FixedWidthInteger>(_: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard size <= remaining else { return nil }
        var value: T = 0
        for index in 0..<size { value |= T(bytes[offset + index]) << (8 * index) }
        offset += size
        return value
    }
}
