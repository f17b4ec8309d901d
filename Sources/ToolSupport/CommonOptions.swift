import ArgumentParser

/// `-c, --compress METHOD`: one spelling of compression in every tool that writes a stream.
public struct CompressionOption: ParsableArguments {
    public enum Method: String, ExpressibleByArgument, CaseIterable, Sendable {
        case none, lz4
    }

    @Option(
        name: [.customShort("c"), .customLong("compress")],
        help: ArgumentHelp("Compress page batches: none or lz4.", valueName: "method"))
    public var method: Method = .none

    public init() {}
}
