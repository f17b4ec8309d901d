import SystemSupport

/// What is left of a stream after a damaged record, looked at to tell a sender interrupted mid-round (the stream
/// stops without END) from damage in a stream that goes on to its END.
enum StreamTail {
    /// Whether `bytes` are whole records (by their verified headers) of which the last is END.
    static func endsWithEnd(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        var lastType: UInt16?
        while offset + StreamFormat.recordHeaderSize <= bytes.count {
            let (type, flags, length, checksum) = bytes.withUnsafeBytes {
                (
                    loadLE($0, offset, as: UInt16.self), loadLE($0, offset + 2, as: UInt16.self),
                    loadLE($0, offset + 4, as: UInt32.self), loadLE($0, offset + 8, as: UInt64.self)
                )
            }
            guard Checksum.header(type: type, flags: flags, length: length) == checksum else { return false }
            offset += StreamFormat.recordHeaderSize + Int(length) + StreamFormat.recordTrailerSize
            lastType = type
        }
        return offset == bytes.count && lastType == RecordType.end.rawValue
    }
}
