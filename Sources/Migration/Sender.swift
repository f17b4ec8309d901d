import MachineDescription
import Synchronization
import SystemPackage
import SystemSupport
import VMStream

#if canImport(Glibc)
    import Glibc
#endif

/// Drives one send: BEGIN, memory and disks in rounds, kernel and device state, END.
///
/// Disks travel like memory (`MachineAreas`): round 0 sends every allocated block, each next round the blocks the
/// guest wrote meanwhile, the final round the rest; with shared storage only their identity travels.
/// Warm: pause, send every populated page, state, END. Live: round 0 sends every populated page with dirty
/// logging on while the guest runs; each next round sends what the guest dirtied meanwhile; once the rest fits
/// the downtime target at the measured bandwidth (or the round cap is reached) the guest is paused and the
/// final round sends the rest. The source stays paused after success unless `keepRunning`; on any failure
/// before END is written it is resumed, so exactly one copy of the machine ever runs. A resumable send (`-s`, `-t`)
/// leaves it instead as a continuation needs it: paused, or live and running with its writes logged.
public final class Sender {
    private let source: MigrationSource
    private let output: FileDescriptor
    /// A continuation takes its stream's codec, mode and storage from what the source kept.
    private var options: SendOptions
    /// Told when the source is paused and when END starts, so an interrupt does the right thing.
    public var phaseObserver: InterruptWatcher?
    /// Called once the send knows what it sends, before round 0.
    public var onStart: ((TransferStart) -> Void)?
    /// Called after each round, and about once a second inside a long round.
    public var onProgress: ((TransferProgress) -> Void)?
    /// Holds the latest progress for a line asked for from another thread (SIGUSR1).
    private let progressRequest: ProgressRequest
    /// A resumable live stream's journal: what a continuation needs should the send break.
    private var journal: StreamJournal?

    /// Pages per `writePages` call: small enough for a progress line a second, large enough to batch well.
    static let pagesPerSlice: UInt64 = 2048

    public init(
        source: MigrationSource, output: FileDescriptor, options: SendOptions,
        progressRequest: ProgressRequest = ProgressRequest()
    ) {
        self.source = source
        self.output = output
        self.options = options
        self.progressRequest = progressRequest
    }

