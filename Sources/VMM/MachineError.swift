/// A machine-level failure with a message that says what to do; KVM failures come as `KVMError`.
public struct MachineError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
