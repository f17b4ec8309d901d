import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Standard error, shared by messages and a progress bar redrawn in place. Every write is whole and one at a
/// time, so a line printed from another thread (a signal watcher) never lands inside a bar, and a message
/// always starts on a line of its own.
public enum StandardError {
    /// True while a bar is drawn and its line not ended.
    private static let barShown = Mutex(false)
    /// On a terminal a line starts by clearing the one the cursor is on: another process on the same terminal
    /// (`vmsend -v | vmrecv -v`) may have left its bar there.
    private static let clearFirst = isatty(2) == 1 ? "\r\u{1b}[K" : ""

    /// Writes `line` and a newline; a bar on screen has its line ended first, keeping what it showed.
    public static func line(_ line: String) {
        barShown.withLock { shown in
            write((shown ? "\n" : "") + clearFirst + line + "\n")
            shown = false
        }
    }

    /// Writes `line` in place of a bar on screen (a round's summary, above the bar drawn next).
    public static func lineReplacingBar(_ line: String) {
        barShown.withLock { shown in
            write((shown ? "\r\u{1b}[K" : clearFirst) + line + "\n")
            shown = false
        }
    }

    /// Draws `bar` over the current bar, leaving the line open for the next redraw.
    public static func redraw(_ bar: String) {
        barShown.withLock { shown in
            write("\r" + bar + "\u{1b}[K")
            shown = true
        }
    }

    /// Ends the bar's line, keeping what it shows, so the next message starts below it.
    public static func endBar() {
        barShown.withLock { shown in
            if shown { write("\n") }
            shown = false
        }
    }

    private static func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let count = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            bytes = bytes.dropFirst(count)
        }
    }
}
