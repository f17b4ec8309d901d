import Foundation
import Glibc
import MachineDescription

@testable import VMM

/// Why a KVM test cannot run here, or nil when /dev/kvm is usable.
let kvmUnavailable: String? = access("/dev/kvm", R_OK | W_OK) == 0 ? nil : "/dev/kvm is missing or not accessible"

/// A temporary folder for console logs, removed at the end of a test.
final class Scratch {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("vmm-test-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
    func read(_ name: String) -> String { (try? String(contentsOfFile: file(name), encoding: .utf8)) ?? "" }
}

/// Polls `condition` every 10 ms for up to `seconds`.
func eventually(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

extension KVMMachine {
    var ticks: [UInt64] { status().vcpus.map(\.tick) }
}

/// Copies guest RAM between two machines through their memfds, 1 MiB at a time, leaving zero pages as holes.
func copyMemory(from source: KVMMachine, to destination: KVMMachine) {
    let size = Int(source.config.memorySize)
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    var offset = 0
    while offset < size {
        let count = buffer.withUnsafeMutableBytes {
            pread(source.memoryFile, $0.baseAddress, min($0.count, size - offset), off_t(offset))
        }
        precondition(count > 0, "pread from the source memfd failed")
        var page = 0
        while page < count {
            let length = min(4096, count - page)
            if buffer[page..<page + length].contains(where: { $0 != 0 }) {
                let written = buffer[page..<page + length].withUnsafeBytes {
                    pwrite(destination.memoryFile, $0.baseAddress, length, off_t(offset + page))
                }
                precondition(written == length, "pwrite to the destination memfd failed")
            }
            page += length
        }
        offset += count
    }
}

/// Reads `length` bytes of a machine's RAM at memfd offset `offset`.
func readMemory(_ machine: KVMMachine, offset: Int, length: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: length)
    let count = bytes.withUnsafeMutableBytes { pread(machine.memoryFile, $0.baseAddress, length, off_t(offset)) }
    precondition(count == length)
    return bytes
}
