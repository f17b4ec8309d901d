import Glibc

/// The clocks the tools read: monotonic for intervals, the wall clock for times that cross hosts.
public enum HostClock {
    /// CLOCK_MONOTONIC in nanoseconds.
    public static func monotonicNanoseconds() -> UInt64 { read(CLOCK_MONOTONIC) }

    /// CLOCK_REALTIME in nanoseconds since the Unix epoch.
    public static func realtimeNanoseconds() -> UInt64 { read(CLOCK_REALTIME) }

    public static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    public static func seconds(since start: ContinuousClock.Instant) -> Double {
        seconds(ContinuousClock.now - start)
    }

    /// Whole milliseconds of a duration, for poll(2) timeouts; at least 1 when positive.
    public static func milliseconds(_ duration: Duration) -> Int32 {
        guard duration > .zero else { return 0 }
        let ms = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return Int32(clamping: max(1, ms + 1))
    }

    private static func read(_ clock: clockid_t) -> UInt64 {
        var now = timespec()
        clock_gettime(clock, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
