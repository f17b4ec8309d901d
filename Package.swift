// swift-tools-version: 6.1
import PackageDescription

let system = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let strict: [SwiftSetting] = [.unsafeFlags(["-warnings-as-errors"])]

let package = Package(
    name: "vmsend",
    products: [
        .executable(name: "vmrun", targets: ["vmrun"]),
        .executable(name: "vmctl", targets: ["vmctl"]),
        .executable(name: "vmsend", targets: ["vmsend"]),
        .executable(name: "vmrecv", targets: ["vmrecv"]),
        .executable(name: "vmstream", targets: ["vmstream"]),
        // For fuzz/, which builds the reader with -sanitize=fuzzer.
        .library(name: "VMStream", targets: ["VMStream"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        // C libraries Swift cannot reach on its own.
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .target(name: "CKVM"),
        // vmsplice, FIONREAD and an AVX2 XXH3 for the stream's hot paths.
        .target(name: "CStreamSupport"),

        // The vocabulary every layer shares: machine configuration, host spec, state chunks.
        .target(name: "MachineDescription", swiftSettings: strict),
        // Bytes on the wire: records, checksums, compression. Nothing about KVM.
        .target(name: "VMStream", dependencies: ["MachineDescription", "CLZ4", "CXXHash", "CStreamSupport", system], swiftSettings: strict),
        // /dev/kvm ioctls as typed Swift calls. Nothing about streams.
        .target(name: "KVM", dependencies: ["CKVM", system], swiftSettings: strict),
        // The control socket protocol between vmrun and its clients.
        .target(name: "VMControl", dependencies: ["MachineDescription", system], swiftSettings: strict),
        // A machine: memory, vCPU threads, devices, the bundled guest, the control server.
        .target(name: "VMM", dependencies: ["KVM", "CKVM", "VMControl", "MachineDescription", system], swiftSettings: strict),
        // Rounds, convergence, switch-over. Talks to a VM through a protocol, never to KVM.
        .target(name: "Migration", dependencies: ["VMStream", "VMControl", "MachineDescription", system], swiftSettings: strict),

        // Exit statuses, stderr lines: what every executable does the same way.
        .target(name: "ToolSupport", dependencies: [argumentParser], swiftSettings: strict),

        .executableTarget(name: "vmrun", dependencies: ["VMM", "VMControl", "ToolSupport", argumentParser], swiftSettings: strict),
        .executableTarget(name: "vmctl", dependencies: ["VMControl", "ToolSupport", argumentParser], swiftSettings: strict),
        .executableTarget(name: "vmsend", dependencies: ["Migration", "ToolSupport", argumentParser], swiftSettings: strict),
        .executableTarget(name: "vmrecv", dependencies: ["Migration", "ToolSupport", argumentParser], swiftSettings: strict),
        .executableTarget(name: "vmstream", dependencies: ["VMStream", "ToolSupport", argumentParser], swiftSettings: strict),

        .testTarget(name: "VMStreamTests", dependencies: ["VMStream"], resources: [.copy("Resources")]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "VMM"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "VMControl"]),
        .testTarget(name: "MigrationTests", dependencies: ["Migration", "VMStream"]),
        .testTarget(name: "EndToEndTests", dependencies: ["VMControl", "VMStream"]),
    ],
    swiftLanguageModes: [.v6]
)
