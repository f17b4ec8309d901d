import Glibc
import MachineDescription
import SystemSupport

/// The machine's own log: what happened to it and why (who paused it, a send's outcome, a crash), one timestamped
/// line each on vmrun's standard error, which a background vmrun keeps in `<run dir>/NAME.log`.
public enum EventLog {
    /// Writes `2026-11-21T10:45:12Z vmrun 'demo': TEXT`; control characters in TEXT are shown escaped.
    public static func note(machine: String, _ text: String) {
        let line =
            "\(UTCTime.format(HostClock.realtimeNanoseconds())) vmrun '\(machine)': \(UntrustedText.escapeControls(text))\n"
        let bytes = Array(line.utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}
