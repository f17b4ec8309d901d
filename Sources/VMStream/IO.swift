#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// Where a writer's bytes go: a file descriptor, or memory in tests.
protocol ByteSink: AnyObject {
    /// Writes every byte of `buffers`, in order.
    func write(_ buffers: [UnsafeRawBufferPointer]) throws
}

/// Where a reader's bytes come from: a file descriptor, or memory in tests and the fuzzer.
protocol ByteSource: AnyObject {
    /// Fills `buffers` in order; returns fewer bytes than asked only at end of input.
    func read(_ buffers: [UnsafeMutableRawBufferPointer]) throws -> Int
}

extension FileDescriptor {
    /// Whether the descriptor is a terminal, which streams refuse (as `zfs send` does).
    var isTerminal: Bool { isatty(rawValue) == 1 }
}

/// Turns iovec bookkeeping into whole transfers, retrying EINTR and picking up after short counts.
private func transferAll(_ buffers: [UnsafeMutableRawBufferPointer], stopAtZero: Bool,
                         _ call: (UnsafePointer<iovec>, Int32) -> Int) throws(Errno) -> Int {
    var vectors = buffers.filter { $0.count > 0 }.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
    var first = 0
    var total = 0
    while first < vectors.count {
        let batch = min(vectors.count - first, 1024)  // IOV_MAX on Linux
        let done = vectors.withUnsafeBufferPointer { call($0.baseAddress! + first, Int32(batch)) }
        if done < 0 {
            let error = Errno(rawValue: errno)
            if error == .interrupted { continue }
            throw error
        }
        if done == 0 && stopAtZero { break }
        total += done
        var left = done
        while left > 0 && first < vectors.count {
            if left >= vectors[first].iov_len {
                left -= vectors[first].iov_len
                first += 1
            } else {
                vectors[first].iov_base += left
                vectors[first].iov_len -= left
                left = 0
            }
        }
    }
    return total
}

final class FileSink: ByteSink {
    let descriptor: FileDescriptor
    init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }

    func write(_ buffers: [UnsafeRawBufferPointer]) throws {
        let mutable = buffers.map { UnsafeMutableRawBufferPointer(mutating: $0) }
        do {
            _ = try transferAll(mutable, stopAtZero: false) { Glibc.writev(descriptor.rawValue, $0, $1) }
        } catch .brokenPipe {
            throw StreamError(.io, "cannot write the stream: the reading end was closed (broken pipe)")
        } catch {
            throw StreamError(.io, "cannot write the stream: \(error)")
        }
    }
}

final class FileSource: ByteSource {
    let descriptor: FileDescriptor
    init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }

    func read(_ buffers: [UnsafeMutableRawBufferPointer]) throws -> Int {
        do {
            return try transferAll(buffers, stopAtZero: true) { Glibc.readv(descriptor.rawValue, $0, $1) }
        } catch {
            throw StreamError(.io, "cannot read the stream: \(error)")
        }
    }
}

/// A stream held in memory: golden files, sweeps and the fuzzer read from it.
final class MemorySource: ByteSource {
    private let bytes: [UInt8]
    private var position = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func read(_ buffers: [UnsafeMutableRawBufferPointer]) throws -> Int {
        var total = 0
        for buffer in buffers {
            let count = min(buffer.count, bytes.count - position)
            guard count > 0, let base = buffer.baseAddress else { continue }
            bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress! + position, byteCount: count) }
            position += count
            total += count
        }
        return total
    }
}

/// Collects a written stream in memory.
final class MemorySink: ByteSink {
    var bytes: [UInt8] = []
    func write(_ buffers: [UnsafeRawBufferPointer]) throws {
        for buffer in buffers { bytes.append(contentsOf: buffer) }
    }
}
