import MachineDescription

extension TransferStart {
    /// The `-P` size line, first of all: `size`, expected stream bytes, mode, machine, stream UUID.
    public var parsable: String {
        ["size", estimatedTotalBytes.map { "\($0)" } ?? "-", mode, machine, uuid].joined(separator: "\t")
    }
}

extension TransferProgress {
    /// The `-v` line without a terminal:
    /// `round 2: 1234 pages, 4.8 MiB in 0.01 s (482 MiB/s); 321 dirty pages found (12 MiB/s); expected downtime 3 ms`.
    public var line: String {
        let name = isFinal ? "final round \(round)" : "round \(round)"
        if event == .progress {
            let percent = pagesInRound > 0 ? pagesDone * 100 / pagesInRound : 100
            return "\(name): \(pagesDone)/\(pagesInRound) pages (\(percent)%), \(ByteSize.format(roundBytes)) in "
                + "\(ByteSize.twoDecimals(roundSeconds)) s (\(ByteSize.format(UInt64(rate)))/s); stream "
                + "\(ByteSize.format(totalBytes))\(estimatedTotalBytes.map { " of about \(ByteSize.format($0))" } ?? "") "
                + "after \(clock(elapsed))"
        }
        var text =
            "\(name): \(pagesDone) pages, \(ByteSize.format(roundBytes)) in \(ByteSize.twoDecimals(roundSeconds)) s "
            + "(\(ByteSize.format(UInt64(rate)))/s)"
        if let dirtyPages {
            text += "; \(dirtyPages) dirty pages found (\(ByteSize.format(UInt64(dirtyRate ?? 0)))/s); expected downtime "
            text += expectedDowntime.map(milliseconds) ?? "unknown"
        }
        if let throttlePercent, throttlePercent > 0, !isFinal { text += "; vCPUs throttled \(throttlePercent)%" }
        return text
    }

    /// The `-P` line: tab-separated fields, the same from both tools, documented in vmsend(8) and vmrecv(8).
    public var parsable: String {
        [
            event.rawValue, "\(round)", "\(pagesDone)", "\(pagesInRound)", "\(roundBytes)", microseconds(roundSeconds),
            "\(UInt64(rate))", dirtyPages.map { "\($0)" } ?? "-", dirtyRate.map { "\(UInt64($0))" } ?? "-",
            expectedDowntime.map(microseconds) ?? "-", throttlePercent.map { "\($0)" } ?? "-", "\(totalBytes)",
            microseconds(elapsed), estimatedTotalBytes.map { "\($0)" } ?? "-",
        ].joined(separator: "\t")
    }

    /// One terminal line, redrawn in place, at most `columns - 1` wide so it never wraps; the figures that do not
    /// fit beside a bar of 10 are left out, the least important first:
    /// `round 2 [=====>     ] 45%  1.2 GiB/~2.0 GiB  310 MiB/s  0:03 ETA 0:04  1234 pages left  dirtying 12 MiB/s`.
    public func bar(columns: Int) -> String {
        let total = max(estimatedTotalBytes ?? totalBytes, totalBytes)
        let fraction = total > 0 ? min(1, Double(totalBytes) / Double(total)) : 1
        let average = elapsed > 0 ? Double(totalBytes) / elapsed : 0
        let eta = total <= totalBytes ? "0:00" : average > 0 ? clock(Double(total - totalBytes) / average) : "-:--"
        // Each figure padded to a usual width, so the bar keeps its length from one redraw to the next.
        var figures = [
            "\(Int(fraction * 100))%".rightAligned(4),
            "\(ByteSize.format(totalBytes))/~\(ByteSize.format(total))".leftAligned(21),
            "\(ByteSize.format(UInt64(rate)))/s".rightAligned(12), "\(clock(elapsed)) ETA \(eta)".leftAligned(13),
        ]
        if event == .progress { figures.append("\(pagesLeft) pages left".rightAligned(17)) }
        if let dirtyRate, !isFinal { figures.append("dirtying \(ByteSize.format(UInt64(dirtyRate)))/s".leftAligned(21)) }
        let name = isFinal ? "final round \(round)" : "round \(round)"
        let room = columns - 1 - name.count - " [] ".count
        var shown = figures.prefix(1).joined()
        for figure in figures.dropFirst() where shown.count + 2 + figure.count <= room - 10 {
            shown += "  " + figure
        }
        let width = max(10, room - shown.count)
        let filled = Int(fraction * Double(width))
        let meter = String(repeating: "=", count: filled) + (filled < width ? ">" : "")
        // A terminal narrower than all that still gets one line: a wrapped one could not be redrawn.
        return String("\(name) [\(meter.leftAligned(width))] \(shown)".prefix(max(columns - 1, 1))).trailingSpacesRemoved
    }
}

/// `m:ss`, or `h:mm:ss` from an hour on.
func clock(_ seconds: Double) -> String {
    let whole = Int(seconds.rounded(.down))
    let (hours, minutes, secs) = (whole / 3600, whole / 60 % 60, whole % 60)
    let mmss = "\(minutes < 10 && hours > 0 ? "0" : "")\(minutes):\(secs < 10 ? "0" : "")\(secs)"
    return hours > 0 ? "\(hours):\(mmss)" : mmss
}

extension String {
    /// Padded with spaces on the right to `width`.
    func leftAligned(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }

    /// Padded with spaces on the left to `width`.
    func rightAligned(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }

    var trailingSpacesRemoved: String {
        var text = self
        while text.last == " " { text.removeLast() }
        return text
    }
}
