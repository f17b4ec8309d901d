import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// SIGUSR1 taken by `sigwait` on a thread of its own, so a progress line prints at once even while the main
/// thread is blocked in a read or a write. For a tool without an `InterruptWatcher`, which takes SIGUSR1 itself.
public enum ProgressSignal {
    /// Blocks SIGUSR1 in this thread and every thread it starts later; call before any other thread starts.
    public static func watch(_ request: ProgressRequest) throws {
        var signals = Self.signals
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        let thread = try startThread("the SIGUSR1 watcher") {
            var signals = Self.signals
            var received: Int32 = 0
            while true {
                if sigwait(&signals, &received) == 0 { request.raise() }
            }
        }
        pthread_detach(thread)
    }

    private static var signals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGUSR1)
        return set
    }
}
