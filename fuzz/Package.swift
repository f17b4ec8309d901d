// swift-tools-version: 6.1
// The stream reader under libFuzzer: build and run with scripts/fuzz-stream.sh.
import PackageDescription

let package = Package(
    name: "vmstream-fuzz",
    dependencies: [.package(name: "vmsend", path: "..")],
    targets: [
        .target(name: "CFuzzer"),
        .executableTarget(name: "FuzzStreamReader", dependencies: ["CFuzzer", .product(name: "VMStream", package: "vmsend")]),
    ],
    swiftLanguageModes: [.v6]
)
