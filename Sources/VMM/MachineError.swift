import MachineDescription

/// A machine-level failure with a message that says what to do; KVM failures come as `KVMError`.
public struct MachineError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension MachineError {
    /// `this host cannot run VM 'NAME': why`: how every check of a received machine words its refusal.
    public static func hostRefusal(_ name: String, _ reason: any Error) -> MachineError {
        MachineError("this host cannot run VM \(UntrustedText.quote(name)): \(reason)")
    }
}
