import MachineDescription

/// What the control server needs from a machine. `KVMMachine` is the real one; tests use fakes.
///
/// Every method is called from the control server's thread; implementations serialise
/// against their own vCPU threads.
public protocol ControlledMachine: AnyObject, Sendable {
    var config: MachineConfig { get }
    var host: HostSpec { get }
    /// The memfd holding guest RAM, segments back to back (see `MemorySegment`).
    var memoryFile: Int32 { get }
    func status() -> MachineStatus
    /// Parks every vCPU (immediate_exit + signal) and quiesces device emulation.
    func pause() throws
    /// Runs the vCPUs; for an incoming machine, only after `restoreState`.
    func resume() throws
    /// Stops the vCPUs and releases KVM and memory. Idempotent.
    func destroy()
    /// Starts dirty logging. With `manualClear` where the host supports it, fetches leave the log as it is and
    /// `dirtyLogClear` re-arms chosen pages just before they are copied; returns whether that is in effect.
    func dirtyLogStart(manualClear: Bool) throws -> Bool
    /// One bit per page of segment `segment`, as little-endian 64-bit words; cleared as fetched unless clearing is manual.
    func dirtyLogFetch(segment: Int) throws -> [UInt64]
    /// Manual clearing: re-arms page `firstPage + i` of `segment` for each set bit i (`firstPage` a multiple of 64),
    /// so only writes after this call mark it dirty again.
    func dirtyLogClear(segment: Int, firstPage: UInt64, bitmap: [UInt64]) throws
    func dirtyLogStop() throws
    /// Makes each vCPU sleep `percent` % of the time (auto-converge); 0 runs them flat out.
    func setThrottle(percent: Int) throws
    /// Kernel and device state of a paused machine.
    func saveState() throws -> MachineState
    /// Restores an incoming machine, in the order of docs/kvm-state.md. Leaves it paused.
    func restoreState(_ state: MachineState) throws
    /// Bytes for the UART's receive FIFO.
    func consoleInput(_ bytes: [UInt8]) throws
    /// The image file of disk `disk`, lent as the memory file is.
    func diskFile(_ disk: Int) throws -> Int32
    /// The disk's blocks written since the last fetch (one bit per 4 KiB block) while dirty logging is on.
    func diskWrittenFetch(_ disk: Int) throws -> [UInt64]
}