    public func run() throws -> SendReport {
        let started = ContinuousClock.now
        let (config, host) = try source.describe()
        var uuid = StreamBegin.randomUUID()
        var creationTime = HostClock.realtimeNanoseconds()
        var keptPauseTime: UInt64?
        var keptDiskAllocation: [UInt64]?
        var resumePoint: ResumePoint?
        /// A live stream's journal and how its dirty log kept since the break is cleared (nil: none was kept).
        var liveJournal: (journal: StreamJournal, manualClear: Bool?)?
        /// A send the source knows of: one that ends must say so (`finishSend`).
        var begun = false
        /// The journal a live continuation took from the source (or made from it), given back should the send end
        /// before its first byte: the stream can then be continued still, and the token stays good.
        var journalToGiveBack: (() -> [UInt8])?
        func failedBeforeWriting(_ error: any Error) -> any Error {
            if let resumePoint, let journalToGiveBack {
                try? source.keepJournal(
                    stream: resumePoint.uuidString, attempt: resumePoint.attempt, journal: journalToGiveBack())
            }
            if begun { _ = try? source.finishSend(migrated: false, destination: nil, delivered: false) }
            return error
        }
        if let token = options.continuation {
            guard token.machine == config.name else {
                throw MigrationError(
                    "the token is for VM '\(UntrustedText.escape(token.machine))', not '\(config.name)': it belongs to another machine"
                )
            }
            let continuation = try source.continueSend(
                stream: token.point.uuidString, attempt: token.point.attempt, force: options.force)
            begun = true
            resumePoint = token.point
            resumePoint?.attempt = continuation.attempt
            let terms = continuation.terms
            do {
                if let bytes = continuation.journal {
                    journalToGiveBack = { bytes }
                    // From here an interrupt hands the journal back, as it would hand on this send's own.
                    phaseObserver?.keepJournal {
                        try $0.keepJournal(stream: terms.stream, attempt: continuation.attempt, journal: bytes)
                    }
                }
                guard let mode = MigrationMode(rawValue: terms.mode), terms.uuid == token.point.uuid else {
                    throw MigrationError("the source kept unreadable terms for stream \(terms.stream)")
                }
                guard mode == token.mode else {
                    throw MigrationError(
                        "the token names a \(token.mode.rawValue) stream, but stream \(terms.stream) went out \(mode.rawValue): "
                            + "it is not this stream's token")
                }
                if mode == .live {
                    guard let bytes = continuation.journal else {
                        throw MigrationError("the source kept no journal of live stream \(terms.stream)")
                    }
                    let journal = try StreamJournal.decode(bytes)
                    let pausedSinceBreak = journal.snapshot.pauseTime != 0
                    phaseObserver?.enter(pausedSinceBreak ? .resumable : .resumableRunning)
                    guard continuation.manualClear != nil || pausedSinceBreak else {
                        throw MigrationError("the source kept no log of what its guest wrote since stream \(terms.stream) broke")
                    }
                    liveJournal = (journal, continuation.manualClear)
                }
                options.mode = mode
            } catch {
                throw failedBeforeWriting(error)
            }
            uuid = terms.uuid
            creationTime = terms.creationTime
            keptPauseTime = terms.pauseTime
            keptDiskAllocation = terms.diskAllocation
            options.compression = Compression.named(terms.compression) ?? .none
            options.sharedStorage = terms.sharedStorage
        }
        let writer: StreamWriter
        do { writer = try StreamWriter(output: output, compression: options.compression) } catch {
            throw failedBeforeWriting(error)
        }
        let journaled = options.mode == .live && (options.resumable || resumePoint != nil)
        if journaled {
            writer.keepJournal()
            journal = writer.journal
        }
        var livePlace: LiveResumePlace?
        if let resumePoint {
            do {
                if let liveJournal {
                    livePlace = try writer.continueLive(from: resumePoint, journal: liveJournal.journal)
                } else {
                    try writer.continueFrom(resumePoint)
                }
            } catch {
                // Refused before a byte went out: the token stays good, and the journal with it.
                throw failedBeforeWriting(error)
            }
        }
        let stream = StreamBegin.uuidString(uuid)
        let attempt = resumePoint?.attempt ?? 1
        if let journal {
            // The journal this send makes from here on is the one to hand on, whatever ends it.
            journalToGiveBack = { journal.seal() }
            phaseObserver?.keepJournal { try $0.keepJournal(stream: stream, attempt: attempt, journal: journal.seal()) }
        }
        // Before anything is sent: a migrated source is refused (a copy of it may run), and from here on the source
        // knows this send, so that should this process vanish it can tell whether a copy may run.
        if resumePoint == nil {
            try source.beginSend(stream: stream, force: options.force)
            begun = true
        }
        let memory: MachineAreas
        do { memory = try openAreas(config) } catch { throw failedBeforeWriting(error) }
        // Paused rounds lend guest pages to the pipe (vmsplice) rather than copying them. Safe because a
        // lent page cannot change before the reader has it: after END the source stays paused, or is resumed
        // only once the pipe is drained (--keep-running). A failed send resumes it at once, but its stream
        // has no END, so it is never restored, and a page changed under the pipe fails its record's checksum.
        writer.lendsStablePages = true
        var meter = RoundMeter(writer: writer, progress: ProgressTracker(sink: onProgress, request: progressRequest))
        // A source that was paused before the send (vmctl pause, vmrun --paused) is left as it was:
        // never resumed, on failure or with --keep-running.
        let wasRunning: Bool
        do { wasRunning = try source.isRunning() } catch { throw failedBeforeWriting(error) }
        // Kept for a continuation: should the send break, the source stays paused (and this process does not resume
        // it). A live stream's source keeps running until its pause, its writes logged, and the journal tells a
        // continuation what was sent; one paused (by the broken send, or before this one) stays so.
        let pausedSinceBreak = liveJournal.map { $0.journal.snapshot.pauseTime != 0 } ?? false
        var keptForResume = resumePoint != nil && (!journaled || pausedSinceBreak)
        if journaled && !wasRunning { keptForResume = true }
        if keptForResume {
            phaseObserver?.enter(.resumable)
        } else if !wasRunning {
            phaseObserver?.enter(.sourceLeftPaused)
        } else if journaled {
            phaseObserver?.enter(.resumableRunning)
        }
        var paused = false
        var pausedAt = ContinuousClock.now
        var throttled = false
        var final = (pages: UInt64(0), diskBlocks: UInt64(0))
        var switchOver = SwitchOverTimes()
        var pausedSeconds = 0.0
        do {
            /// Pauses the source; returns when, on the realtime clock, for END. The downtime counts from the request,
            /// not its answer: the vCPUs may stop at once, and stopping them and draining devices is part of it.
            func pause() throws -> UInt64 {
                pausedAt = .now
                switchOver.start()
                let requested = HostClock.realtimeNanoseconds()
                guard wasRunning else { return 0 }
                // A journaled send's pause is the journal's at once: should the send break from here on, the source
                // stays paused for a continuation, which then knows it did.
                let pauseNoted = { [journal, source] in
                    try source.pause()
                    journal?.notePause(at: requested)
                }
                if let phaseObserver {
                    try phaseObserver.entering(journal == nil ? .sourcePaused : .resumable, pauseNoted)
                } else {
                    try pauseNoted()
                }
                paused = true
                if journal != nil { keptForResume = true }
                switchOver.lap(.pause)
                return requested
            }
            var pauseTime: UInt64 = 0
            var begin = StreamBegin(
                tool: options.tool, toolVersion: options.toolVersion, uuid: uuid,
                creationTime: creationTime, mode: options.mode, host: host, machine: streamConfig(config),
                diskAllocation: try keptDiskAllocation
                    ?? (0..<config.disks.count).map { index in
                        try memory.disk(index).map { try Self.populatedBytes($0) } ?? 0
                    })
            begin.resumable = options.resumable || resumePoint != nil
            if options.mode == .live {
                let rest: DirtyPages
                if options.resumable && resumePoint == nil {
                    try source.makeResumable(terms(for: begin, pauseTime: 0))
                }
                if let livePlace, let liveJournal {
                    announce(begin, populated: try Self.populatedRanges(memory), writer: writer)
                    (pauseTime, rest) = try continueLive(
                        livePlace, journal: liveJournal, memory: memory, writer: writer, meter: &meter,
                        throttled: &throttled, pause: pause)
                } else {
                    try writer.writeBegin(begin)
                    let manualClear = try source.dirtyLogStart()
                    // Only now: a page first written before logging started is in this list or dirty in round 1.
                    let populated = try Self.populatedRanges(memory)
                    announce(begin, populated: populated, writer: writer)
                    var dirty = try liveRounds(
                        first: (0, populated), carry: nil, memory: memory, writer: writer, meter: &meter,
                        throttled: &throttled, manualClear: manualClear)
                    pauseTime = try pause()
                    dirty.merge(try fetchDirty(memory))
                    rest = dirty
                }
                switchOver.lap(.dirtyLog)
                var finalPages = rest
                #if DEBUG
                    switch options.fault {
                    case .dropFinalDirtyPages?: finalPages = DirtyPages(pageCounts: rest.pageCounts)
                    case .dropFinalDirtyBlocks?:
                        finalPages.clear(from: memory.memorySegments)
                        // A test needs to know whether anything was lost: a guest that wrote nothing lost nothing.
                        let line = "vmsend: test fault: \(rest.count - finalPages.count) final disk blocks dropped\n"
                        _ = try? FileDescriptor.standardError.writeAll(line.utf8)
                    case nil: break
                    }
                #endif
                if livePlace != .inState {
                    final = Self.split(finalPages.ranges, memorySegments: memory.memorySegments)
                    try sendRound(
                        meter.nextRound, pages: finalPages.ranges, isFinal: true, memory: memory, writer: writer, meter: &meter)
                }
                switchOver.lap(.finalPages)
            } else {
                pauseTime = try keptPauseTime ?? pause()
                if options.resumable && resumePoint == nil {
                    try source.makeResumable(terms(for: begin, pauseTime: pauseTime))
                    keptForResume = true
                    phaseObserver?.enter(.resumable)
                }
                try writer.writeBegin(begin)
                let populated = try Self.populatedRanges(memory)
                final = Self.split(populated, memorySegments: memory.memorySegments)
                announce(begin, populated: populated, writer: writer)
                try sendRound(0, pages: populated, isFinal: true, memory: memory, writer: writer, meter: &meter)
                switchOver.lap(.finalPages)
            }
            let state = try source.saveState()
            for chunk in state.kernel { try writer.writeKernelState(chunk) }
            for chunk in state.devices { try writer.writeDeviceState(chunk) }
            switchOver.lap(.state)
            // The source learns first that a copy may run from now on: should this process die while END is being
            // written, it keeps the machine paused instead of resuming it.
            if let phaseObserver {
                try phaseObserver.entering(.committed) { try source.commitSend() }
            } else {
                try source.commitSend()
            }
            try writer.writeEnd(sourcePauseTime: pauseTime)
            switchOver.lap(.end)
            pausedSeconds = HostClock.seconds(since: pausedAt)
            // Not in the pause: turning logging off re-registers guest RAM with KVM, which costs milliseconds. Before
            // any resume (--keep-running); should it fail, the disconnect stops it.
            if options.mode == .live { try? source.dirtyLogStop() }
        } catch {
            // A continuation that wrote nothing does not count as a send of its stream: its token stays good.
            defer { _ = try? source.finishSend(migrated: false, destination: nil, delivered: writer.bytesWritten > 0) }
            if throttled { try? source.setThrottle(percent: 0) }
            if let journal {
                do {
                    try source.keepJournal(stream: stream, attempt: attempt, journal: journal.seal())
                } catch let keepError {
                    // The source drops a stream it has no journal of, so the pause this stream made is undone.
                    var outcome = "keeps running"
                    if paused || pausedSinceBreak {
                        outcome = (try? source.resume()) == nil ? "stays paused: resuming it failed" : "was resumed"
                    }
                    throw MigrationError(
                        "\(error); the source could not keep the stream's journal (\(keepError)), so it cannot be continued; "
                            + "the source VM '\(config.name)' \(outcome)")
                }
                if !keptForResume {
                    throw MigrationError(
                        "\(error); the source VM '\(config.name)' keeps running, its writes logged, so that stream \(stream) "
                            + "can be continued: vmsend -t with the token the receiver printed (vmrecv -s), within the resume window"
                    )
                }
            }
            if keptForResume {
                throw MigrationError(
                    "\(error); the source VM '\(config.name)' stays paused so that stream \(stream) can be continued: "
                        + "vmsend -t with the token the receiver printed (vmrecv -s), within the resume window")
            }
            // Resuming is safe even when END failed: a receiver resumes only after reading END whole, and a failed
            // write means it did not. (An interrupt during END cannot know that, so it leaves the source paused.)
            guard paused else {
                if options.mode == .live && wasRunning {
                    throw MigrationError("\(error); the source VM '\(config.name)' keeps running")
                }
                throw error
            }
            do {
                try source.resume()
            } catch let resumeError {
                throw MigrationError("\(error); resuming the source VM '\(config.name)' also failed: \(resumeError)")
            }
            throw MigrationError("\(error); the source VM '\(config.name)' was resumed")
        }
        // A source resumed later (vmctl resume, --keep-running) runs at full speed again. The stream is
        // complete, so a failure here must not fail the send: vmrun lifts the throttle when we disconnect.
        if throttled { try? source.setThrottle(percent: 0) }
        // Lent pages must reach the reader before the guest may write them again (after --keep-running,
        // or a `vmctl resume` once we have exited).
        writer.waitUntilConsumed()
        if options.keepRunning && paused { try source.resume() }
        // Kept after END too: should the receiver have missed the end, a forced continuation takes up from there.
        if !options.keepRunning, let journal {
            try? source.keepJournal(stream: stream, attempt: attempt, journal: journal.seal())
        }
        // A snapshot (--keep-running) leaves the source as it was; any other complete send makes it `migrated`.
        let migrated = (try? source.finishSend(migrated: !options.keepRunning, destination: options.destination)) ?? false
        return SendReport(
            machine: config.name, mode: options.mode, guestBytes: config.memorySize, statistics: writer.statistics,
            rounds: meter.nextRound, seconds: HostClock.seconds(since: started), pausedSeconds: pausedSeconds,
            sourceWasRunning: wasRunning, finalRoundPages: final.pages, finalRoundDiskBlocks: final.diskBlocks,
            disksTravelled: !config.disks.isEmpty && !options.sharedStorage,
            stream: stream, sourceMigrated: migrated, bytesWritten: writer.bytesWritten, continuedFrom: resumePoint,
            switchOver: wasRunning ? switchOver : SwitchOverTimes())
    }

