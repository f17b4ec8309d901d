import CKVM
import Glibc
import SystemPackage
import SystemSupport

/// `/dev/kvm`: what the host's KVM offers, and the door to new virtual machines.
public final class KVMSystem: Sendable {
    let descriptor: OwnedDescriptor
    /// KVM_GET_API_VERSION; 12 on every Linux since 2.6.22.
    public let apiVersion: Int32

    /// Opens the KVM device; a missing or inaccessible device is a clear error.
    public init(path: String = "/dev/kvm") throws(KVMError) {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let error = Errno(rawValue: Glibc.errno)
            let hint =
                error == .noSuchFileOrDirectory
                ? "KVM is not available on this host (is the kvm module loaded?)"
                : error == .permissionDenied
                    ? (FileAccess.missingPermission(path, wanted: R_OK | W_OK) ?? "needs read and write permission")
                        + ": run it as root or as a user with that permission"
                    : "cannot open the KVM device"
            throw KVMError(call: path, errno: error, detail: hint)
        }
        descriptor = OwnedDescriptor(fd)
        apiVersion = try kvmCall("KVM_GET_API_VERSION") { ckvm_ioctl_value(fd, CKVM_GET_API_VERSION, 0) }
        guard apiVersion == 12 else {
            throw KVMError(call: "KVM_GET_API_VERSION", detail: "unsupported KVM API version \(apiVersion), need 12")
        }
    }

    /// Closes /dev/kvm (VMs already created stay alive).
    public func close() { descriptor.close() }

    /// KVM_CHECK_EXTENSION on /dev/kvm: 0 when the capability is missing, else a capability-specific value.
    public func checkExtension(_ capability: Int32) -> Int32 {
        max(0, ckvm_ioctl_value(descriptor.value, CKVM_CHECK_EXTENSION, UInt(capability)))
    }

    /// KVM_GET_VCPU_MMAP_SIZE: bytes to map of each vCPU fd (kvm_run plus the PIO data page).
    public func vcpuMmapSize() throws(KVMError) -> Int {
        let fd = descriptor.value
        return Int(try kvmCall("KVM_GET_VCPU_MMAP_SIZE") { ckvm_ioctl_value(fd, CKVM_GET_VCPU_MMAP_SIZE, 0) })
    }

    /// KVM_GET_SUPPORTED_CPUID: every leaf this host's KVM can give a guest.
    public func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        let fd = descriptor.value
        return try CPUIDList.fetch(name: "KVM_GET_SUPPORTED_CPUID") { pointer in
            ckvm_ioctl(fd, CKVM_GET_SUPPORTED_CPUID, pointer)
        }
    }

    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and restore on this host.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        let fd = descriptor.value
        var capacity = 256
        while true {
            var buffer = [UInt32](repeating: 0, count: capacity + 1)
            buffer[0] = UInt32(capacity)
            let result = buffer.withUnsafeMutableBytes { ckvm_ioctl(fd, CKVM_GET_MSR_INDEX_LIST, $0.baseAddress) }
            if result < 0 {
                let error = Errno(rawValue: Glibc.errno)
                if error == .argListTooLong, capacity < 16384 {
                    capacity *= 4
                    continue
                }
                throw KVMError(call: "KVM_GET_MSR_INDEX_LIST", errno: error)
            }
            let count = min(Int(buffer[0]), capacity)
            return Array(buffer[1...count])
        }
    }

    /// KVM_CREATE_VM (type 0: the default x86 machine).
    public func createVirtualMachine() throws(KVMError) -> KVMVirtualMachine {
        let fd = descriptor.value
        let vmFD = try kvmCall("KVM_CREATE_VM") { ckvm_ioctl_value(fd, CKVM_CREATE_VM, 0) }
        return try KVMVirtualMachine(descriptor: OwnedDescriptor(vmFD), system: self)
    }
}

/// The variable-length `struct kvm_cpuid2` (nent, padding, entries[]) as Swift arrays.
public enum CPUIDList {
    static let headerSize = 8
    static let entrySize = MemoryLayout<kvm_cpuid_entry2>.size

    /// Calls a GET ioctl with room for enough entries, growing on E2BIG.
    static func fetch(name: String, _ call: (UnsafeMutableRawPointer) -> Int32) throws(KVMError) -> [kvm_cpuid_entry2] {
        var capacity = 128
        while true {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: headerSize + capacity * entrySize, alignment: 8)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: headerSize + capacity * entrySize)
            buffer.storeBytes(of: UInt32(capacity), as: UInt32.self)
            if call(buffer) < 0 {
                let error = Errno(rawValue: Glibc.errno)
                if error == .argListTooLong, capacity < 4096 {
                    capacity *= 2
                    continue
                }
                throw KVMError(call: name, errno: error)
            }
            let count = min(Int(buffer.load(as: UInt32.self)), capacity)
            return (0..<count).map { buffer.load(fromByteOffset: headerSize + $0 * entrySize, as: kvm_cpuid_entry2.self) }
        }
    }

    /// The kernel struct bytes for `entries`.
    public static func encode(_ entries: [kvm_cpuid_entry2]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: headerSize + entries.count * entrySize)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(entries.count), as: UInt32.self)
            for (offset, entry) in entries.enumerated() {
                raw.storeBytes(of: entry, toByteOffset: headerSize + offset * entrySize, as: kvm_cpuid_entry2.self)
            }
        }
        return bytes
    }

    /// Parses kernel struct bytes; nil when the length does not match the entry count.
    public static func decode(_ bytes: [UInt8]) -> [kvm_cpuid_entry2]? {
        guard bytes.count >= headerSize else { return nil }
        return bytes.withUnsafeBytes { raw -> [kvm_cpuid_entry2]? in
            let count = Int(raw.loadUnaligned(as: UInt32.self))
            guard count <= 4096, bytes.count == headerSize + count * entrySize else { return nil }
            return (0..<count).map { raw.loadUnaligned(fromByteOffset: headerSize + $0 * entrySize, as: kvm_cpuid_entry2.self) }
        }
    }
}
