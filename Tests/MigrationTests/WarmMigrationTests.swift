import MachineDescription
import SystemPackage
import SystemSupport
import Testing
import VMStream

@testable import Migration

#if canImport(Glibc)
    import Glibc
#endif

/// The engine over fakes: a stream goes through a real memory file, pages and state must arrive exactly.
@Suite struct WarmMigrationTests {
    let written: [UInt64] = [0, 1, 2, 7, 100, 511, 1024, 2047]
    let zeroed: [UInt64] = [3, 4, 300]

    /// Sends `source` into a memfd and returns it, rewound, ready to read.
    func send(
        _ source: FakeSource, compression: Compression = .none, keepRunning: Bool = false
    ) throws -> (FileDescriptor, SendReport) {
        let stream = try makeMemoryFile(size: 0)
        let sender = Sender(
            source: source, output: stream,
            options: SendOptions(mode: .warm, compression: compression, keepRunning: keepRunning))
        let report = try sender.run()
        _ = try stream.seek(offset: 0, from: .start)
        return (stream, report)
    }

    func receive(
        _ stream: FileDescriptor, name: String = "copy", destinations: inout [FakeDestination],
        compatibility: Compatibility = .local(), landing: Bool = false, resumeStampOffset: Int64? = nil
    ) throws -> ReceiveReport {
        var made: [FakeDestination] = []
        defer { destinations = made }
        let receiver = Receiver(
            input: stream, options: ReceiveOptions(name: name),
            checkCompatibility: { try compatibility.check($0, as: name) },
            makeDestination: { config in
                let destination = try FakeDestination(config: config, offersLanding: landing)
                destination.resumeStampOffset = resumeStampOffset
                made.append(destination)
                return destination
            },
            makeCheck: { _ in AcceptingCheck() })
        return try receiver.run()
    }