    /// What the source keeps of this stream should a resumable send of it break.
    private func terms(for begin: StreamBegin, pauseTime: UInt64) -> ResumeTerms {
        ResumeTerms(
            stream: begin.uuidString, uuid: begin.uuid, creationTime: begin.creationTime, pauseTime: pauseTime,
            mode: options.mode.rawValue, compression: options.compression.description,
            sharedStorage: options.sharedStorage, diskAllocation: begin.diskAllocation,
            windowSeconds: Double(options.resumeWindow.components.seconds)
                + Double(options.resumeWindow.components.attoseconds) / 1e18)
    }

    /// Takes up a live stream where its receiver stopped (`place`): finishes the round it was in, then sends what
    /// the receiver never verified (the lists of later rounds) with what the guest wrote since (the dirty log kept
    /// since the break). A source still paused by the broken send goes straight to its final round; a running one
    /// goes on with live rounds. Returns the pause time for END and the final round's pages.
    private func continueLive(
        _ place: LiveResumePlace, journal: (journal: StreamJournal, manualClear: Bool?), memory: MachineAreas,
        writer: StreamWriter, meter: inout RoundMeter, throttled: inout Bool, pause: () throws -> UInt64
    ) throws -> (pauseTime: UInt64, rest: DirtyPages) {
        let keptPause = journal.journal.snapshot.pauseTime
        let pausedSinceBreak = keptPause != 0
        var carry = DirtyPages(pageCounts: memory.segments.indices.map { memory.pageCount(segment: $0) })
        var first: (number: Int, pages: [PageRange])?
        switch place {
        case .beforeRounds:
            first = (0, try Self.populatedRanges(memory))
        case .inRound(let number, let rest, let later):
            for list in later { carry.insert(list) }
            // Cleared just before their copy, as in any live round: a write after it shows in the next fetch.
            var clearing: DirtyPages?
            if journal.manualClear == true && !pausedSinceBreak {
                clearing = DirtyPages(pageCounts: carry.pageCounts)
                clearing?.insert(rest)
            }
            try sendListed(
                Int(number), pages: rest, isFinal: pausedSinceBreak, memory: memory, writer: writer, meter: &meter,
                clearing: clearing)
        case .inState:
            guard pausedSinceBreak else {
                throw MigrationError(
                    "the receiver holds part of the state of a machine that ran since; abort it (vmrecv -A) and send again")
            }
            return (keptPause, carry)
        }
        if pausedSinceBreak {
            // Paused since before its final round's list was made: nothing new was written.
            if let first { carry.insert(first.pages) }
            return (keptPause, carry)
        }
        var rest = try liveRounds(
            first: first, carry: carry, memory: memory, writer: writer, meter: &meter, throttled: &throttled,
            manualClear: journal.manualClear == true)
        let pauseTime = try pause()
        rest.merge(try fetchDirty(memory))
        return (pauseTime, rest)
    }

