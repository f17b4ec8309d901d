import Devices
import MachineDescription

/// The device models a machine can build, by kind. Adding a device to vmrun is its file and one line in `standard`.
public struct DeviceCatalog: Sendable {
    public let models: [any Device.Type]

    /// What vmrun builds.
    public static let standard = DeviceCatalog(models: [UART16550.self, GuestStatusDevice.self, VirtioBlock.self])

    public init(models: [any Device.Type]) { self.models = models }

    /// This catalog and `model` (tests add devices of their own this way).
    public func adding(_ model: any Device.Type) -> DeviceCatalog { DeviceCatalog(models: models + [model]) }

    /// Refuses, before anything is created, a device list this catalog cannot build: an unknown kind, a state
    /// version other than its model's, a name used twice.
    public func check(_ configs: [DeviceConfig]) throws {
        var names: Set<String> = []
        for config in configs {
            guard names.insert(config.name).inserted else { throw MachineError("device \(config.name) listed twice") }
            let model = try self.model(config)
            guard config.version == model.stateVersion else {
                throw MachineError(
                    "device \(config.name): \(config.kind) version \(config.version), this vmrun understands \(model.stateVersion)"
                )
            }
        }
    }

    /// Builds the devices of `configs`, in order.
    func build(_ configs: [DeviceConfig], context: DeviceContext) throws -> [any Device] {
        try check(configs)
        return try configs.map { try model($0).init(config: $0, context: context) }
    }

    private func model(_ config: DeviceConfig) throws -> any Device.Type {
        guard let model = models.first(where: { $0.kind == config.kind }) else {
            throw MachineError("device \(config.name): unknown kind \(config.kind)")
        }
        return model
    }
}
