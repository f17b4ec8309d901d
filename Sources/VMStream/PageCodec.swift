import CLZ4

/// How the data pages of a PAGES batch are coded on the wire; the batch's encoding byte names the codec.
///
/// A writer codes a batch only when that makes it smaller; a reader looks the byte up in `PageCodecs.all` and refuses
/// one it does not know. Adding a codec (zstd, say) is one conformance here and one line in `PageCodecs.all`.
public protocol PageCodec: Sendable {
    /// The PAGES encoding byte (0 is raw, never a codec).
    var encoding: UInt8 { get }
    /// The name users type (`vmsend -c NAME`) and `vmstream dump` prints.
    var name: String { get }
    /// Room `encode` needs for `inputBytes`.
    func maximumEncodedSize(_ inputBytes: Int) -> Int
    /// Codes `input` into `output`; the coded size, or nil when it is not smaller than `input`.
    func encode(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int?
    /// Decodes into exactly `output.count` bytes; false when `input` does not decode to that.
    func decode(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool
}

/// The codecs this build knows.
public enum PageCodecs {
    public static let rawEncoding: UInt8 = 0
    public static let all: [any PageCodec] = [LZ4Codec()]

    public static func codec(encoding: UInt8) -> (any PageCodec)? { all.first { $0.encoding == encoding } }
    public static func codec(named name: String) -> (any PageCodec)? { all.first { $0.name == name } }
    /// The name of an encoding byte: `raw`, a codec's name, or its number.
    public static func name(of encoding: UInt8) -> String {
        encoding == rawEncoding ? "raw" : codec(encoding: encoding)?.name ?? "encoding \(encoding)"
    }
}

/// LZ4 block compression (liblz4): about 0.45 GB/s per core to code, 2.4 GB/s to decode on these machines.
public struct LZ4Codec: PageCodec {
    /// Higher is faster and compresses less; 1 is liblz4's default.
    public var acceleration: Int32
    public init(acceleration: Int32 = 1) { self.acceleration = acceleration }

    public var encoding: UInt8 { 1 }
    public var name: String { "lz4" }

    public func maximumEncodedSize(_ inputBytes: Int) -> Int { Int(LZ4_compressBound(Int32(inputBytes))) }

    public func encode(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
        let size = LZ4_compress_fast(
            input.baseAddress!.assumingMemoryBound(to: CChar.self),
            output.baseAddress!.assumingMemoryBound(to: CChar.self),
            Int32(input.count), Int32(output.count), acceleration)
        return size > 0 && Int(size) < input.count ? Int(size) : nil
    }

    public func decode(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        let size = LZ4_decompress_safe(
            input.baseAddress!.assumingMemoryBound(to: CChar.self),
            output.baseAddress!.assumingMemoryBound(to: CChar.self),
            Int32(input.count), Int32(output.count))
        return Int(size) == output.count
    }
}

/// Whether PAGES batches are coded, and with what: what a user chooses with `vmsend -c`.
public struct Compression: Sendable, Equatable, CustomStringConvertible {
    public let codec: (any PageCodec)?

    public init(codec: (any PageCodec)?) { self.codec = codec }

    public static let none = Compression(codec: nil)
    public static func lz4(acceleration: Int32 = 1) -> Compression { Compression(codec: LZ4Codec(acceleration: acceleration)) }

    /// `none` or a codec's name; nil for a name this build does not know.
    public static func named(_ name: String) -> Compression? {
        name == "none" ? Compression.none : PageCodecs.codec(named: name).map { Compression(codec: $0) }
    }

    /// Every name `named` accepts.
    public static var names: [String] { ["none"] + PageCodecs.all.map(\.name) }

    public var description: String { codec?.name ?? "none" }

    public static func == (lhs: Compression, rhs: Compression) -> Bool { lhs.description == rhs.description }
}
