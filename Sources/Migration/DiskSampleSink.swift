import MachineDescription
import VMStream

/// A dry run's sink: keeps nothing but the disk blocks a fingerprint samples, as the stream leaves them (a later
/// round's copy replaces an earlier one, a zero block clears it), so that the disks' state can be checked as a
/// receive checks it without writing the disks anywhere. At most 257 blocks (1 MiB) per disk.
final class DiskSampleSink: PageSink {
    /// Area index of the first disk (areas are segments, then disks).
    private let firstDisk: Int
    private let sampled: [Set<UInt64>]
    private(set) var samples: [Int: [UInt64: [UInt8]]] = [:]

    init(config: MachineConfig) {
        firstDisk = config.segments.count
        sampled = config.disks.map { $0.sharedStorage ? [] : Set($0.fingerprintBlocks) }
    }

    private func disk(_ area: Int) -> Int? {
        let disk = area - firstDisk
        return disk >= 0 && disk < sampled.count ? disk : nil
    }

    func destination(segment: Int, page: UInt64) -> UnsafeMutableRawPointer? { nil }

    func store(segment: Int, page: UInt64, count: Int, from data: UnsafeRawPointer) throws {
        guard let disk = disk(segment) else { return }
        for index in 0..<count where sampled[disk].contains(page + UInt64(index)) {
            let block = UnsafeRawBufferPointer(start: data + index * StreamFormat.pageSize, count: StreamFormat.pageSize)
            samples[disk, default: [:]][page + UInt64(index)] = Array(block)
        }
    }

    func zeroPage(segment: Int, page: UInt64) throws {
        guard let disk = disk(segment), sampled[disk].contains(page) else { return }
        samples[disk]?[page] = nil
    }
}
