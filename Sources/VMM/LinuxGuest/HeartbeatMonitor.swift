import MachineDescription
import Synchronization
import SystemSupport

/// Keeps the last `vmtest: beat=N key=value ...` line a guest printed (the Linux test guest does once a second),
/// so `vmctl status` can say whether the guest is alive and show its own counters.
final class HeartbeatMonitor: Sendable {
    private let last = Mutex<(fields: [String: String], at: UInt64)?>(nil)
    static let prefix = "vmtest: beat="

    func observe(_ line: String) {
        guard let start = line.firstRange(of: Self.prefix) else { return }
        var fields: [String: String] = [:]
        for pair in line[start.lowerBound...].dropFirst("vmtest: ".count).split(separator: " ") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        guard fields["beat"].flatMap(UInt64.init) != nil else { return }
        last.withLock { $0 = (fields, HostClock.monotonicNanoseconds()) }
    }

    var heartbeat: GuestHeartbeat? {
        last.withLock { last in
            guard let last, let beat = last.fields["beat"].flatMap(UInt64.init) else { return nil }
            return GuestHeartbeat(
                beat: beat, secondsAgo: Double(HostClock.monotonicNanoseconds() - last.at) / 1e9, fields: last.fields)
        }
    }
}