    /// Pages of memory areas and blocks of disk areas in `ranges`.
    static func split(_ ranges: [PageRange], memorySegments: Int) -> (pages: UInt64, diskBlocks: UInt64) {
        ranges.reduce((UInt64(0), UInt64(0))) { total, range in
            range.segment < memorySegments ? (total.0 + range.count, total.1) : (total.0, total.1 + range.count)
        }
    }

    /// Rounds while the guest runs. Returns the pages dirtied by the last of them, still to be sent.
    /// With `manualClear`, each round clears its pages just before copying them (round 0 needs none: logging
    /// started just before it, clean); a fetch then reports each page written since its last clear.
    /// `first`: the round to start with (round 0 sends every populated page); `carry`: pages the receiver lacks besides
    /// what the next fetch reports (a continuation's).
    private func liveRounds(
        first: (number: Int, pages: [PageRange])?, carry: DirtyPages?, memory: MachineAreas, writer: StreamWriter,
        meter: inout RoundMeter, throttled: inout Bool, manualClear: Bool
    ) throws -> DirtyPages {
        let convergence = options.convergence
        let target = HostClock.seconds(convergence.downtimeTarget)
        var throttle = 0
        var roundsOutrun = 0
        var lastFetch = ContinuousClock.now
        var carry = carry
        if let first {
            try sendRound(first.number, pages: first.pages, isFinal: false, memory: memory, writer: writer, meter: &meter)
        }
        while true {
            let fetchStart = ContinuousClock.now
            var dirty = try fetchDirty(memory)
            if let pages = carry {
                dirty.merge(pages)
                carry = nil
            }
            // The switch-over asks the source three things answered like a fetch (pause, the last bitmaps,
            // the saved state): its fixed cost, on top of sending the pages.
            let switchOver = convergence.switchOverCost.map(HostClock.seconds) ?? 3 * HostClock.seconds(since: fetchStart)
            let sinceFetch = HostClock.seconds(since: lastFetch)
            lastFetch = .now
            let dirtyBytes = Double(dirty.count * UInt64(pageSize))
            let bandwidth = meter.lastRoundPageBandwidth
            let transfer = dirtyBytes == 0 ? 0 : bandwidth > 0 ? dirtyBytes / bandwidth : .infinity
            let expected = transfer + switchOver
            meter.reportRoundEnd(
                dirtyPages: dirty.count, dirtyRate: sinceFetch > 0 ? dirtyBytes / sinceFetch : 0,
                expectedDowntime: expected)
            // Switch over within the target, or once sending the pages is a small part of the pause that more
            // rounds cannot shorten, or at the round cap. Not on round 0's figure alone: it read populated memory
            // in order, while the final round sends scattered dirty pages, measured here at about two thirds of its rate.
            let measuredDirtyRound = meter.nextRound > 1
            if (expected <= target && (measuredDirtyRound || dirty.count == 0)) || transfer <= switchOver / 4
                || meter.nextRound + 1 >= convergence.maxRounds
            {
                return dirty
            }
            // The guest outruns the stream when it dirties at least half as many pages as a round sends
            // (QEMU's test): from the second such round in a row, each one raises the throttle a step.
            roundsOutrun = 2 * dirty.count >= meter.lastRoundPages ? roundsOutrun + 1 : 0
            if convergence.autoConverge, roundsOutrun >= 2 {
                throttle = Convergence.nextThrottle(after: throttle)
                try source.setThrottle(percent: throttle)
                throttled = true
                meter.throttle = throttle
            }
            try sendRound(
                meter.nextRound, pages: dirty.ranges, isFinal: false, memory: memory, writer: writer, meter: &meter,
                clearing: manualClear ? dirty : nil)
        }
    }

