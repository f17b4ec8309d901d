import SystemSupport

/// Rewrites every checksum of a stream so that a fuzzer's mutations reach the record parsers
/// instead of stopping at the first checksum mismatch. For fuzzing and tests only.
@_spi(Fuzzing)
public enum ChecksumRepair {
    public static func repair(_ input: [UInt8]) -> [UInt8] {
        var bytes = input
        bytes.withUnsafeMutableBytes { buffer in
            guard buffer.count >= StreamFormat.headerSize else { return }
            var running = Checksum.hash(UnsafeRawBufferPointer(rebasing: buffer[0..<24]))
            storeLE(buffer, 24, running)
            var offset = StreamFormat.headerSize
            while offset + StreamFormat.recordHeaderSize <= buffer.count {
                let type = loadLE(UnsafeRawBufferPointer(buffer), offset, as: UInt16.self)
                let flags = loadLE(UnsafeRawBufferPointer(buffer), offset + 2, as: UInt16.self)
                let length = loadLE(UnsafeRawBufferPointer(buffer), offset + 4, as: UInt32.self)
                let headerChecksum = Checksum.header(type: type, flags: flags, length: length)
                storeLE(buffer, offset + 8, headerChecksum)
                let payload = offset + StreamFormat.recordHeaderSize
                guard Int(length) <= StreamFormat.maxPayloadLength,
                    payload + Int(length) + StreamFormat.recordTrailerSize <= buffer.count
                else { return }
                let end = payload + Int(length)
                if type == RecordType.end.rawValue && Int(length) == Payload.endSize { storeLE(buffer, payload + 40, running) }
                let checksum = Checksum.hash(UnsafeRawBufferPointer(rebasing: buffer[payload..<end]), seed: headerChecksum)
                storeLE(buffer, end, checksum)
                running = Checksum.chain(running, checksum)
                offset = end + StreamFormat.recordTrailerSize
            }
        }
        return bytes
    }
}
