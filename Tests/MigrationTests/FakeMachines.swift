import MachineDescription
import Migration
import SystemPackage
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A stream file in /dev/shm, unlinked at once, so nothing is left behind.
func makeMemoryFile(size: UInt64) throws -> FileDescriptor {
    var template = Array("/dev/shm/vmsend-test-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    guard fd >= 0 else { throw MigrationError("mkstemp", errno: errno) }
    unlink(template)
    guard ftruncate(fd, off_t(size)) == 0 else { throw MigrationError("ftruncate", errno: errno) }
    return FileDescriptor(rawValue: fd)
}

/// Guest memory that is not a file: anonymous memory, as a hypervisor that maps guest-physical ranges (bhyve's
/// vm_map_gpa) would lend it. What is populated is what was written, tracked page by page.
final class AnonymousGuestMemory: GuestMemory {
    let segments: [MemorySegment]
    private let bases: [UnsafeMutableRawPointer]
    private var written: [Set<UInt64>]
    /// Offers the reader a place to land pages in, as guest memory on huge pages does.
    let offersLanding: Bool
    /// Holds every write back until `finishWrites`, as a receiver's memory that stores behind the reader may: a
    /// receive that reads what it wrote, discards it or restores state before then comes out wrong, or throws.
    let storesLate: Bool
    private var late: [(segment: Int, pages: Range<UInt64>, bytes: [UInt8])] = []
    var pendingStores: Int { late.count }
    /// What `finishWrites` throws, having dropped what it held, as a store behind the reader that failed.
    var storeFailure: String?

    init(segments: [MemorySegment], offersLanding: Bool = false, storesLate: Bool = false) {
        self.segments = segments
        self.offersLanding = offersLanding
        self.storesLate = storesLate
        bases = segments.map { segment in
            mmap(nil, Int(segment.size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)!
        }
        written = segments.map { _ in [] }
    }

    deinit { for (base, segment) in zip(bases, segments) { munmap(base, Int(segment.size)) } }

    func pages(segment: Int, from page: UInt64, count: UInt64) -> UnsafeRawPointer {
        UnsafeRawPointer(bases[segment] + Int(page) * 4096)
    }

    func populatedPages(segment: Int) throws -> [Range<UInt64>] {
        var ranges: [Range<UInt64>] = []
        for page in written[segment].sorted() {
            if let last = ranges.last, last.upperBound == page {
                ranges[ranges.count - 1] = last.lowerBound..<(page + 1)
            } else {
                ranges.append(page..<(page + 1))
            }
        }
        return ranges
    }

    func doneReading(segment: Int, pages: Range<UInt64>) {}

    func write(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        if storesLate {
            let bytes = Array(UnsafeRawBufferPointer(start: data, count: count * 4096))
            late.append((segment, page..<(page + UInt64(count)), bytes))
        } else {
            store(segment: segment, pages: page..<(page + UInt64(count)), from: data)
        }
    }

    /// Lands what it held last first: a backend's threads land them in any order, so a page written twice without
    /// a `finishWrites` between comes out wrong.
    func finishWrites() throws {
        if let storeFailure {
            late = []
            throw MigrationError(storeFailure)
        }
        for held in late.reversed() {
            held.bytes.withUnsafeBytes { store(segment: held.segment, pages: held.pages, from: $0.baseAddress!) }
        }
        late = []
    }

    private func store(segment: Int, pages: Range<UInt64>, from data: UnsafeRawPointer) {
        (bases[segment] + Int(pages.lowerBound) * 4096).copyMemory(from: data, byteCount: pages.count * 4096)
        written[segment].formUnion(pages)
    }

    func landing(segment: Int, page: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        guard offersLanding else { return nil }
        written[segment].formUnion(page..<(page + UInt64(count)))
        return bases[segment] + Int(page) * 4096
    }

    func discard(segment: Int, pages: Range<UInt64>) throws {
        if late.contains(where: { $0.segment == segment && $0.pages.overlaps(pages) }) {
            throw MigrationError("pages \(pages) of segment \(segment) discarded while a write to them is pending")
        }
        (bases[segment] + Int(pages.lowerBound) * 4096).initializeMemory(as: UInt8.self, repeating: 0, count: pages.count * 4096)
        written[segment].subtract(pages)
    }

    /// Page `page` of the segment holding guest-physical page `page` of a single-segment test machine.
    func bytes(segment: Int = 0, page: UInt64) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: pages(segment: segment, from: page, count: 1), count: 4096))
    }

    func fill(segment: Int, page: UInt64, with bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(segment: segment, page: page, count: 1, from: $0.baseAddress!) }
    }
}