    /// What the guest dirtied since the last fetch: pages of each memory segment, blocks of each travelling disk.
    /// A journaled send records each fetch in the journal as it returns: the source's log no longer holds it.
    private func fetchDirty(_ memory: MachineAreas) throws -> DirtyPages {
        var dirty = DirtyPages(pageCounts: memory.segments.indices.map { memory.pageCount(segment: $0) })
        func fetch(_ area: Int, _ words: () throws -> [UInt64]) throws {
            guard let journal else { return dirty.merge(segment: area, try words()) }
            try journal.recordFetch {
                dirty.merge(segment: area, try words())
                return DirtyPages.ranges(segment: area, words: dirty.bitmaps[area])
            }
        }
        for segment in 0..<memory.memorySegments { try fetch(segment) { try source.dirtyLogFetch(segment: segment) } }
        for disk in memory.segments.indices.dropFirst(memory.memorySegments).map({ $0 - memory.memorySegments })
        where memory.disk(disk) != nil {
            try fetch(memory.memorySegments + disk) { try source.diskWrittenFetch(disk) }
        }
        return dirty
    }

    /// Guest RAM and, unless storage is shared, each disk's image.
    private func openAreas(_ config: MachineConfig) throws -> MachineAreas {
        let stores: [(any GuestMemory)?] = try config.disks.enumerated().map { index, disk in
            options.sharedStorage ? nil : try source.disk(index, disk)
        }
        return MachineAreas(memory: try source.memory(config), disks: config.disks, stores: stores)
    }

