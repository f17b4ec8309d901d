import KVM
import Synchronization

/// Dirty logging of guest RAM for live migration: on and off per machine, bitmaps per segment (KVM slot).
///
/// With manual clearing (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), fetches leave the log as it is and the client clears
/// chosen pages just before it copies them, so a write between the fetch and the copy is not sent twice.
final class DirtyLog: Sendable {
    enum Mode { case clearOnFetch, manualClear }

    private let vm: KVMVirtualMachine
    private let ram: GuestRAM
    private let mode = Mutex<Mode?>(nil)

    init(vm: KVMVirtualMachine, ram: GuestRAM) {
        self.vm = vm
        self.ram = ram
    }

    var isOn: Bool { mode.withLock { $0 != nil } }

    /// Starts logging; returns whether clearing is manual (asked for, and this kernel can).
    func start(manualClear: Bool) throws -> Bool {
        let manual = manualClear && vm.manualDirtyProtect
        ram.trackDeviceWrites(true)
        try ram.register(with: vm, logDirtyPages: true)
        mode.withLock { $0 = manual ? .manualClear : .clearOnFetch }
        return manual
    }

    func stop() throws {
        try ram.register(with: vm, logDirtyPages: false)
        ram.trackDeviceWrites(false)
        mode.withLock { $0 = nil }
    }

    /// One bit per page of `segment`: what the guest wrote (cleared as fetched unless clearing is manual) and what
    /// devices wrote (always reported once: a device write after this fetch shows up in the next).
    func fetch(segment: Int) throws -> [UInt64] {
        let current = try runningMode()
        let pages = try pageCount(segment)
        var bitmap =
            current == .manualClear
            ? try vm.dirtyLog(slot: UInt32(segment), pageCount: pages)
            : try vm.fetchAndClearDirtyLog(slot: UInt32(segment), pageCount: pages)
        if let devices = ram.takeDeviceWritten(segment: segment) {
            for index in bitmap.indices { bitmap[index] |= devices[index] }
        }
        return bitmap
    }

    /// Re-arms page `firstPage + i` of `segment` for each set bit i (`firstPage` a multiple of 64).
    func clear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws {
        guard try runningMode() == .manualClear else {
            throw MachineError("dirty logging was started without manual clearing: fetches clear the log")
        }
        let pages = try pageCount(segment)
        guard firstPage % 64 == 0, firstPage < pages else {
            throw MachineError(
                "dirty log clear: first page \(firstPage) is not a multiple of 64 inside segment \(segment) (\(pages) pages)")
        }
        let count = min(UInt64(bitmap.count) * 64, pages - firstPage)
        guard !bitmap.isEmpty, UInt64(bitmap.count) == (count + 63) / 64 else {
            throw MachineError(
                "dirty log clear: \(bitmap.count) bitmap words from page \(firstPage) do not fit segment \(segment) (\(pages) pages)"
            )
        }
        if count % 64 != 0, bitmap[bitmap.count - 1] >> (count % 64) != 0 {
            throw MachineError("dirty log clear: bits set beyond the end of segment \(segment) (\(pages) pages)")
        }
        try vm.clearDirtyLog(slot: UInt32(segment), firstPage: firstPage, pageCount: count, bitmap: bitmap)
    }

    private func runningMode() throws -> Mode {
        guard let current = mode.withLock({ $0 }) else { throw MachineError("dirty logging is not started") }
        return current
    }

    /// Pages of `segment`, or a clear error for a segment the machine does not have.
    private func pageCount(_ segment: Int) throws -> UInt64 {
        guard ram.segments.indices.contains(segment) else {
            throw MachineError("no memory segment \(segment) (the machine has \(ram.segments.count))")
        }
        return ram.segments[segment].size / 4096
    }
}
