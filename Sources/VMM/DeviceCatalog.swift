import Devices
import MachineDescription

/// Every device model vmrun can build, by kind. Adding a device is its file and one line in `models`.
enum DeviceCatalog {
    static let models: [any Device.Type] = [UART16550.self, GuestStatusDevice.self]

    /// Refuses, before anything is created, a device list this vmrun cannot build: an unknown kind, a state version
    /// other than its model's, a name used twice.
    static func check(_ configs: [DeviceConfig]) throws {
        var names: Set<String> = []
        for config in configs {
            guard names.insert(config.name).inserted else { throw MachineError("device \(config.name) listed twice") }
            guard let model = models.first(where: { $0.kind == config.kind }) else {
                throw MachineError("device \(config.name): unknown kind \(config.kind)")
            }
            guard config.version == model.stateVersion else {
                throw MachineError("device \(config.name): \(config.kind) version \(config.version), this vmrun understands \(model.stateVersion)")
            }
        }
    }

    /// Builds the devices of `configs`, in order.
    static func build(_ configs: [DeviceConfig], context: DeviceContext) throws -> [any Device] {
        try check(configs)
        return try configs.map { config in
            try models.first { $0.kind == config.kind }!.init(config: config, context: context)
        }
    }
}