    /// The configuration BEGIN records: a disk names its image only when both hosts share it.
    private func streamConfig(_ config: MachineConfig) -> MachineConfig {
        var described = config
        for index in described.disks.indices {
            described.disks[index].sharedStorage = options.sharedStorage
            if !options.sharedStorage { described.disks[index].path = nil }
        }
        return described
    }

    static func populatedBytes(_ store: any GuestMemory) throws -> UInt64 {
        try store.populatedPages(segment: 0).reduce(0) { $0 + UInt64($1.count) } * UInt64(pageSize)
    }

    /// Sends one round's pages; `clearing` (the same pages) clears each in the source's dirty log just before its copy.
    private func sendRound(
        _ number: Int, pages: [PageRange], isFinal: Bool, memory: MachineAreas,
        writer: StreamWriter, meter: inout RoundMeter, clearing: DirtyPages? = nil
    ) throws {
        try writer.writeRound(UInt32(number), pages: pages)
        try sendListed(number, pages: pages, isFinal: isFinal, memory: memory, writer: writer, meter: &meter, clearing: clearing)
    }

    /// Sends pages of round `number`'s list, whose list record went out already.
    private func sendListed(
        _ number: Int, pages: [PageRange], isFinal: Bool, memory: MachineAreas,
        writer: StreamWriter, meter: inout RoundMeter, clearing: DirtyPages? = nil
    ) throws {
        var clearer = clearing.map { DirtyLogClearer(pages: $0, pagesPerRequest: Self.pagesPerSlice) }
        let total = pages.reduce(UInt64(0)) { $0 + $1.count }
        meter.startRound(number, pages: total, isFinal: isFinal)
        for range in pages {
            var page = range.firstPage
            let end = range.firstPage + range.count
            while page < end {
                let count = min(Self.pagesPerSlice, end - page)
                // Disks have no log to clear: a fetch of their written blocks starts over by itself.
                if range.segment < memory.memorySegments,
                    let clear = clearer?.request(segment: range.segment, firstPage: page, count: count)
                {
                    try source.dirtyLogClear(segment: range.segment, firstPage: clear.firstPage, bitmap: clear.bitmap)
                }
                try writer.writePages(
                    segment: range.segment, firstPage: page, count: count,
                    from: memory.pages(segment: range.segment, from: page, count: count),
                    mayChange: !isFinal)
                memory.doneReading(segment: range.segment, pages: page..<(page + count))
                page += count
                meter.advance(pages: count)
            }
        }
        meter.finishRound()
        if isFinal { meter.reportRoundEnd() }
    }