    /// With `landing`, raw pages are read straight into the destination's memory, as on huge pages.
    @Test(arguments: [Compression.none, .lz4()], [false, true])
    func pagesAndStateArriveExactly(compression: Compression, landing: Bool) throws {
        let source = try FakeSource(writtenPages: written, zeroedPages: zeroed)
        let (stream, sendReport) = try send(source, compression: compression)
        defer { try? stream.close() }
        #expect(source.pauses == 1 && source.resumes == 0, "a warm send leaves the source paused")
        #expect(sendReport.statistics.zeroPages == UInt64(zeroed.count))

        var destinations: [FakeDestination] = []
        let report = try receive(stream, destinations: &destinations, landing: landing)
        let destination = try #require(destinations.first)
        for page in written { #expect(try destination.bytes(page: page) == source.bytes(page: page), "page \(page)") }
        #expect(try destination.populatedPageCount() == UInt64(written.count), "zero pages and holes are not populated")
        #expect(destination.restored == testState)
        #expect(destination.resumed && !destination.abandoned)
        #expect(report.name == "copy" && report.begin.machine.name == "fake")
        #expect(report.downtimeSeconds != nil)
    }

    @Test func keepRunningResumesTheSource() throws {
        let source = try FakeSource(writtenPages: written)
        let (stream, _) = try send(source, keepRunning: true)
        try stream.close()
        #expect(source.pauses == 1 && source.resumes == 1 && !source.paused)
    }

    @Test func aClosedPipeResumesTheSource() throws {
        signal(SIGPIPE, SIG_IGN)
        let pipe = try FileDescriptor.pipe()
        try pipe.readEnd.close()
        defer { try? pipe.writeEnd.close() }
        let source = try FakeSource(writtenPages: written)
        let sender = Sender(
            source: source, output: pipe.writeEnd, options: SendOptions(mode: .warm, compression: .none, keepRunning: false))
        #expect(throws: (any Error).self) { try sender.run() }
        #expect(source.pauses == 1 && source.resumes == 1, "a failed send gives the source back")
        do { _ = try sender.run() } catch { #expect("\(error)".contains("was resumed")) }
    }

    @Test func aFailedStateSaveResumesTheSource() throws {
        let source = try FakeSource(writtenPages: written)
        source.failSaveState = true
        let stream = try makeMemoryFile(size: 0)
        defer { try? stream.close() }
        let sender = Sender(
            source: source, output: stream, options: SendOptions(mode: .warm, compression: .none, keepRunning: false))
        #expect(throws: (any Error).self) { try sender.run() }
        #expect(!source.paused)
    }

    /// Round 1 with pages read straight into memory (huge pages), and a damaged zero-page bitmap that still counts
    /// one zero page: the data of page 0 lands in page 1, which the source holds as zero. The checksum fails; the
    /// landed pages must be zero again, since a continued partial receive would send the record again and, in fresh
    /// memory, land only its data pages, never rewriting page 1.
    @Test func bytesLandedUnderADamagedBitmapAreZeroedAgain() throws {
        let source = try FakeSource(writtenPages: [0, 2], zeroedPages: [1])
        let (stream, _) = try send(source)
        defer { try? stream.close() }
        let size = Int(try stream.seek(offset: 0, from: .end))
        var bytes = [UInt8](repeating: 0, count: size)
        _ = try bytes.withUnsafeMutableBytes { try stream.read(fromAbsoluteOffset: 0, into: $0) }
        var start: UInt64 = 0
        let scan = StreamReader(bytes: bytes)
        while let record = try scan.next(into: DiscardingPageSink()) {
            if case .pages(let batch) = record {
                #expect(batch.firstPage == 0 && batch.count == 3 && batch.zeroPages == 1)
                break
            }
            start = scan.statistics.bytes
        }
        let bitmap = Int(start) + StreamFormat.recordHeaderSize + 16  // after the PAGES prefix (vmstream(5))
        #expect(bytes[bitmap] == 0b010, "page 1 is the zero page")
        bytes[bitmap] = 0b001  // page 0 taken for zero, page 1 for data: the same count

        let memory = AnonymousGuestMemory(segments: testConfig().segments, offersLanding: true)
        let sink = GuestMemoryPageSink(memory: memory)
        let reader = StreamReader(bytes: bytes)
        #expect(throws: StreamError.self) { while try reader.next(into: sink) != nil {} }
        for page: UInt64 in 0...2 {
            #expect(memory.bytes(page: page).allSatisfy { $0 == 0 }, "page \(page)")
        }
        #expect(try memory.populatedPages(segment: 0).isEmpty)
    }

    @Test func aTruncatedStreamAbandonsTheMachine() throws {
        let source = try FakeSource(writtenPages: written)
        let (stream, _) = try send(source)
        defer { try? stream.close() }
        let size = try stream.seek(offset: 0, from: .end)
        for cut in [size - 1, size / 2, 200] {
            let copy = try makeMemoryFile(size: 0)
            defer { try? copy.close() }
            var bytes = [UInt8](repeating: 0, count: Int(cut))
            _ = try bytes.withUnsafeMutableBytes { try stream.read(fromAbsoluteOffset: 0, into: $0) }
            _ = try copy.writeAll(bytes)
            _ = try copy.seek(offset: 0, from: .start)
            var destinations: [FakeDestination] = []
            #expect(throws: (any Error).self) { _ = try receive(copy, destinations: &destinations) }
            for destination in destinations { #expect(destination.abandoned && !destination.resumed, "cut at \(cut)") }
        }
    }

    /// A resumable stream cut half-way is kept with every verified page stored, or not at all: a store behind the
    /// reader that failed leaves nothing kept and the machine abandoned.
    @Test(arguments: [false, true])
    func aCutResumableStreamIsKeptOnlyWithItsPagesStored(storesFail: Bool) throws {
        let source = try FakeSource(writtenPages: written)
        var sendOptions = SendOptions(mode: .warm, compression: .none, keepRunning: false)
        sendOptions.resumable = true
        let stream = try makeMemoryFile(size: 0)
        defer { try? stream.close() }
        _ = try Sender(source: source, output: stream, options: sendOptions).run()
        let size = try stream.seek(offset: 0, from: .end)
        var bytes = [UInt8](repeating: 0, count: Int(size / 2))
        _ = try bytes.withUnsafeMutableBytes { try stream.read(fromAbsoluteOffset: 0, into: $0) }
        let cut = try makeMemoryFile(size: 0)
        defer { try? cut.close() }
        _ = try cut.writeAll(bytes)
        _ = try cut.seek(offset: 0, from: .start)
        var options = ReceiveOptions(name: "copy")
        options.keepPartial = true
        var made: [FakeDestination] = []
        let receiver = Receiver(
            input: cut, options: options, checkCompatibility: { try Compatibility.local().check($0, as: "copy") },
            makeDestination: { config in
                let destination = try FakeDestination(config: config)
                if storesFail { destination.guestMemory.storeFailure = "no space left on device" }
                made.append(destination)
                return destination
            },
            makeCheck: { _ in AcceptingCheck() })
        do {
            _ = try receiver.run()
            Issue.record("a stream cut half-way was received")
        } catch let kept as PartialReceiveKept {
            #expect(!storesFail)
            #expect(made.first?.kept?.token == kept.partial.token)
            #expect(made.first?.abandoned == false)
        } catch {
            #expect(storesFail, "\(error)")
            #expect("\(error)".hasSuffix("nothing was kept: no space left on device"), "\(error)")
            #expect(made.first?.abandoned == true && made.first?.kept == nil)
        }
    }

    /// The downtime and its resume phase end where the backend stamps the copy's resume; a stamp from before the
    /// request (a clock stepped back) is not believed.
    @Test(arguments: [(Int64(2_000_000_000), true), (-3_600_000_000_000, false)])
    func theDowntimeEndsAtTheResumeStamp(offset: Int64, believed: Bool) throws {
        let (stream, _) = try send(try FakeSource(writtenPages: written))
        defer { try? stream.close() }
        var destinations: [FakeDestination] = []
        let report = try receive(stream, destinations: &destinations, resumeStampOffset: offset)
        let resumePhase = try #require(report.switchOver.seconds[.resume])
        guard case .measured(let downtime) = report.downtime else { return #expect(Bool(false), "\(report.downtime)") }
        #expect((downtime >= 2 && resumePhase >= 2) == believed, "downtime \(downtime) s, resume \(resumePhase) s")
        #expect(downtime < 60)
    }

    @Test func anIncompatibleHostCreatesNothing() throws {
        let source = try FakeSource(writtenPages: written)
        let (stream, _) = try send(source)
        defer { try? stream.close() }
        var destinations: [FakeDestination] = []
        let other = Compatibility(architecture: "aarch64", pageSize: 4096, hypervisor: "kvm", availableMemory: .max)
        do {
            _ = try receive(stream, destinations: &destinations, compatibility: other)
            Issue.record("an aarch64 host accepted an x86_64 stream")
        } catch {
            #expect("\(error)".contains("aarch64"))
        }
        #expect(destinations.isEmpty)
        _ = try stream.seek(offset: 0, from: .start)
        let small = Compatibility(
            architecture: testHost.architecture, pageSize: 4096, hypervisor: "kvm", availableMemory: 1 << 20)
        #expect(throws: (any Error).self) { _ = try receive(stream, destinations: &destinations, compatibility: small) }
        #expect(destinations.isEmpty)
    }

    /// On huge pages what counts is the pool, not MemAvailable (which does not count the pool's pages).
    @Test func onHugePagesThePoolDecides() throws {
        let source = try FakeSource(writtenPages: written)
        let (stream, _) = try send(source)
        defer { try? stream.close() }
        func host(pool: UInt64) -> Compatibility {
            Compatibility(
                architecture: testHost.architecture, pageSize: 4096, hypervisor: "kvm", availableMemory: pool,
                hugePages: true)
        }
        var destinations: [FakeDestination] = []
        do {
            _ = try receive(stream, destinations: &destinations, compatibility: host(pool: 4 << 20))
            Issue.record("a pool of 4 MiB took an 8 MiB machine")
        } catch {
            #expect("\(error)".contains("not enough huge pages") && "\(error)".contains("nr_hugepages"), "\(error)")
        }
        #expect(destinations.isEmpty)
        _ = try stream.seek(offset: 0, from: .start)
        _ = try receive(stream, destinations: &destinations, compatibility: host(pool: 8 << 20))
        #expect(destinations.count == 1 && destinations[0].resumed)
    }
}

@Suite struct PausedSourceTests {
    @Test(arguments: [MigrationMode.warm, .live])
    func aSourcePausedBeforeTheSendIsNeverResumed(mode: MigrationMode) throws {
        let source = try FakeSource(writtenPages: [0, 1, 2])
        try source.pause()
        let stream = try makeMemoryFile(size: 0)
        defer { try? stream.close() }
        let sender = Sender(
            source: source, output: stream, options: SendOptions(mode: mode, compression: .none, keepRunning: true))
        let report = try sender.run()
        #expect(!report.sourceWasRunning)
        #expect(source.pauses == 1 && source.resumes == 0 && source.paused, "--keep-running leaves a paused source paused")

        source.failSaveState = true
        #expect(throws: (any Error).self) { try sender.run() }
        #expect(source.resumes == 0 && source.paused, "a failed send does not start a source that was paused")
    }
}

@Suite struct DowntimeTests {
    @Test func aPauseTimeFromTheStreamNeverTraps() {
        #expect(Receiver.downtime(since: 0) == nil, "never paused")
        #expect(Receiver.downtime(since: UInt64.max) == nil, "absurd: 2^64 ns is in the 26th century")
        #expect(Receiver.downtime(since: 1 << 63) == nil)
        let justNow = Receiver.downtime(since: HostClock.realtimeNanoseconds() - 20_000_000)
        #expect(justNow.map { $0 >= 0.02 && $0 < 60 } == true)
    }
}
