// swift-tools-version: 6.1
import PackageDescription

let system = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let deque = Target.Dependency.product(name: "DequeModule", package: "swift-collections")

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
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
    ],
    targets: [
        // C libraries Swift cannot reach on its own.
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .target(name: "CKVM"),
        // XXH3 built for AVX2, chosen at run time: the stream's checksums at memory speed.
        .target(name: "CStreamSupport"),
        // Linux calls Glibc's Swift module hides: memfd_create, vmsplice, pipe sizes, SEEK_DATA.
        .target(name: "CLinux"),

        // The OS layer on swift-system: errors with their cause, EINTR retried in one place, descriptors, the
        // little-endian codec, the zero test, clocks, threads, and guest memory files.
        .target(name: "SystemSupport", dependencies: ["CLinux", system]),

        // The vocabulary every layer shares: machine configuration, host spec, state chunks.
        .target(name: "MachineDescription"),
        // Bytes on the wire: records, checksums, compression. Nothing about KVM.
        .target(
            name: "VMStream", dependencies: ["MachineDescription", "SystemSupport", "CLZ4", "CXXHash", "CStreamSupport", system]),
        // /dev/kvm ioctls as typed Swift calls. Nothing about streams.
        .target(name: "KVM", dependencies: ["CKVM", "SystemSupport", system]),
        // The control socket protocol between vmrun and its clients.
        .target(name: "VMControl", dependencies: ["MachineDescription", "SystemSupport", system]),
        // Emulated devices and what they plug into: the I/O bus, interrupt lines, guest memory, their state.
        // Nothing about KVM.
        .target(name: "Devices", dependencies: ["MachineDescription", "SystemSupport", deque, system]),
        // A machine on KVM: memory, vCPU threads, the device catalog, the state registry, the bundled guest, the
        // control server.
        .target(
            name: "VMM", dependencies: ["KVM", "CKVM", "Devices", "VMControl", "MachineDescription", "SystemSupport", system]),
        // Rounds, convergence, switch-over. Talks to a VM through a protocol, never to KVM.
        .target(name: "Migration", dependencies: ["VMStream", "MachineDescription", "SystemSupport", system]),
        // The engine's machines when they are vmrun processes: a source reached through its control socket, an
        // incoming vmrun started for a receive, guest memory mapped from the memory file vmrun lends.
        .target(
            name: "VMRunBackend",
            dependencies: ["Migration", "VMStream", "VMControl", "MachineDescription", "SystemSupport", system]),

        // Exit statuses, stderr lines: what every executable does the same way.
        .target(name: "ToolSupport", dependencies: ["MachineDescription", "SystemSupport", argumentParser, system]),

        .executableTarget(
            name: "vmrun", dependencies: ["VMM", "VMControl", "ToolSupport", "SystemSupport", "CLinux", argumentParser, system]),
        .executableTarget(name: "vmctl", dependencies: ["VMControl", "ToolSupport", "SystemSupport", argumentParser, system]),
        .executableTarget(name: "vmsend", dependencies: ["Migration", "VMRunBackend", "ToolSupport", argumentParser]),
        .executableTarget(name: "vmrecv", dependencies: ["Migration", "VMRunBackend", "ToolSupport", argumentParser]),
        .executableTarget(name: "vmstream", dependencies: ["VMStream", "ToolSupport", argumentParser]),

        .testTarget(name: "VMStreamTests", dependencies: ["VMStream", "SystemSupport"], resources: [.copy("Resources")]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "VMM"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "MachineDescription"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "Devices", "VMControl", "SystemSupport"]),
        .testTarget(name: "MigrationTests", dependencies: ["Migration", "VMStream", "SystemSupport"]),
        .testTarget(name: "EndToEndTests", dependencies: ["VMControl", "VMStream", "SystemSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
