import SystemSupport

/// Reads little-endian record fields; running short throws the stream's own error instead of returning nil.
struct WireDecoder {
    private var reader: ByteReader
    /// Builds the error thrown for malformed content.
    let fail: @Sendable (String) -> StreamError

    init(_ bytes: [UInt8], range: Range<Int>? = nil, fail: @escaping @Sendable (String) -> StreamError) {
        reader = ByteReader(bytes, range: range)
        self.fail = fail
    }

    var remaining: Int { reader.remaining }
    var atEnd: Bool { reader.atEnd }
    var position: Int { reader.position }

    mutating func u8() throws -> UInt8 { try field(reader.u8()) }
    mutating func u16() throws -> UInt16 { try field(reader.u16()) }
    mutating func u32() throws -> UInt32 { try field(reader.u32()) }
    mutating func u64() throws -> UInt64 { try field(reader.u64()) }
    mutating func raw(_ count: Int) throws -> [UInt8] { try field(reader.raw(count)) }

    mutating func skip(_ count: Int) throws {
        guard reader.skip(count) else { throw fail("field runs past the end of the record") }
    }

    /// UTF-8 text; invalid encodings are an error, not a repair.
    /// UTF-8 without NUL (man/vmstream.5): a NUL would cut a name short wherever it is handed to C.
    mutating func text(_ count: Int, what: String) throws -> String {
        let utf8 = try raw(count)
        guard let string = String(validating: utf8, as: UTF8.self) else { throw fail("\(what) is not valid UTF-8") }
        guard !utf8.contains(0) else { throw fail("\(what) contains NUL") }
        return string
    }

    mutating func string16(what: String) throws -> String {
        try text(Int(try u16()), what: what)
    }

    private func field<T>(_ value: T?) throws -> T {
        guard let value else { throw fail("field runs past the end of the record") }
        return value
    }
}