let testHost = HostSpec(
    architecture: Compatibility.local().architecture, cpuVendor: "TestVendor", cpuModel: "Test CPU",
    pageSize: 4096, hypervisor: "kvm", hypervisorVersion: "test")

func testConfig(name: String = "fake", memory: UInt64 = 8 << 20) -> MachineConfig {
    MachineConfig(
        name: name, vcpuCount: 2, segments: MemorySegment.standardLayout(memorySize: memory),
        devices: [DeviceConfig(name: "uart0", kind: "uart16550", version: 1, configuration: ["port": "0x3f8"])],
        cpuid: [CPUIDLeaf(function: 1, index: 0, flags: 0, eax: 1, ebx: 2, ecx: 3, edx: 4)])
}

let testState = MachineState(
    kernel: [
        StateChunk(name: "vcpu0/regs", version: 1, data: Array(0..<144)),
        StateChunk(name: "vm/pit", version: 1, data: [9, 9, 9]),
    ],
    devices: [StateChunk(name: "uart0", version: 1, data: Array("hello".utf8))])

/// A machine in anonymous memory: some pages written with a pattern, some written with zeroes, the rest never touched.
final class FakeSource: MigrationSource, @unchecked Sendable {
    let config: MachineConfig
    let guestMemory: AnonymousGuestMemory
    /// One store per disk of `config`, and the blocks the guest wrote since the last fetch.
    let disks: [AnonymousGuestMemory]
    private var diskWritten: [Set<UInt64>]
    var pauses = 0
    var resumes = 0
    var paused = false
    var failSaveState = false
    var throttles: [Int] = []

