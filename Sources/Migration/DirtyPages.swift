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

    /// Adds the pages of `ranges`.
    public mutating func insert(_ ranges: [PageRange]) {
        for range in ranges where range.segment < bitmaps.count {
            let end = min(range.firstPage + range.count, pageCounts[range.segment])
            var page = range.firstPage
            while page < end {
                let word = Int(page / 64)
                let bit = page % 64
                let span = min(64 - bit, end - page)
                let mask: UInt64 = span == 64 ? ~0 : ((1 << span) - 1) << bit
                bitmaps[range.segment][word] |= mask
                page += span
            }
        }
    }

    public mutating func merge(_ other: DirtyPages) {
        for segment in bitmaps.indices { merge(segment: segment, other.bitmaps[segment]) }
    }

    /// Forgets every page of areas `from...`.
    public mutating func clear(from area: Int) {
        for index in bitmaps.indices where index >= area { bitmaps[index] = bitmaps[index].map { _ in 0 } }
    }

    public var count: UInt64 {
        bitmaps.reduce(0) { total, words in words.reduce(total) { $0 + UInt64($1.nonzeroBitCount) } }
    }

    /// Runs of set bits as page ranges, in segment and page order.
    public var ranges: [PageRange] {
        bitmaps.enumerated().flatMap { Self.ranges(segment: $0.offset, words: $0.element) }
    }

    /// Runs of set bits of one segment's bitmap as page ranges.
    static func ranges(segment: Int, words: [UInt64]) -> [PageRange] {
        var ranges: [PageRange] = []
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
        return ranges
    }
}

/// Manual clearing: which of a round's pages to clear in the source's dirty log before each slice is copied.
///
/// A round copies its pages in segment and page order. Before a slice is copied, the round's pages from the
/// slice's first page on are cleared, through the slice's last page and on by whole words until about
/// `pagesPerRequest` pages, so scattered pages cost one request per batch rather than one per run. Only pages
/// of the round not yet copied are ever cleared: clearing a page that is not copied afterwards would lose its writes.
struct DirtyLogClearer {
    let pages: DirtyPages
    let pagesPerRequest: UInt64
    /// Per segment: every page of the round below this has been cleared.
    private var clearedEnd: [UInt64]
    /// Bitmap words per request at most (4 KiB), so a sparse round does not send a segment's whole bitmap.
    static let maximumWords = 512

    init(pages: DirtyPages, pagesPerRequest: UInt64) {
        self.pages = pages
        self.pagesPerRequest = pagesPerRequest
        clearedEnd = pages.pageCounts.map { _ in 0 }
    }

    /// The clear to send before copying `count` pages of the round from `firstPage` of `segment` (`firstPage` a
    /// multiple of 64, bit i of `bitmap` = page `firstPage + i`), or nil when those pages are cleared already.
    mutating func request(segment: Int, firstPage: UInt64, count: UInt64) -> (firstPage: UInt64, bitmap: [UInt64])? {
        let end = firstPage + count
        guard count > 0, end > clearedEnd[segment] else { return nil }
        let start = max(firstPage, clearedEnd[segment])
        let words = pages.bitmaps[segment]
        let firstWord = Int(start / 64)
        let startMask = ~UInt64(0) << (start % 64)
        var lastWord = Int((end - 1) / 64)
        var batch = UInt64((words[firstWord] & startMask).nonzeroBitCount)
        for word in words[(firstWord + 1)..<(lastWord + 1)] { batch += UInt64(word.nonzeroBitCount) }
        while batch < pagesPerRequest, lastWord + 1 < words.count, lastWord + 1 - firstWord < Self.maximumWords {
            lastWord += 1
            batch += UInt64(words[lastWord].nonzeroBitCount)
        }
        var bitmap = Array(words[firstWord...lastWord])
        bitmap[0] &= startMask
        clearedEnd[segment] = min(UInt64(lastWord + 1) * 64, pages.pageCounts[segment])
        return (UInt64(firstWord) * 64, bitmap)
    }
}
