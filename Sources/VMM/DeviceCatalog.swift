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
    /// version other than its model's, a setting its model does not know, a name used twice. (The values of the
    /// settings are checked as the devices are built, also before the machine runs.)
    public func check(_ configs: [DeviceConfig]) throws {
        var names: Set<String> = []
        for config in configs {
            let device = "device \(UntrustedText.quote(config.name))"
            guard names.insert(config.name).inserted else { throw MachineError("\(device) listed twice") }
            let model = try self.model(config)
            guard config.version == model.stateVersion else {
                throw MachineError(
                    "\(device): \(UntrustedText.escape(config.kind)) version \(config.version), this vmrun understands \(model.stateVersion)"
                )
            }
            if let unknown = config.configuration.keys.filter({ !model.settingKeys.contains($0) }).sorted().first {
                throw MachineError("\(device): unknown setting \(UntrustedText.quote(unknown)) for \(model.kind)")
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
            throw MachineError("device \(UntrustedText.quote(config.name)): unknown kind \(UntrustedText.quote(config.kind))")
        }
        return model
    }
}
