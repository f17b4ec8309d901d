/// Sizes as people type them on a command line: `512M`, `6G`, `4.5G`, `65536`, `100M/s`.
/// Units are binary (K = 1024) and may be written `M`, `MB` or `MiB`, in either case.
public enum ByteSize {
    /// Parses a size in bytes; throws a one-line error naming the bad text.
    public static func parse(_ text: String) throws -> UInt64 {
        let trimmed = text.trimmingSpaces
        var digits = Substring(trimmed)
        var unit: UInt64 = 1
        let suffixes: [(String, UInt64)] = [("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40)]
        let lower = trimmed.lowercased()
        for (letter, multiplier) in suffixes {
            for suffix in [letter + "ib", letter + "b", letter] where lower.hasSuffix(suffix) {
                digits = digits.dropLast(suffix.count)
                unit = multiplier
                break
            }
            if unit != 1 { break }
        }
        if unit == 1, lower.hasSuffix("b") { digits = digits.dropLast() }
        let parts = digits.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let whole = parts[0]
        let fraction = parts.count > 1 ? parts[1] : ""
        guard !whole.isEmpty, whole.allSatisfy(\.isASCIIDigit), fraction.allSatisfy(\.isASCIIDigit),
            parts.count == 1 || !fraction.isEmpty, fraction.count <= 9
        else {
            throw SizeError("invalid size '\(text)': expected a number with an optional unit K, M, G or T, e.g. 512M or 4.5G")
        }
        guard let wholeValue = UInt64(whole) else { throw tooLarge(text) }
        let (wholeBytes, overflow) = wholeValue.multipliedReportingOverflow(by: unit)
        guard !overflow else { throw tooLarge(text) }
        var fractionBytes: UInt64 = 0
        if !fraction.isEmpty {
            var scale: UInt64 = 1
            for _ in fraction { scale *= 10 }
            let numerator = UInt64(fraction)! * unit
            guard numerator % scale == 0 else {
                throw SizeError("invalid size '\(text)': not a whole number of bytes")
            }
            fractionBytes = numerator / scale
        }
        let (total, overflowTotal) = wholeBytes.addingReportingOverflow(fractionBytes)
        guard !overflowTotal else { throw tooLarge(text) }
        return total
    }

    /// Parses a rate in bytes per second: `100M/s` (or `100M`); `0` means no limit.
    public static func parseRate(_ text: String) throws -> UInt64 {
        var size = text.trimmingSpaces
        if size.lowercased().hasSuffix("/s") { size.removeLast(2) }
        do {
            return try parse(size)
        } catch {
            throw SizeError("invalid rate '\(text)': expected a size per second, e.g. 100M/s, or 0 for no limit")
        }
    }

    /// A short human form: `512 MiB`, `4.5 GiB`, `4096 B`.
    public static func format(_ bytes: UInt64) -> String {
        let units: [(String, UInt64)] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        for (name, size) in units where bytes >= size {
            let tenths = (bytes % size) * 10 / size
            return tenths == 0 ? "\(bytes / size) \(name)" : "\(bytes / size).\(tenths) \(name)"
        }
        return "\(bytes) B"
    }

    /// Two decimals without Foundation: `1.5` as `1.50`.
    public static func twoDecimals(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }

    private static func tooLarge(_ text: String) -> SizeError {
        SizeError("invalid size '\(text)': too large")
    }
}

/// A size or rate that cannot be read, worded as one line for the user.
public struct SizeError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

extension String {
    fileprivate var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
