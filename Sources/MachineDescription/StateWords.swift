/// How a machine's state and its sends are worded, the same in `vmctl status`, in vmrun's log and in refusals.
extension MigrationRecord {
    /// `stream 1f0c…, 2026-11-21T10:45:12Z, to ssh dst vmrecv demo`
    public var summary: String {
        var text = "stream \(stream), \(UTCTime.format(completed))"
        if let destination { text += ", to " + UntrustedText.escape(destination) }
        return text
    }
}

extension SendRecord {
    /// `paused by vmsend pid 4242 for stream 1f0c…` and what became of the sender.
    public var summary: String {
        let who = UntrustedText.escape(sender)
        var text = pausedBySender ? "paused by \(who) for stream \(stream)" : "sent by \(who) as stream \(stream)"
        if senderGone {
            text +=
                committed
                ? ", sender gone after the stream was complete, outcome unknown: check the destination before resuming"
                : ", sender gone before the stream was complete"
        } else {
            text += committed ? ", stream complete, waiting for the sender to finish" : ", in progress"
        }
        return text
    }
}

extension MachineStatus {
    /// `migrated (stream …, when, to whom)`, `paused (paused by vmsend pid N for stream …)`, `crashed (reason)`,
    /// or the plain state.
    public var stateDescription: String {
        switch state {
        case .migrated: return "migrated" + (migration.map { " (\($0.summary))" } ?? "")
        case .crashed: return "crashed" + (failure.map { " (\(UntrustedText.escape($0)))" } ?? "")
        default:
            if let partial { return "incoming, partial receive (\(partial.summary))" }
            return state.rawValue + (send.map { " (\($0.summary))" } ?? "")
        }
    }
}

/// ISO 8601 UTC times without Foundation or the C library: `2026-11-21T10:45:12Z`.
public enum UTCTime {
    public static func format(_ nanosecondsSinceEpoch: UInt64) -> String {
        let seconds = Int64(nanosecondsSinceEpoch / 1_000_000_000)
        let days = seconds / 86400
        let secondOfDay = seconds % 86400
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let shifted = days + 719_468
        let era = shifted / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return
            "\(year)-\(two(month))-\(two(day))T\(two(secondOfDay / 3600)):\(two(secondOfDay / 60 % 60)):\(two(secondOfDay % 60))Z"
    }
}
