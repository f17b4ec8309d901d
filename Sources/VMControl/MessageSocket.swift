import Glibc
import SystemPackage
import SystemSupport

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// One message as it came off the socket, before its JSON is decoded.
package struct ReceivedMessage {
    package var json: [UInt8]
    package var payload: [UInt8]
    /// A descriptor that rode on the message (SCM_RIGHTS); the receiver owns it.
    package var descriptor: Int32?
}

/// A connected Unix stream socket that sends and receives whole protocol messages.
package struct MessageSocket: Sendable {
    package let fd: Int32

    package init(fd: Int32) { self.fd = fd }

    /// Sends a header, `json` and `payload`; `descriptor`, if any, rides on the header.
    package func send(json: [UInt8], payload: [UInt8] = [], descriptor: Int32? = nil) throws {
        guard json.count <= ControlProtocol.maximumJSONLength else {
            throw ControlError("message too large: \(json.count) bytes of JSON (limit \(ControlProtocol.maximumJSONLength))")
        }
        guard payload.count <= ControlProtocol.maximumPayloadLength else {
            throw ControlError("payload too large: \(payload.count) bytes (limit \(ControlProtocol.maximumPayloadLength))")
        }
        var header = ByteWriter(capacity: ControlProtocol.headerLength)
        header.u32(UInt32(json.count))
        header.u32(UInt32(payload.count))
        let head = header.bytes
        if let descriptor {
            try sendHeaderWithDescriptor(head, descriptor: descriptor)
        } else {
            try sendAll(head)
        }
        try sendAll(json)
        try sendAll(payload)
    }

    /// Encodes `value` as the message's JSON.
    package func send<T: Encodable>(_ value: T, payload: [UInt8] = [], descriptor: Int32? = nil) throws {
        let json = try Array(JSONEncoder().encode(value))
        try send(json: json, payload: payload, descriptor: descriptor)
    }

    /// The next message, or nil when the peer closed the connection between messages.
    package func receive() throws -> ReceivedMessage? {
        var head = [UInt8](repeating: 0, count: ControlProtocol.headerLength)
        var descriptor: Int32?
        var received = 0
        while received < head.count {
            let count: Int
            let fdReceived: Int32?
            do {
                (count, fdReceived) = try receiveWithDescriptor(into: &head, at: received)
            } catch {
                if let descriptor { Glibc.close(descriptor) }
                throw error
            }
            if let fdReceived {
                if let descriptor { Glibc.close(descriptor) }
                descriptor = fdReceived
            }
            if count == 0 {
                if let descriptor { Glibc.close(descriptor) }
                if received == 0 { return nil }
                throw ControlError("connection closed in the middle of a message")
            }
            received += count
        }
        do {
            var reader = ByteReader(head)
            let jsonLength = Int(reader.u32()!)
            let payloadLength = Int(reader.u32()!)
            guard (1...ControlProtocol.maximumJSONLength).contains(jsonLength) else {
                throw ControlError("bad message: JSON length \(jsonLength) (limit \(ControlProtocol.maximumJSONLength))")
            }
            guard payloadLength <= ControlProtocol.maximumPayloadLength else {
                throw ControlError("bad message: payload length \(payloadLength) (limit \(ControlProtocol.maximumPayloadLength))")
            }
            let json = try receiveExactly(jsonLength)
            let payload = try receiveExactly(payloadLength)
            return ReceivedMessage(json: json, payload: payload, descriptor: descriptor)
        } catch {
            if let descriptor { Glibc.close(descriptor) }
            throw error
        }
    }

    /// Decodes a message's JSON as `T`.
    package static func decode<T: Decodable>(_ type: T.Type, from json: [UInt8]) throws -> T {
        try JSONDecoder().decode(type, from: Data(json))
    }

    /// Gives up on a peer that stops in the middle of a message.
    package func setReceiveTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    package func close() { _ = Glibc.close(fd) }

    private func sendAll(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = retryingInterrupts {
                bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            }
            if count < 0 { throw ControlError.system("send", errno) }
            sent += count
        }
    }

    private func sendHeaderWithDescriptor(_ head: [UInt8], descriptor: Int32) throws {
        var control = [UInt8](repeating: 0, count: controlSpace)
        control.withUnsafeMutableBytes { buffer in
            let header = buffer.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
            header.pointee.cmsg_len = controlLength
            header.pointee.cmsg_level = SOL_SOCKET
            header.pointee.cmsg_type = Int32(SCM_RIGHTS)
            buffer.storeBytes(of: descriptor, toByteOffset: cmsgHeaderSize, as: Int32.self)
        }
        var head = head
        let count = Self.withMessage(&head, at: 0, control: &control) { message in
            sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
        }
        if count < 0 { throw ControlError.system("sendmsg", errno) }
        try sendAll(Array(head[count...]))
    }

    /// Runs `call` (sendmsg or recvmsg) on a msghdr over `bytes[offset...]` and `control`, retrying EINTR.
    private static func withMessage(
        _ bytes: inout [UInt8], at offset: Int, control: inout [UInt8],
        _ call: (inout msghdr) -> Int
    ) -> Int {
        bytes.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { controlBytes in
                var vector = iovec(iov_base: data.baseAddress! + offset, iov_len: data.count - offset)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr()
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    message.msg_control = controlBytes.baseAddress
                    message.msg_controllen = controlBytes.count
                    var result: Int
                    result = retryingInterrupts { call(&message) }
                    return result
                }
            }
        }
    }

    /// Reads into `buffer` from `offset`, collecting a descriptor passed with SCM_RIGHTS.
    private func receiveWithDescriptor(into buffer: inout [UInt8], at offset: Int) throws -> (Int, Int32?) {
        var control = [UInt8](repeating: 0, count: controlSpace)
        var flags: Int32 = 0
        let count = Self.withMessage(&buffer, at: offset, control: &control) { message in
            defer { flags = message.msg_flags }
            return recvmsg(fd, &message, Int32(MSG_CMSG_CLOEXEC))
        }
        if count < 0 { throw ControlError.receiving(errno) }
        var descriptor: Int32?
        control.withUnsafeBytes { buffer in
            let header = buffer.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
            guard header.pointee.cmsg_len >= controlLength,
                header.pointee.cmsg_level == SOL_SOCKET,
                header.pointee.cmsg_type == Int32(SCM_RIGHTS)
            else { return }
            descriptor = buffer.load(fromByteOffset: cmsgHeaderSize, as: Int32.self)
        }
        if flags & Int32(MSG_CTRUNC) != 0 {
            if let descriptor { Glibc.close(descriptor) }
            throw ControlError("bad message: more than one descriptor attached")
        }
        return (count, descriptor)
    }

    private func receiveExactly(_ length: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: length)
        var received = 0
        while received < length {
            let count = retryingInterrupts {
                bytes.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + received, length - received, 0) }
            }
            if count < 0 { throw ControlError.receiving(errno) }
            if count == 0 { throw ControlError("connection closed in the middle of a message") }
            received += count
        }
        return bytes
    }
}

