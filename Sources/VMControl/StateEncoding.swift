import MachineDescription
import SystemSupport

/// The binary form of a `MachineState` on the control socket. All integers little-endian:
///
///     u32 kernel chunk count, then that many chunks
///     u32 device chunk count, then that many chunks
///     chunk: u16 name length (1...255), name (UTF-8), u32 version, u32 data length, data
///
/// Decoding checks every length against the bytes that remain, so a bad payload is an error,
/// never a trap or an oversized allocation.
public enum StateEncoding {
    public static let maximumNameLength = StateLimits.maximumNameLength

    public static func encode(_ state: MachineState) throws -> [UInt8] {
        var bytes = ByteWriter(
            capacity: (state.kernel + state.devices).reduce(8) { $0 + 11 + $1.name.utf8.count + $1.data.count })
        for chunks in [state.kernel, state.devices] {
            bytes.u32(UInt32(chunks.count))
            for chunk in chunks {
                let name = Array(chunk.name.utf8)
                guard (1...maximumNameLength).contains(name.count) else {
                    throw ControlError("state chunk name '\(chunk.name)' must be 1 to \(maximumNameLength) bytes")
                }
                guard chunk.data.count <= Int(UInt32.max) else {
                    throw ControlError("state chunk '\(chunk.name)' is too large (\(chunk.data.count) bytes)")
                }
                bytes.u16(UInt16(name.count))
                bytes.raw(name)
                bytes.u32(chunk.version)
                bytes.u32(UInt32(chunk.data.count))
                bytes.raw(chunk.data)
            }
        }
        return bytes.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> MachineState {
        var reader = ByteReader(bytes)
        var lists: [[StateChunk]] = []
        for part in ["kernel", "device"] {
            guard let count = reader.u32() else { throw truncated(part + " chunk count") }
            var chunks: [StateChunk] = []
            for index in 0..<Int(count) {
                let what = "\(part) chunk \(index)"
                guard let nameLength = reader.u16() else { throw truncated(what) }
                guard (1...maximumNameLength).contains(Int(nameLength)) else {
                    throw ControlError("bad state: \(what) has a name of \(nameLength) bytes")
                }
                guard let nameBytes = reader.raw(Int(nameLength)),
                    let version = reader.u32(),
                    let dataLength = reader.u32(),
                    let data = reader.raw(Int(dataLength))
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
        var bytes = ByteWriter(capacity: words.count * 8)
        for word in words { bytes.u64(word) }
        return bytes.bytes
    }

    package static func decode(_ bytes: [UInt8]) throws -> [UInt64] {
        guard bytes.count % 8 == 0 else {
            throw ControlError("bad dirty bitmap: \(bytes.count) bytes is not a whole number of 64-bit words")
        }
        var reader = ByteReader(bytes)
        var words: [UInt64] = []
        words.reserveCapacity(bytes.count / 8)
        while let word = reader.u64() { words.append(word) }
        return words
    }
}