    init(config: MachineConfig = testConfig(), writtenPages: [UInt64], zeroedPages: [UInt64] = []) throws {
        self.config = config
        guestMemory = AnonymousGuestMemory(segments: config.segments)
        disks = config.disks.map {
            AnonymousGuestMemory(segments: [MemorySegment(name: $0.name, guestPhysicalBase: 0, size: $0.size)])
        }
        diskWritten = config.disks.map { _ in [] }
        for page in writtenPages {
            var bytes = [UInt8](repeating: 0, count: 4096)
            for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: Int(page) &* 31 &+ index &* 7 &+ 1) }
            try guestMemory.fill(segment: 0, page: page, with: bytes)
        }
        for page in zeroedPages { try guestMemory.fill(segment: 0, page: page, with: [UInt8](repeating: 0, count: 4096)) }
    }

    func describe() throws -> (config: MachineConfig, host: HostSpec) { (config, testHost) }
    func isRunning() throws -> Bool { !paused }
    func makeResumable(_ terms: ResumeTerms) throws {}
    func memory(_ config: MachineConfig) throws -> any GuestMemory { guestMemory }
    func disk(_ index: Int, _ config: DiskConfig) throws -> any GuestMemory { disks[index] }

    func diskWrittenFetch(_ index: Int) throws -> [UInt64] {
        guard dirtyLogging else { throw MigrationError("dirty logging is not started") }
        var words = [UInt64](repeating: 0, count: Int((config.disks[index].blockCount + 63) / 64))
        for block in diskWritten[index] { words[Int(block / 64)] |= 1 << (block % 64) }
        diskWritten[index] = []
        // The guest writes on while the next round is sent.
        if !paused {
            for _ in 0..<blocksWrittenPerRound {
                try writeDisk(index, block: UInt64.random(in: 0..<config.disks[index].blockCount))
            }
        }
        return words
    }

    /// Disk blocks the running guest writes per round.
    var blocksWrittenPerRound = 0

    /// The guest writes a disk block (with a fresh value), and the device notes it.
    func writeDisk(_ index: Int, block: UInt64) throws {
        let value = UInt8.random(in: 1...255, using: &generator)
        try disks[index].fill(segment: 0, page: block, with: [UInt8](repeating: value, count: 4096))
        if dirtyLogging { diskWritten[index].insert(block) }
    }
    func pause() throws {
        pauses += 1
        paused = true
    }
    func resume() throws {
        resumes += 1
        paused = false
    }
    func saveState() throws -> MachineState {
        if failSaveState { throw MigrationError("saving state failed on purpose") }
        return testState
    }
    /// Pages the fake guest writes per round while running, given the throttle in force.
    var pagesDirtiedPerRound: (_ round: Int, _ throttle: Int) -> Int = { _, _ in 0 }
    /// Manual clearing, as KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 does it: fetches leave the bits, `dirtyLogClear` clears.
    var manualClear = false
    /// Manual clearing: random pages the guest writes just before each clear takes effect, while a round is sent.
    var pagesDirtiedPerClear = 0
    /// Manual clearing: pages the guest writes just before a clear takes effect, given the pages being cleared.
    var writesBeforeClear: (_ segment: Int, _ clearing: [UInt64]) -> [UInt64] = { _, _ in [] }
    /// Every clear: the fetches made before it (round n is sent after fetch n) and the pages it cleared.
    private(set) var clears: [(fetches: Int, segment: Int, pages: [UInt64])] = []
    /// The dirty log: pages written since their bit was last cleared, per segment.
    private var dirtyBits: [Set<UInt64>] = []
    private var rounds = 0
    private var generator = SystemRandomNumberGenerator()
    var dirtyLogging = false

    /// Round 0 is sent while the guest runs: it writes its first pages right away.
    func dirtyLogStart() throws -> Bool {
        dirtyLogging = true
        dirtyBits = config.segments.map { _ in [] }
        try guestWrites(segment: config.segments.count - 1, count: pagesDirtiedPerRound(rounds, throttles.last ?? 0))
        return manualClear
    }

    /// Reports what was written since it was last cleared (clearing it unless clearing is manual), then (if running)
    /// writes new pages: those land "while the next round is sent" and show up in the next fetch.
    func dirtyLogFetch(segment: Int) throws -> [UInt64] {
        guard dirtyLogging else { throw MigrationError("dirty logging is not started") }
        let pages = config.segments[segment].size / 4096
        var words = [UInt64](repeating: 0, count: Int((pages + 63) / 64))
        for page in dirtyBits[segment] { words[Int(page / 64)] |= 1 << (page % 64) }
        if !manualClear { dirtyBits[segment] = [] }
        if segment == config.segments.count - 1 { rounds += 1 }
        try guestWrites(segment: segment, count: pagesDirtiedPerRound(rounds, throttles.last ?? 0))
        return words
    }

    func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        guard dirtyLogging, manualClear else { throw MigrationError("dirty log clearing is not manual") }
        let pageCount = config.segments[segment].size / 4096
        guard firstPage % 64 == 0, firstPage + UInt64(bitmap.count) * 64 <= (pageCount + 63) / 64 * 64 else {
            throw MigrationError(
                "dirty log clear from page \(firstPage) with \(bitmap.count) words: misaligned or beyond the segment")
        }
        var pages: [UInt64] = []
        for (index, word) in bitmap.enumerated() {
            for bit in 0..<UInt64(64) where word & (1 << bit) != 0 { pages.append(firstPage + UInt64(index) * 64 + bit) }
        }
        try guestWrites(segment: segment, count: pagesDirtiedPerClear)
        for page in writesBeforeClear(segment, pages) { try write(segment: segment, page: page) }
        clears.append((rounds, segment, pages))
        dirtyBits[segment].subtract(pages)
    }

    private func guestWrites(segment: Int, count: Int) throws {
        let pages = config.segments[segment].size / 4096
        if !paused {
            for _ in 0..<count { try write(segment: segment, page: UInt64.random(in: 0..<pages, using: &generator)) }
        }
    }

    /// The guest writes a fresh value to a page, and the dirty log notes it.
    func write(segment: Int, page: UInt64) throws {
        let value = UInt8.random(in: 1...255, using: &generator)
        try guestMemory.fill(segment: segment, page: page, with: [UInt8](repeating: value, count: 4096))
        if dirtyLogging { dirtyBits[segment].insert(page) }
    }

    func dirtyLogStop() throws { dirtyLogging = false }

    func setThrottle(percent: Int) throws { throttles.append(percent) }

    /// What the sender told about its send, in order: `begin`, `commit`, `finish migrated` or `finish`.
    var sendEvents: [String] = []
    func beginSend(stream: String, force: Bool) throws { sendEvents.append("begin") }
    func commitSend() throws { sendEvents.append("commit") }
    func finishSend(migrated: Bool, destination: String?) throws -> Bool {
        sendEvents.append(migrated ? "finish migrated" : "finish")
        return migrated
    }

    func bytes(page: UInt64) throws -> [UInt8] { guestMemory.bytes(page: page) }
}

