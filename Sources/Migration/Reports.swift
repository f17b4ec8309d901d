import MachineDescription
import VMStream

extension SendReport {
    /// `sent VM 'demo' (2.00 GiB): 1.02 GiB in 12345 pages, 4321 zero pages elided, ratio 0.51, in 0.61 s (1.67 GiB/s)`
    public var summary: String {
        let stats = statistics
        let rate = seconds > 0 ? Double(stats.bytes) / seconds : 0
        return "sent VM '\(machine)' (\(ByteSize.format(guestBytes))): \(ByteSize.format(stats.bytes)) in "
            + "\(stats.pages) pages, \(stats.zeroPages) zero pages elided, "
            + "ratio \(ByteSize.twoDecimals(guestBytes > 0 ? Double(stats.bytes) / Double(guestBytes) : 0)), "
            + "\(rounds) round\(rounds == 1 ? "" : "s") in \(ByteSize.twoDecimals(seconds)) s (\(ByteSize.format(UInt64(rate)))/s); "
            + "source paused for the last \(Int((pausedSeconds * 1000).rounded())) ms"
            + (disksTravelled ? " (final round: \(finalRoundPages) pages, \(finalRoundDiskBlocks) disk blocks)" : "")
    }
}

extension ReceiveReport {
    /// `received 2.00 GiB VM 'demo' (3 rounds) in 0.61 s (3.3 GiB/s)` and the downtime when known.
    public func summary(dryRun: Bool) -> String {
        let guest = begin.machine.memorySize
        let rate = seconds > 0 ? Double(guest) / seconds : 0
        var line =
            "\(dryRun ? "verified" : "received") \(ByteSize.format(guest)) VM \(UntrustedText.quote(begin.machine.name))"
            + (name == begin.machine.name ? "" : " as '\(name)'")
            + " (\(rounds) round\(rounds == 1 ? "" : "s"), \(ByteSize.format(streamBytes)) stream) in "
            + "\(ByteSize.twoDecimals(seconds)) s (\(ByteSize.format(UInt64(rate)))/s)"
        if let downtimeSeconds {
            line += "; downtime \(Int((downtimeSeconds * 1000).rounded())) ms from source pause to resume"
        }
        return line
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

extension RoundProgress {
    /// The `-v` line: `round 2: 1234 pages, 4.82 MiB in 0.01 s (482.00 MiB/s); 321 dirty pages found (12.00 MiB/s); expected downtime 3 ms`
    public var line: String {
        let name = isFinal ? "final round \(round)" : "round \(round)"
        if inProgress {
            let percent = pagesInRound > 0 ? pagesSent * 100 / pagesInRound : 100
            return "\(name): \(pagesSent)/\(pagesInRound) pages (\(percent)%), \(ByteSize.format(streamBytes)) in "
                + "\(ByteSize.twoDecimals(seconds)) s (\(ByteSize.format(UInt64(bandwidth)))/s)"
        }
        var text =
            "\(name): \(pagesSent) pages, \(ByteSize.format(streamBytes)) in \(ByteSize.twoDecimals(seconds)) s "
            + "(\(ByteSize.format(UInt64(bandwidth)))/s)"
        if !isFinal {
            text +=
                "; \(dirtyPagesFound) dirty pages found (\(ByteSize.format(UInt64(dirtyRate)))/s); expected downtime "
                + (expectedDowntime.isFinite ? "\(Int((expectedDowntime * 1000).rounded())) ms" : "unknown")
            if throttlePercent > 0 { text += "; vCPUs throttled \(throttlePercent)%" }
        }
        return text
    }

    /// The `-P` line: tab-separated fields, documented in vmsend(8).
    public var parsable: String {
        let downtime = expectedDowntime.isFinite ? String(Int((expectedDowntime * 1e6).rounded())) : "-"
        return [
            inProgress ? "progress" : (isFinal ? "final" : "round"), "\(round)", "\(pagesSent)", "\(pagesInRound)",
            "\(streamBytes)", "\(Int((seconds * 1e6).rounded()))", "\(UInt64(bandwidth))", "\(dirtyPagesFound)",
            "\(UInt64(dirtyRate))", downtime, "\(throttlePercent)",
        ].joined(separator: "\t")
    }

    /// One terminal line redrawn in place: `round 0 [#########           ] 45% 1.20 GiB/s`.
    public var bar: String {
        let width = 30
        let done = pagesInRound > 0 ? Int(pagesSent * UInt64(width) / pagesInRound) : width
        let percent = pagesInRound > 0 ? pagesSent * 100 / pagesInRound : 100
        return "\r\(isFinal ? "final" : "round \(round)") [" + String(repeating: "#", count: done)
            + String(repeating: " ", count: width - done) + "] \(percent)% \(ByteSize.format(UInt64(bandwidth)))/s\u{1b}[K"
    }
}
