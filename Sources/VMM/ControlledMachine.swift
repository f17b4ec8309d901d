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
    func dirtyLogStart() throws
    /// One bit per page of segment `segment`, as little-endian 64-bit words; fetched and cleared.
    func dirtyLogFetchAndClear(segment: Int) throws -> [UInt64]
    func dirtyLogStop() throws
    /// Makes each vCPU sleep `percent` % of the time (auto-converge); 0 runs them flat out.
    func setThrottle(percent: Int) throws
    /// Kernel and device state of a paused machine.
    func saveState() throws -> MachineState
    /// Restores an incoming machine, in the order of kvm-state.md. Leaves it paused.
    func restoreState(_ state: MachineState) throws
    /// Bytes for the UART's receive FIFO.
    func consoleInput(_ bytes: [UInt8]) throws
}
