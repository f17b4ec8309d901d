/// Why a stream could not be written or read; its description is the one line a user sees.
public struct StreamError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: Sendable, Equatable {
        case badMagic, unsupportedVersion, unsupportedFeature, checksumMismatch, truncated, lengthTooLarge,
            malformed, outOfOrder, unknownRecord, terminal, io, misuse
    }

    public var kind: Kind
    public var message: String
    public var description: String { message }

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
}

extension StreamError {
    static func checksum(record: UInt64, what: String, offset: UInt64) -> StreamError {
        StreamError(.checksumMismatch, "checksum mismatch in record \(record) (\(what)) at byte \(offset)")
    }

    static func malformed(_ type: RecordType, record: UInt64, offset: UInt64, _ reason: String) -> StreamError {
        StreamError(.malformed, "malformed \(type) record \(record) at byte \(offset): \(reason)")
    }
}
