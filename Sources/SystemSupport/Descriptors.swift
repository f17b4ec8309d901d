import CLinux
import Glibc
import SystemPackage

extension FileDescriptor {
    /// Whether the descriptor is a terminal, which streams refuse (as `zfs send` does).
    public var isTerminal: Bool { isatty(rawValue) == 1 }

    /// Whether the descriptor is a pipe or FIFO.
    public var isPipe: Bool { fileType == S_IFIFO }

    /// Whether the descriptor is a regular file (a stream saved to disk).
    public var isRegularFile: Bool { fileType == S_IFREG }

    /// For a regular file, the bytes from the current offset to its end: how long a stream read from it is.
    public var bytesLeftInFile: UInt64? {
        var info = Glibc.stat()
        guard Glibc.fstat(rawValue, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return nil }
        let offset = Glibc.lseek(rawValue, 0, SEEK_CUR)
        return offset >= 0 && info.st_size >= offset ? UInt64(info.st_size - offset) : nil
    }

    private var fileType: mode_t? {
        var info = Glibc.stat()
        return Glibc.fstat(rawValue, &info) == 0 ? info.st_mode & S_IFMT : nil
    }

    /// Grows a pipe to /proc/sys/fs/pipe-max-size (1 MiB by default, at most 16 MiB) from its 64 KiB: writer and
    /// reader then meet once per MiB instead of 16 times. A refusal leaves it as it was.
    public func growPipe() {
        guard isPipe else { return }
        let limit =
            (try? FileDescriptor.readFile("/proc/sys/fs/pipe-max-size", limit: 64))
            .flatMap { Int32(String(decoding: $0, as: UTF8.self).filter(\.isNumber)) } ?? 1 << 20
        let size = min(limit, 16 << 20)
        if clinux_pipe_size(rawValue) < size { _ = clinux_set_pipe_size(rawValue, size) }
    }

    /// Bytes written into this pipe that its reader has not taken yet; nil when that cannot be told.
    public var unreadPipeBytes: Int? {
        let count = clinux_pipe_unread(rawValue)
        return count < 0 ? nil : Int(count)
    }

    /// Reads to the end of input, refusing more than `limit` bytes; `what` names the input in errors.
    public func readToEnd(limit: Int, what: String) throws(SystemError) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = retryingInterrupts { chunk.withUnsafeMutableBytes { Glibc.read(rawValue, $0.baseAddress, $0.count) } }
            if count < 0 { throw SystemError.last("cannot read", path: what) }
            if count == 0 { return bytes }
            guard bytes.count + count <= limit else {
                throw SystemError("cannot read", path: what, errno: .fileTooLarge)
            }
            bytes += chunk[..<count]
        }
    }

    /// Writes every byte, retrying short writes and EINTR.
    public func writeFully(_ bytes: some Collection<UInt8>, what: String) throws(SystemError) {
        do {
            _ = try writeAll(bytes)
        } catch {
            throw SystemError("cannot write", path: what, errno: error as? Errno ?? .ioError)
        }
    }

    /// Reads a whole small file (a /proc file whose size is unknown up front).
    public static func readFile(_ path: String, limit: Int) throws(SystemError) -> [UInt8] {
        let fd = try systemCall("cannot open", path: path) { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
        defer { Glibc.close(fd) }
        return try FileDescriptor(rawValue: fd).readToEnd(limit: limit, what: path)
    }
}

/// Moves whole iovec lists through a vectored call (readv, writev, vmsplice), retrying EINTR and picking up after
/// short counts. With `stopAtZero` a call that moves nothing (end of input) ends the transfer early.
public func transferAll(
    _ buffers: [UnsafeMutableRawBufferPointer], stopAtZero: Bool,
    _ call: (UnsafePointer<iovec>, Int32) -> Int
) throws(Errno) -> Int {
    var vectors = buffers.filter { $0.count > 0 }.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
    var first = 0
    var total = 0
    while first < vectors.count {
        let batch = min(vectors.count - first, 1024)  // IOV_MAX on Linux
        let done = retryingInterrupts { vectors.withUnsafeBufferPointer { call($0.baseAddress! + first, Int32(batch)) } }
        if done < 0 { throw Errno(rawValue: errno) }
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

/// Lends pages to a pipe with vmsplice(2): the reader gets references, not copies.
public func vmsplice(_ descriptor: FileDescriptor, _ vectors: UnsafePointer<iovec>, _ count: Int32) -> Int {
    clinux_vmsplice(descriptor.rawValue, vectors, UInt(count), 0)
}

/// Waits for events on descriptors, retrying EINTR with what is left of the timeout; returns the ready count.
public func pollDescriptors(_ descriptors: inout [pollfd], timeout: Duration?) -> Int32 {
    let deadline = timeout.map { ContinuousClock.now + $0 }
    while true {
        let milliseconds = deadline.map { HostClock.milliseconds(ContinuousClock.now.duration(to: $0)) } ?? -1
        let ready = poll(&descriptors, nfds_t(descriptors.count), milliseconds)
        if ready >= 0 || errno != EINTR { return ready }
    }
}

extension FileDescriptor {
    /// Deallocates a byte range of a file, which then reads as zeroes (FALLOC_FL_PUNCH_HOLE, size kept).
    public func punchHole(offset: UInt64, length: UInt64, what: String) throws(SystemError) {
        try systemCall("cannot punch a hole in", path: what) {
            clinux_fallocate(rawValue, CLINUX_FALLOC_PUNCH_HOLE, off_t(offset), off_t(length))
        }
    }

    /// fdatasync(2): the file's data reaches stable storage.
    public func dataSync(what: String) throws(SystemError) {
        try systemCall("cannot sync", path: what) { fdatasync(rawValue) }
    }

    /// Starts writing the file's dirty pages back and waits for none of it, so that a later `dataSync` has less to
    /// do. A hint: a file that cannot (a pipe, tmpfs) is left as it is.
    public func startWriteback() { _ = clinux_start_writeback(rawValue) }

    /// The file's size in bytes.
    public func size(what: String) throws(SystemError) -> UInt64 {
        var info = Glibc.stat()
        try systemCall("cannot stat", path: what) { Glibc.fstat(rawValue, &info) }
        return UInt64(info.st_size)
    }

    /// Reads exactly `buffer.count` bytes at `offset`; a file too short is an error.
    public func readFully(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, what: String) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let count = retryingInterrupts {
                Glibc.pread(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if count < 0 { throw SystemError.last("cannot read", path: what) }
            if count == 0 { throw SystemError("cannot read", path: what, errno: .ioError) }
            done += count
        }
    }

    /// Writes all of `buffer` at `offset`.
    public func writeFully(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, what: String) throws(SystemError) {
        do {
            _ = try writeAll(toAbsoluteOffset: Int64(offset), buffer)
        } catch {
            throw SystemError("cannot write", path: what, errno: error as? Errno ?? .ioError)
        }
    }
}
