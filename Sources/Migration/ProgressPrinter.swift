import Synchronization
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// What vmsend and vmrecv print on stderr about a transfer: nothing unless asked (as `zfs send`); with `-v` a
/// line per round and one a second, or on a terminal a bar redrawn in place under the round lines; with `-P`
/// tab-separated lines from a size line to a summary line. SIGUSR1 prints the progress at once in any case.
public final class ProgressPrinter: Sendable {
    public enum Style: Sendable, Equatable {
        case quiet, lines, bar, parsable
    }

    public let style: Style
    /// Put before each line and bar for a person (`received `): both ends may share one terminal.
    public let label: String
    /// The bar last drawn, redrawn whole at the end.
    private let lastBar = Mutex<TransferProgress?>(nil)

    public init(style: Style, label: String = "") {
        self.style = style
        self.label = label
    }

    /// `-P` wins over `-v`; a bar only where a person watches stderr.
    public convenience init(verbose: Bool, parsable: Bool, label: String = "", terminal: Bool = isatty(2) == 1) {
        self.init(style: parsable ? .parsable : verbose ? (terminal ? .bar : .lines) : .quiet, label: label)
    }

    public func start(_ start: TransferStart) {
        if style == .parsable { StandardError.line(start.parsable) }
    }

    /// A round's end, or a progress line that is due.
    public func show(_ progress: TransferProgress) {
        switch style {
        case .quiet: break
        case .parsable: StandardError.line(progress.parsable)
        case .lines: StandardError.line(label + progress.line)
        case .bar:
            if progress.event != .progress { StandardError.lineReplacingBar(label + progress.line) }
            draw(progress)
        }
    }

    /// The progress asked for with SIGUSR1, printed from the signal watcher's thread.
    public func showNow(_ progress: TransferProgress) {
        switch style {
        case .parsable: StandardError.line(progress.parsable)
        case .bar: draw(progress)
        case .quiet, .lines: StandardError.line(label + progress.line)
        }
    }

    /// Ends the bar's line, showing all `streamBytes` done, and prints the summary the style calls for.
    public func finish(streamBytes: UInt64, summary: String, parsable: String) {
        if style == .bar, var last = lastBar.withLock({ $0 }) {
            last.totalBytes = streamBytes
            last.estimatedTotalBytes = streamBytes
            draw(last)
        }
        StandardError.endBar()
        switch style {
        case .quiet: break
        case .lines, .bar: StandardError.line(summary)
        case .parsable: StandardError.line(parsable)
        }
    }

    /// Connects a transfer's events and SIGUSR1 requests to this printer.
    public func attach(to request: ProgressRequest) {
        request.onRaise { [self] in showNow($0) }
    }

    private func draw(_ progress: TransferProgress) {
        lastBar.withLock { $0 = progress }
        StandardError.redraw(label + progress.bar(columns: Self.terminalColumns() - label.count))
    }

    /// The width of the terminal on stderr (it may change while the bar runs); 80 when unknown.
    static func terminalColumns() -> Int {
        var size = winsize()
        if ioctl(2, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return 80
    }
}
