import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// SIGINT, SIGTERM, SIGHUP and SIGUSR1 for both tools, taken by `sigwait` on a thread of their own. They are blocked in
/// every thread, so what a stop does is not limited to async-signal-safe calls, and SIGUSR1's progress line prints at
/// once even while the main thread is blocked in a read or a write.
enum StopSignals {
    /// Blocks the signals in this thread and every thread it starts later: call before any other thread starts, or a
    /// thread started earlier takes a signal's default action and the process dies without a word.
    /// SIGUSR1 raises `progressRequest`; the first of the others calls `stop` with "interrupted", "terminated" or
    /// "hung up".
    static func watch(progressRequest: ProgressRequest, stop: @escaping @Sendable (String) -> Void) {
        var signals = watched
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        do {
            let thread = try startThread("the signal watcher") {
                var signals = watched
                var received: Int32 = 0
                while sigwait(&signals, &received) != 0 || received == SIGUSR1 {
                    if received == SIGUSR1 { progressRequest.raise() }
                    received = 0
                }
                stop(received == SIGINT ? "interrupted" : received == SIGTERM ? "terminated" : "hung up")
            }
            pthread_detach(thread)
        } catch {
            // Without a watcher the signals stay blocked until exit; say so rather than ignore them unannounced.
            StandardError.line("warning: \(error); interrupts wait until the transfer ends")
        }
    }

    private static var watched: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGUSR1] { sigaddset(&set, signal) }
        return set
    }
}
