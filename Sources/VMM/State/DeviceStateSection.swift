import Devices
import MachineDescription

/// An emulated device's state: one chunk named after the device, of its model's version.
struct DeviceStateSection: StateSection {
    let device: any Device

    var isDevice: Bool { true }
    var chunkVersions: [(name: String, version: UInt32)] { [(device.name, type(of: device).stateVersion)] }

    func save() throws -> [StateChunk] {
        [StateChunk(name: device.name, version: type(of: device).stateVersion, data: device.saveState())]
    }

    func check(_ chunks: [String: StateChunk]) throws { try device.checkState(chunks.data(device.name)) }
    func restore(_ chunks: [String: StateChunk]) throws { try device.restoreState(chunks.data(device.name)) }
}