    /// Tells `onStart` what is sent; the estimate is every populated page whole, plus framing and state.
    private func announce(_ begin: StreamBegin, populated: [PageRange], writer: StreamWriter) {
        let pages = populated.reduce(UInt64(0)) { $0 + $1.count }
        onStart?(
            TransferStart(
                mode: begin.mode.rawValue, machine: begin.machine.name, uuid: begin.uuidString,
                estimatedTotalBytes: writer.statistics.bytes + pages * UInt64(pageSize) + Self.framingEstimate))
    }

    /// Record framing, state and END beyond the pages themselves, as the estimates count it.
    static let framingEstimate = UInt64(64 << 10)

    /// Counts what a send would carry, reading memory while the machine runs.
    public func estimate() throws -> SendEstimate {
        let (config, _) = try source.describe()
        let memory = try openAreas(config)
        var populated: UInt64 = 0
        var zero: UInt64 = 0
        for range in try Self.populatedRanges(memory) {
            populated += range.count
            for page in range.firstPage..<(range.firstPage + range.count)
            where memory.isZero(segment: range.segment, page: page) {
                zero += 1
            }
        }
        let framing = Self.framingEstimate
        return SendEstimate(
            machine: config.name, guestBytes: config.memorySize, populatedPages: populated,
            zeroPages: zero, estimatedStreamBytes: (populated - zero) * UInt64(pageSize) + framing)
    }

    static func populatedRanges(_ memory: any GuestMemory) throws -> [PageRange] {
        var ranges: [PageRange] = []
        for segment in memory.segments.indices {
            for range in try memory.populatedPages(segment: segment) {
                ranges.append(
                    PageRange(
                        segment: segment, firstPage: range.lowerBound,
                        count: range.upperBound - range.lowerBound))
            }
        }
        return ranges
    }
}
