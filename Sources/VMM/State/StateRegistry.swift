import MachineDescription

/// One group of a machine's saved state (a vCPU, the VM's own devices, an emulated device) that saves its own
/// named, versioned chunks and restores them.
protocol StateSection {
    /// Hypervisor state (KERNEL STATE records) or an emulated device's (DEVICE STATE).
    var isDevice: Bool { get }
    /// The chunks this section saves and expects back, with their versions, in save order.
    var chunkVersions: [(name: String, version: UInt32)] { get }
    func save() throws -> [StateChunk]
    /// Refuses a chunk whose size or shape does not fit, naming it and what was expected. Changes nothing:
    /// every section checks before any restores. `chunks` holds each of `chunkVersions`.
    func check(_ chunks: [String: StateChunk]) throws
    func restore(_ chunks: [String: StateChunk]) throws
}

/// The machine's state sections in restore order (docs/kvm-state.md: vCPUs, the VM's own devices, emulated
/// devices last), and the rules every restore follows: every chunk known, none missing, none twice, each of its
/// section's version, each checked before anything is restored.
struct StateRegistry {
    let sections: [any StateSection]

    func save() throws -> MachineState {
        var kernel: [StateChunk] = []
        var devices: [StateChunk] = []
        for section in sections {
            let chunks = try section.save()
            if section.isDevice { devices += chunks } else { kernel += chunks }
        }
        return MachineState(kernel: kernel, devices: devices)
    }

    /// Checks `state` whole against every section; nothing is restored.
    func check(_ state: MachineState) throws -> [String: StateChunk] {
        var byName: [String: StateChunk] = [:]
        for (chunks, kind) in [(state.kernel, "kernel"), (state.devices, "device")] {
            for chunk in chunks where byName.updateValue(chunk, forKey: chunk.name) != nil {
                throw MachineError("\(kind) state chunk \(UntrustedText.quote(chunk.name)) appears twice")
            }
        }
        var expected: [String: (version: UInt32, isDevice: Bool)] = [:]
        for section in sections {
            for (name, version) in section.chunkVersions { expected[name] = (version, section.isDevice) }
        }
        if let unknown = Set(byName.keys).subtracting(expected.keys).sorted().first {
            throw MachineError("state chunk \(UntrustedText.quote(unknown)) is not known to this vmrun")
        }
        if let missing = Set(expected.keys).subtracting(byName.keys).sorted().first {
            throw MachineError("state chunk \(missing) is missing")
        }
        for (name, chunk) in byName.sorted(by: { $0.key < $1.key }) {
            let want = expected[name]!
            if want.isDevice != state.devices.contains(where: { $0.name == name }) {
                throw MachineError(
                    "state chunk \(name) is \(want.isDevice ? "device" : "kernel") state, sent as \(want.isDevice ? "kernel" : "device") state"
                )
            }
            if chunk.version != want.version {
                throw MachineError("state chunk \(name): version \(chunk.version), this vmrun understands \(want.version)")
            }
        }
        for section in sections { try section.check(byName) }
        return byName
    }

    /// Restores section by section in order, from what `check` returned.
    func restore(_ chunks: [String: StateChunk]) throws {
        for section in sections { try section.restore(chunks) }
    }
}

extension [String: StateChunk] {
    /// The data of a chunk the registry has already found present.
    func data(_ name: String) -> [UInt8] { self[name]!.data }
}
