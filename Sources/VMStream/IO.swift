import SystemPackage
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Where a writer's bytes go: a file descriptor, or memory in tests.
protocol ByteSink: AnyObject {
    /// Writes every byte of `buffers`, in order.
    func write(_ buffers: [UnsafeRawBufferPointer]) throws
    /// Like `write`, but a pipe may keep references to the pages of `buffers` instead of copies
    /// (vmsplice): the caller keeps them unchanged until the reader has taken them.
    func lend(_ buffers: [UnsafeRawBufferPointer]) throws
    /// Waits until the reader has taken every byte written (a pipe's unread count drops to 0).
    func waitUntilConsumed()
}

extension ByteSink {
    func lend(_ buffers: [UnsafeRawBufferPointer]) throws { try write(buffers) }
    func waitUntilConsumed() {}
}

/// Where a reader's bytes come from: a file descriptor, or memory in tests and the fuzzer.
protocol ByteSource: AnyObject {
    /// Fills `buffers` in order; returns fewer bytes than asked only at end of input.
    func read(_ buffers: [UnsafeMutableRawBufferPointer]) throws -> Int
    /// Bytes that could be read now without waiting, nil when that cannot be told; reads nothing.
    func bytesWaiting() -> UInt64?
    /// The rest of a pipe or socket when it ends within `limit` more bytes, each read coming within `patience`;
    /// nil otherwise, and for a file or memory, whose end says nothing about the writer.
    func rest(upTo limit: Int, patience: Duration) -> [UInt8]?
}

extension ByteSource {
    func rest(upTo limit: Int, patience: Duration) -> [UInt8]? { nil }
}

final class FileSink: ByteSink {
    let descriptor: FileDescriptor
    private let isPipe: Bool
    init(_ descriptor: FileDescriptor) {
        self.descriptor = descriptor
        isPipe = descriptor.isPipe
    }

    func write(_ buffers: [UnsafeRawBufferPointer]) throws {
        try transfer(buffers) { Glibc.writev(descriptor.rawValue, $0, $1) }
    }

    func lend(_ buffers: [UnsafeRawBufferPointer]) throws {
        guard isPipe else { return try write(buffers) }
        try transfer(buffers) { vmsplice(descriptor, $0, $1) }
    }

    func waitUntilConsumed() {
        guard isPipe else { return }
        var reader = pollfd(fd: descriptor.rawValue, events: 0, revents: 0)
        // Polled: a pipe wakes its writer when there is room, never when it is empty. A gone reader ends the wait.
        while (descriptor.unreadPipeBytes ?? 0) > 0 {
            if poll(&reader, 1, 0) > 0 && reader.revents & Int16(POLLERR | POLLHUP) != 0 { return }
            usleep(200)
        }
    }

    private func transfer(_ buffers: [UnsafeRawBufferPointer], _ call: (UnsafePointer<iovec>, Int32) -> Int) throws {
        let mutable = buffers.map { UnsafeMutableRawBufferPointer(mutating: $0) }
        do {
            _ = try transferAll(mutable, stopAtZero: false, call)
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

    func rest(upTo limit: Int, patience: Duration) -> [UInt8]? {
        guard !descriptor.isRegularFile else { return nil }
        var chunk = [UInt8](repeating: 0, count: 65536)
        var rest: [UInt8] = []
        while rest.count <= limit {
            var ready = [pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)]
            guard pollDescriptors(&ready, timeout: patience) > 0 else { return nil }
            let count = retryingInterrupts {
                chunk.withUnsafeMutableBytes { Glibc.read(descriptor.rawValue, $0.baseAddress, $0.count) }
            }
            if count == 0 { return rest }
            if count < 0 { return nil }
            rest += chunk[0..<count]
        }
        return nil
    }

    /// A file's bytes past the offset; what a pipe or socket holds (FIONREAD).
    func bytesWaiting() -> UInt64? {
        if descriptor.isRegularFile {
            var info = Glibc.stat()
            let offset = lseek(descriptor.rawValue, 0, SEEK_CUR)
            guard fstat(descriptor.rawValue, &info) == 0, offset >= 0 else { return nil }
            return UInt64(max(0, Int64(info.st_size) - Int64(offset)))
        }
        var count: Int32 = 0
        return ioctl(descriptor.rawValue, UInt(FIONREAD), &count) == 0 ? UInt64(max(count, 0)) : nil
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

    func bytesWaiting() -> UInt64? { UInt64(bytes.count - position) }
}

/// Collects a written stream in memory.
final class MemorySink: ByteSink {
    var bytes: [UInt8] = []
    func write(_ buffers: [UnsafeRawBufferPointer]) throws {
        for buffer in buffers { bytes.append(contentsOf: buffer) }
    }
}
