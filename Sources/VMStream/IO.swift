#if canImport(Glibc)
import Glibc
#endif
import CStreamSupport
import SystemPackage

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
}

extension FileDescriptor {
    /// Whether the descriptor is a terminal, which streams refuse (as `zfs send` does).
    var isTerminal: Bool { isatty(rawValue) == 1 }

    /// Whether the descriptor is a pipe (or FIFO).
    var isPipe: Bool { descriptorIsPipe(rawValue) }

    /// Grows a pipe to /proc/sys/fs/pipe-max-size (1 MiB by default) from its 64 KiB: writer and
    /// reader then meet once per MiB instead of 16 times. Both ends ask; a refusal leaves it as it was.
    func growPipe() {
        guard isPipe else { return }
        let size = min(pipeMaxSize() ?? 1 << 20, 16 << 20)
        if fcntl(rawValue, fcntlGetPipeSize) < size { _ = fcntl(rawValue, fcntlSetPipeSize, size) }
    }
}

/// fcntl commands Glibc's Swift module leaves out (linux/fcntl.h: F_SETPIPE_SZ 1031, F_GETPIPE_SZ 1032).
private let fcntlSetPipeSize: Int32 = 1031
private let fcntlGetPipeSize: Int32 = 1032

private func descriptorIsPipe(_ descriptor: Int32) -> Bool {
    var stats = stat()
    return fstat(descriptor, &stats) == 0 && (stats.st_mode & S_IFMT) == S_IFIFO
}

private func pipeMaxSize() -> Int32? {
    let file = open("/proc/sys/fs/pipe-max-size", O_RDONLY | O_CLOEXEC)
    guard file >= 0 else { return nil }
    defer { close(file) }
    var text = [UInt8](repeating: 0, count: 32)
    let count = read(file, &text, text.count)
    guard count > 0 else { return nil }
    return Int32(String(decoding: text[0..<count], as: UTF8.self).filter(\.isNumber))
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
        try transfer(buffers) { css_vmsplice(descriptor.rawValue, $0, UInt($1), 0) }
    }

    func waitUntilConsumed() {
        guard isPipe else { return }
        var reader = pollfd(fd: descriptor.rawValue, events: 0, revents: 0)
        // Polled: a pipe wakes its writer when there is room, never when it is empty. A gone reader ends the wait.
        while css_pipe_unread(descriptor.rawValue) > 0 {
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
