// swift-tools-version:6.0
// Benchmark harnesses, kept out of the main package so that its build and
// test runs never compile them. Run through the scripts beside this file.
import PackageDescription

let package = Package(
    name: "UnibusBenchmarks",
    dependencies: [.package(name: "unibus", path: "../..")],
    targets: [
        // libsodium directly, for the raw Ed25519 reference rates.
        .systemLibrary(name: "CSodiumBench", pkgConfig: "libsodium"),
        // What the harnesses share: interleaved measurement.
        .target(name: "BenchSupport"),
        .executableTarget(
            name: "unibus-crypto-bench",
            dependencies: ["CSodiumBench", "BenchSupport", .product(name: "UnibusCrypto", package: "unibus")]
        ),
        // The client library's frame path and two clients through a node.
        .executableTarget(
            name: "unibus-client-bench",
            dependencies: ["CSodiumBench", "BenchSupport", .product(name: "UnibusClient", package: "unibus"),
                           .product(name: "UnibusCrypto", package: "unibus"), .product(name: "UnibusMembership", package: "unibus"),
                           .product(name: "UnibusMembershipStore", package: "unibus"), .product(name: "UnibusWire", package: "unibus")]
        ),
    ]
)
