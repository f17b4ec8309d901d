import VMControl

/// The `-P` output of vmsend and vmrecv, parsed strictly by the grammar of their man pages: a size line first,
/// round, final and progress lines, a summary line last, tab-separated, every figure a decimal number or `-`
/// where the page allows it. Other lines must be the tool's own messages (`vmsend: ...`).
struct ParsableOutput {
    struct Size {
        var estimatedBytes: UInt64?
        var mode: String
        var machine: String
        var uuid: String
    }

    struct Line {
        var kind: String
        var round: Int
        var pagesDone: UInt64
        var pagesInRound: UInt64
        var roundBytes: UInt64
        var roundMicroseconds: UInt64
        var rate: UInt64
        var dirtyPages: UInt64?
        var dirtyRate: UInt64?
        var expectedDowntimeMicroseconds: UInt64?
        var throttlePercent: UInt64?
        var totalBytes: UInt64
        var elapsedMicroseconds: UInt64
        var estimatedBytes: UInt64?
    }

    struct Summary {
        var streamBytes: UInt64
        var guestBytes: UInt64
        var pages: UInt64
        var zeroPages: UInt64
        var rounds: Int
        var elapsedMicroseconds: UInt64
        var rate: UInt64
        var pausedMicroseconds: UInt64?
        var downtimeMicroseconds: UInt64?
        var compressionRatio: Double
        /// Pause, dirty log, final pages, state, END (vmsend's); END read, restore, resume (vmrecv's).
        var switchOverMicroseconds: [UInt64?]
    }

    var size: Size
    var lines: [Line]
    var summary: Summary
    /// Lines outside the grammar: the tool's messages.
    var messages: [String]

    /// Round and final lines, without the progress lines between them.
    var rounds: [Line] { lines.filter { $0.kind != "progress" } }

    init(_ text: String, tool: String) throws {
        var size: Size?
        var summary: Summary?
        var lines: [Line] = []
        var messages: [String] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init) {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            let reader = FieldReader(fields: fields, line: line)
            switch fields[0] {
            case "size":
                guard size == nil, lines.isEmpty, summary == nil else { throw reader.error("a size line not first") }
                size = Size(
                    estimatedBytes: try reader.optional(1), mode: try reader.word(2, in: ["live", "warm", "cold"]),
                    machine: try reader.name(3), uuid: try reader.uuid(4))
                try reader.expectCount(5)
            case "round", "final", "progress":
                guard size != nil, summary == nil else { throw reader.error("a \(fields[0]) line outside size...summary") }
                lines.append(
                    Line(
                        kind: fields[0], round: Int(try reader.number(1)), pagesDone: try reader.number(2),
                        pagesInRound: try reader.number(3), roundBytes: try reader.number(4),
                        roundMicroseconds: try reader.number(5), rate: try reader.number(6),
                        dirtyPages: try reader.optional(7), dirtyRate: try reader.optional(8),
                        expectedDowntimeMicroseconds: try reader.optional(9), throttlePercent: try reader.optional(10),
                        totalBytes: try reader.number(11), elapsedMicroseconds: try reader.number(12),
                        estimatedBytes: try reader.optional(13)))
                try reader.expectCount(14)
            case "summary":
                guard size != nil, summary == nil else { throw reader.error("a second summary, or one before size") }
                summary = Summary(
                    streamBytes: try reader.number(1), guestBytes: try reader.number(2), pages: try reader.number(3),
                    zeroPages: try reader.number(4), rounds: Int(try reader.number(5)),
                    elapsedMicroseconds: try reader.number(6), rate: try reader.number(7),
                    pausedMicroseconds: try reader.optional(8), downtimeMicroseconds: try reader.optional(9),
                    compressionRatio: try reader.ratio(10),
                    switchOverMicroseconds: try (11..<19).map { try reader.optional($0) })
                try reader.expectCount(19)
            default:
                guard line.hasPrefix("\(tool): ") else { throw reader.error("neither a -P line nor a \(tool) message") }
                messages.append(line)
            }
        }
        guard let size, let summary else { throw ControlError("-P output without a size or a summary line:\n\(text)") }
        self.size = size
        self.lines = lines
        self.summary = summary
        self.messages = messages
    }
}

/// One line's fields, each read by the rule for it.
private struct FieldReader {
    let fields: [String]
    let line: String

    func error(_ what: String) -> ControlError { ControlError("\(what): '\(line)'") }

    func field(_ index: Int) throws -> String {
        guard index < fields.count else { throw error("field \(index + 1) missing") }
        return fields[index]
    }

    func expectCount(_ count: Int) throws {
        guard fields.count == count else { throw error("\(fields.count) fields, not \(count)") }
    }

    func number(_ index: Int) throws -> UInt64 {
        let text = try field(index)
        guard !text.isEmpty, text.allSatisfy(\.isASCIIDigit), let value = UInt64(text) else {
            throw error("field \(index + 1) '\(text)' is not a number")
        }
        return value
    }

    func optional(_ index: Int) throws -> UInt64? { try field(index) == "-" ? nil : try number(index) }

    func word(_ index: Int, in words: Set<String>) throws -> String {
        let text = try field(index)
        guard words.contains(text) else { throw error("field \(index + 1) '\(text)' is none of \(words.sorted())") }
        return text
    }

    func name(_ index: Int) throws -> String {
        let text = try field(index)
        guard !text.isEmpty, !text.contains(where: { $0.isWhitespace }) else { throw error("field \(index + 1) is no name") }
        return text
    }

    func uuid(_ index: Int) throws -> String {
        let text = try field(index)
        let groups = text.split(separator: "-", omittingEmptySubsequences: false).map(\.count)
        guard text == "-" || (groups == [8, 4, 4, 4, 12] && text.allSatisfy { $0 == "-" || $0.isHexDigit }) else {
            throw error("field \(index + 1) '\(text)' is no UUID")
        }
        return text
    }

    func ratio(_ index: Int) throws -> Double {
        let text = try field(index)
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[1].count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCIIDigit) }),
            let value = Double(text)
        else { throw error("field \(index + 1) '\(text)' is no ratio with two decimals") }
        return value
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
