import VMStream

/// Pages to send in a round, one bitmap per segment (bit n of word n/64 = page n), as KVM reports them.
public struct DirtyPages: Sendable, Equatable {
    public private(set) var bitmaps: [[UInt64]]
    public let pageCounts: [UInt64]

    public init(pageCounts: [UInt64]) {
        self.pageCounts = pageCounts
        bitmaps = pageCounts.map { [UInt64](repeating: 0, count: Int(($0 + 63) / 64)) }
    }

    /// Adds a bitmap fetched for `segment`; bits beyond the segment are ignored.
    public mutating func merge(segment: Int, _ words: [UInt64]) {
        let count = bitmaps[segment].count
        for index in 0..<min(words.count, count) { bitmaps[segment][index] |= words[index] }
        let tailBits = pageCounts[segment] % 64
        if tailBits != 0, count > 0 { bitmaps[segment][count - 1] &= (1 << tailBits) - 1 }
    }

    public mutating func merge(_ other: DirtyPages) {
        for segment in bitmaps.indices { merge(segment: segment, other.bitmaps[segment]) }
    }

    public var count: UInt64 {
        bitmaps.reduce(0) { total, words in words.reduce(total) { $0 + UInt64($1.nonzeroBitCount) } }
    }

    public var isEmpty: Bool { bitmaps.allSatisfy { $0.allSatisfy { $0 == 0 } } }

    /// Runs of set bits as page ranges, in segment and page order.
    public var ranges: [PageRange] {
        var ranges: [PageRange] = []
        for (segment, words) in bitmaps.enumerated() {
            var runStart: UInt64?
            for (index, word) in words.enumerated() {
                if word == 0, runStart == nil { continue }
                if word == ~0, runStart != nil { continue }
                for bit in 0..<64 {
                    let page = UInt64(index * 64 + bit)
                    let set = word & (1 << UInt64(bit)) != 0
                    if set, runStart == nil { runStart = page }
                    if !set, let start = runStart {
                        ranges.append(PageRange(segment: segment, firstPage: start, count: page - start))
                        runStart = nil
                    }
                }
            }
            if let start = runStart {
                ranges.append(PageRange(segment: segment, firstPage: start, count: UInt64(words.count * 64) - start))
            }
        }
        return ranges
    }
}
