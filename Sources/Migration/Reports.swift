import MachineDescription
import VMStream

/// The `-v` summaries, the `-P` summary lines and the downtime warning, worded the same way on both sides:
/// rates are stream bytes per second, and downtime is from the source's pause to the resume of the copy.
extension SendReport {
    /// `sent VM 'demo' (2 GiB): 1.0 GiB stream in 3 rounds, 0.61 s (1.6 GiB/s); 262144 pages, 131072 of them zero
    /// (not sent); the source was paused 15 ms before the stream ended (pause 2 ms, dirty log 1 ms, final pages 9 ms, state
    /// 2 ms, END 1 ms)`
    public var summary: String {
        let stats = statistics
        var line =
            "sent VM '\(machine)' (\(ByteSize.format(guestBytes))): \(streamFigures(stats, rounds: rounds, seconds: seconds)); "
            + "\(stats.pages) pages, \(stats.zeroPages) of them zero (not sent)"
        if stats.compressedBatches > 0 { line += "; compression ratio \(ByteSize.twoDecimals(stats.compressionRatio))" }
        if disksTravelled { line += "; \(stats.diskBlocks) disk blocks, \(stats.diskZeroBlocks) of them zero" }
        if sourceWasRunning {
            line += "; the source was paused \(milliseconds(pausedSeconds)) before the stream ended (\(switchOver.text))"
        }
        if disksTravelled { line += " (final round: \(finalRoundPages) pages, \(finalRoundDiskBlocks) disk blocks)" }
        return line
    }

    /// `summary` and the fields of vmsend(8); the downtime is vmrecv's to measure.
    public var parsableSummary: String {
        parsableSummaryLine(
            statistics, guestBytes: guestBytes, rounds: rounds, seconds: seconds,
            paused: sourceWasRunning ? pausedSeconds : nil, downtime: nil, switchOver: switchOver)
    }

    /// A live send whose source was paused longer than the target before the stream even ended.
    public func missedDowntimeTarget(_ target: Duration) -> String? {
        let targetSeconds = Double(target.components.seconds) + Double(target.components.attoseconds) / 1e18
        guard mode == .live, sourceWasRunning, pausedSeconds > targetSeconds else { return nil }
        return "missed the downtime target of \(milliseconds(targetSeconds)): the source was paused "
            + "\(milliseconds(pausedSeconds)) before the stream ended, and the downtime lasts until the copy resumes"
    }
}

extension ReceiveReport {
    /// `received VM 'demo' (2 GiB) as 'copy': 1.0 GiB stream in 3 rounds, 0.61 s (1.6 GiB/s); downtime 19 ms from the
    /// source's pause to the resume here (END read 15 ms, restore 3 ms, resume 1 ms)`
    public func summary(dryRun: Bool) -> String {
        var line =
            "\(dryRun ? "verified" : "received") VM \(UntrustedText.quote(begin.machine.name))"
            + " (\(ByteSize.format(begin.machine.memorySize)))"
            + (name == begin.machine.name ? "" : " as '\(name)'")
            + ": \(streamFigures(statistics, rounds: rounds, seconds: seconds))"
        if statistics.compressedBatches > 0 {
            line += "; compression ratio \(ByteSize.twoDecimals(statistics.compressionRatio))"
        }
        guard !dryRun else { return line }
        switch downtime {
        case .measured(let seconds):
            line += "; downtime \(milliseconds(seconds)) from the source's pause to the resume here (\(switchOver.text))"
        case .coldRestore: line += "; a cold restore, so no downtime"
        case .notResumed: line += "; left paused: the downtime lasts until it is resumed"
        case .unknown: line += "; downtime unknown (the source was not paused by the send, or the clocks disagree)"
        }
        return line
    }

    /// `summary` and the fields of vmrecv(8).
    public var parsableSummary: String {
        parsableSummaryLine(
            statistics, guestBytes: begin.machine.memorySize, rounds: rounds, seconds: seconds, paused: nil,
            downtime: downtimeSeconds, switchOver: switchOver)
    }
}

extension StreamBegin {
    /// What `vmrecv -n -v` would do with this stream.
    public func dryRunDescription(as name: String) -> String {
        let text = UntrustedText.escape
        let segments = machine.segments.map { "\(text($0.name)) \(ByteSize.format($0.size)) at \($0.guestPhysicalBase)" }
        let devices = machine.devices.map { "\(text($0.name)) (\(text($0.kind)) v\($0.version))" }
        return "would restore \(mode.rawValue) stream of VM \(UntrustedText.quote(machine.name)) as '\(name)': "
            + "\(machine.vcpuCount) vCPUs, memory \(segments.joined(separator: ", ")), devices "
            + "\(devices.joined(separator: ", ")); from \(text(host.architecture)) \(text(host.cpuModel)), "
            + "\(text(host.hypervisor)) \(text(host.hypervisorVersion))"
    }
}

/// `1.0 GiB stream in 3 rounds, 0.61 s (1.6 GiB/s)`: the rate is stream bytes over the whole time.
private func streamFigures(_ stats: StreamStatistics, rounds: Int, seconds: Double) -> String {
    let rate = seconds > 0 ? Double(stats.bytes) / seconds : 0
    return "\(ByteSize.format(stats.bytes)) stream in \(rounds) round\(rounds == 1 ? "" : "s"), "
        + "\(ByteSize.twoDecimals(seconds)) s (\(ByteSize.format(UInt64(rate)))/s)"
}

/// The `summary` line of `-P`, the same fields from both tools.
private func parsableSummaryLine(
    _ stats: StreamStatistics, guestBytes: UInt64, rounds: Int, seconds: Double, paused: Double?, downtime: Double?,
    switchOver: SwitchOverTimes
) -> String {
    ([
        "summary", "\(stats.bytes)", "\(guestBytes)", "\(stats.pages + stats.diskBlocks)",
        "\(stats.zeroPages + stats.diskZeroBlocks)", "\(rounds)",
        microseconds(seconds), "\(UInt64(seconds > 0 ? Double(stats.bytes) / seconds : 0))",
        paused.map(microseconds) ?? "-", downtime.map(microseconds) ?? "-",
        ByteSize.twoDecimals(stats.compressionRatio),
    ] + switchOver.parsableFields).joined(separator: "\t")
}

func microseconds(_ seconds: Double) -> String { "\(Int64((seconds * 1e6).rounded()))" }

func milliseconds(_ seconds: Double) -> String { "\(Int64((seconds * 1000).rounded())) ms" }