/// A received machine in anonymous memory of its own.
final class FakeDestination: MigrationDestination, @unchecked Sendable {
    let guestMemory: AnonymousGuestMemory
    let disks: [AnonymousGuestMemory]
    let memory: any GuestMemory
    var restored: MachineState?
    var resumed = false
    var abandoned = false
    var kept: PartialReceive?
    /// When set, `resume` stamps its moment this far from now, as vmrun stamps the vCPUs' start.
    var resumeStampOffset: Int64?

    /// Its memory and disks store late (`AnonymousGuestMemory.storesLate`): what the receiver writes lands only
    /// when it asks for it.
    init(config: MachineConfig, offersLanding: Bool = false) throws {
        guestMemory = AnonymousGuestMemory(segments: config.segments, offersLanding: offersLanding, storesLate: true)
        disks = config.disks.map {
            AnonymousGuestMemory(
                segments: [MemorySegment(name: $0.name, guestPhysicalBase: 0, size: $0.size)], storesLate: true)
        }
        memory = MachineAreas(memory: guestMemory, disks: config.disks, stores: disks)
    }

    func restore(_ state: MachineState) throws {
        guard guestMemory.pendingStores == 0, disks.allSatisfy({ $0.pendingStores == 0 }) else {
            throw MigrationError("state restored while writes to the machine were still pending")
        }
        restored = state
    }
    func resume() throws -> UInt64? {
        resumed = true
        return resumeStampOffset.map { UInt64(Int64(HostClock.realtimeNanoseconds()) + $0) }
    }
    func confirmRunning() throws {}
    func abandon() { abandoned = true }
    func keepPartial(_ partial: PartialReceive, checkpoint: [UInt8]) throws {
        guard guestMemory.pendingStores == 0 else { throw MigrationError("kept while writes were still pending") }
        kept = partial
    }

    func bytes(page: UInt64) throws -> [UInt8] { guestMemory.bytes(page: page) }

    /// Pages that were ever written, to prove zero pages were not populated.
    func populatedPageCount() throws -> UInt64 {
        try memory.populatedPages(segment: 0).reduce(0) { $0 + UInt64($1.count) }
    }
}

/// A dry run's checks that accept everything, counting what they were shown.
final class AcceptingCheck: IncomingCheck {
    var configurations = 0
    var states = 0
    var finished = 0
    func checkConfiguration(_ config: MachineConfig) throws { configurations += 1 }
    func checkState(_ state: MachineState, diskSamples: [Int: [UInt64: [UInt8]]]) throws { states += 1 }
    func finish() { finished += 1 }
}
