import ArgumentParser
import MachineDescription
import SystemPackage
import ToolSupport
import VMStream

#if canImport(Glibc)
    import Glibc
#endif

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a synthetic migration stream to standard output.",
        discussion: """
            Guest memory is generated (half zero pages, a quarter text-like, a quarter random) or taken \
            from --image, a file whose size is a multiple of 4096, mapped and sent without a copy.
            """)

    @Option(help: "Guest memory size, with an optional K, M or G suffix (ignored with --image).")
    var size: String = "64M"

    @Option(help: "A file to use as guest memory.")
    var image: String?

    @OptionGroup var compression: CompressionOption

    @Option(help: "Seed of the generated memory.")
    var seed: UInt64 = 1

    func validate() throws {
        if image == nil {
            guard let bytes = try? ByteSize.parse(size), bytes > 0, bytes % 4096 == 0 else {
                throw ValidationError("--size must be a positive multiple of 4096 bytes, e.g. 64M")
            }
        }
    }

    func run() throws {
        let writer = try StreamWriter(
            output: .standardOutput, compression: Compression.named(compression.method.rawValue) ?? .none)
        let now = UInt64(Self.now())
        guard let image else {
            let begin = SampleStream.begin(
                memorySize: try ByteSize.parse(size), uuid: StreamBegin.randomUUID(), creationTime: now,
                toolVersion: Release.version)
            try SampleStream.write(to: writer, begin: begin, seed: seed, sourcePauseTime: now)
            return
        }
        let fd = try FileDescriptor.open(image, .readOnly)
        try fd.closeAfter {
            let length = try fd.seek(offset: 0, from: .end)
            guard length > 0, length % 4096 == 0 else {
                throw ToolError("\(image): size \(length) is not a positive multiple of 4096")
            }
            guard let mapping = mmap(nil, Int(length), PROT_READ, MAP_SHARED | MAP_POPULATE, fd.rawValue, 0),
                mapping != MAP_FAILED
            else {
                throw ToolError("\(image): cannot map: \(Errno(rawValue: errno))")
            }
            defer { munmap(mapping, Int(length)) }
            let begin = SampleStream.begin(
                memorySize: UInt64(length), uuid: StreamBegin.randomUUID(), creationTime: now, toolVersion: Release.version)
            // Segments lie back to back in the image, as in a machine's memory file.
            let segmentOffsets = MemorySegment.fileOffsets(begin.machine.segments).map { Int($0) }
            try SampleStream.write(to: writer, begin: begin, seed: seed, sourcePauseTime: now) { segment, first, _, _ in
                UnsafeRawPointer(mapping + segmentOffsets[segment] + Int(first) * 4096)
            }
        }
    }

    static func now() -> Int {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return spec.tv_sec * 1_000_000_000 + spec.tv_nsec
    }
}