/// cmsghdr layout for one descriptor (what CMSG_SPACE/CMSG_LEN compute in C).
private let cmsgHeaderSize = (MemoryLayout<cmsghdr>.size + 7) & ~7
private let controlLength = cmsgHeaderSize + MemoryLayout<Int32>.size
private let controlSpace = cmsgHeaderSize + ((MemoryLayout<Int32>.size + 7) & ~7)

/// Unix-domain socket plumbing shared by the client and the server.
package enum UnixSocket {
    /// A connected stream socket to `path`; the error keeps the errno so callers can tell a
    /// missing socket (ENOENT) and a dead server (ECONNREFUSED) apart.
    package static func connect(path: String) throws -> MessageSocket {
        var address = try socketAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw ControlError.system("socket", errno) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result < 0 {
            let error = errno
            Glibc.close(fd)
            throw ControlError.system("connect to \(path)", error)
        }
        return MessageSocket(fd: fd)
    }

    /// A listening socket bound at `path` with mode 0600. Fails with EADDRINUSE if `path` exists.
    package static func listen(path: String) throws -> Int32 {
        var address = try socketAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw ControlError.system("socket", errno) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if bound < 0 {
            let error = errno
            Glibc.close(fd)
            throw ControlError.system("bind \(path)", error)
        }
        if chmod(path, 0o600) < 0 || Glibc.listen(fd, 16) < 0 {
            let error = errno
            Glibc.close(fd)
            unlink(path)
            throw ControlError.system("listen on \(path)", error)
        }
        return fd
    }

    private static func socketAddress(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else {
            throw ControlError(
                "socket path is too long (\(bytes.count) bytes, limit \(capacity - 1)): \(path); use a shorter --run-dir")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
        }
        return address
    }
}
