import MachineDescription
import VMControl

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Decodes the MachineConfig that `vmrun --incoming` reads from stdin.
func decodeMachineConfig(_ json: [UInt8]) throws -> MachineConfig {
    guard !json.isEmpty else {
        throw ControlError("--incoming needs a MachineConfig JSON document on standard input; got nothing")
    }
    do {
        return try JSONDecoder().decode(MachineConfig.self, from: Data(json))
    } catch {
        throw ControlError("--incoming: standard input is not a MachineConfig JSON document")
    }
}
