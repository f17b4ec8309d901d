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
