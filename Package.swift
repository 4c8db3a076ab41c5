// swift-tools-version:6.0
// Unibus: an end-to-end encrypted message bus. See docs/architecture.md for the module layout.
import PackageDescription

/// The broker's per-message path touches class properties that are only ever
/// used from one event loop; Swift's dynamic exclusivity checks on them cost
/// about 12 % of broker CPU (measured with perf). Static checks still apply.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "unibus",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "UnibusCrypto", targets: ["UnibusCrypto"]),
        .library(name: "UnibusWire", targets: ["UnibusWire"]),
        .library(name: "UnibusBroker", targets: ["UnibusBroker"]),
        .library(name: "UnibusMembership", targets: ["UnibusMembership"]),
        .library(name: "UnibusNode", targets: ["UnibusNode"]),
        .library(name: "UnibusControl", targets: ["UnibusControl"]),
        .library(name: "UnibusClient", targets: ["UnibusClient"]),
        .executable(name: "unibusd", targets: ["unibusd"]),
        .executable(name: "unibus", targets: ["unibus"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
    ],
    targets: [
        // System libraries the user chose (Debian: libsodium-dev, libssl-dev).
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),
        .target(
            name: "UnibusCrypto",
            dependencies: ["CSodium", "COpenSSL"]
        ),
        // The NATS client protocol: parser and encoder, no I/O (fuzzable).
        .target(
            name: "UnibusWire",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: hotPath
        ),
        // The embedded broker: connections, subject index, auth, permissions.
        .target(
            name: "UnibusBroker",
            dependencies: [
                "UnibusWire", "UnibusCrypto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: hotPath
        ),
        // Users, rooms and members as a fold of admin-signed operations, in SQLite.
        .target(
            name: "UnibusMembership",
            dependencies: ["CSQLite", "UnibusCrypto"]
        ),
        // Assembly of a node: broker + membership, permissions derived live.
        .target(
            name: "UnibusNode",
            dependencies: ["UnibusBroker", "UnibusMembership", "UnibusCrypto",
                           .product(name: "Atomics", package: "swift-atomics")]
        ),
        // The HTTPS control plane: signed requests, health, metrics, admin API.
        .target(
            name: "UnibusControl",
            dependencies: [
                "UnibusNode", "UnibusBroker", "UnibusMembership", "UnibusCrypto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // The library peers use: failover connection, rooms, sealed frames.
        .target(
            name: "UnibusClient",
            dependencies: [
                "UnibusWire", "UnibusCrypto", "UnibusMembership", "UnibusControl", "UnibusNode", "CZstd",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .executableTarget(
            name: "unibusd",
            dependencies: [
                "UnibusCrypto", "UnibusBroker", "UnibusMembership", "UnibusNode", "UnibusControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "unibus",
            dependencies: [
                "UnibusCrypto", "UnibusControl", "UnibusMembership", "UnibusClient", "UnibusWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "UnibusCryptoTests",
            dependencies: ["UnibusCrypto"]
        ),
        .testTarget(
            name: "UnibusWireTests",
            dependencies: ["UnibusWire"]
        ),
        .target(
            name: "UnibusTestSupport",
            dependencies: ["UnibusBroker", "UnibusCrypto"],
            path: "Tests/UnibusTestSupport"
        ),
        .testTarget(
            name: "UnibusBrokerTests",
            dependencies: ["UnibusBroker", "UnibusWire", "UnibusCrypto", "UnibusTestSupport"]
        ),
        .testTarget(
            name: "UnibusMembershipTests",
            dependencies: ["UnibusMembership", "UnibusCrypto"]
        ),
        .testTarget(
            name: "UnibusNodeTests",
            dependencies: ["UnibusNode", "UnibusBroker", "UnibusMembership", "UnibusCrypto", "UnibusTestSupport"]
        ),
        .testTarget(
            name: "UnibusControlTests",
            dependencies: ["UnibusControl", "UnibusCrypto", "UnibusNode", "UnibusBroker", "UnibusMembership", "UnibusTestSupport"]
        ),
        .testTarget(
            name: "UnibusClientTests",
            dependencies: ["UnibusClient", "UnibusWire", "UnibusCrypto", "UnibusMembership", "UnibusNode", "UnibusControl",
                           "UnibusBroker", "UnibusTestSupport"]
        ),
        .testTarget(
            name: "InteropTests",
            dependencies: ["UnibusCrypto", "UnibusMembership"],
            exclude: ["peers"]
        ),
    ]
)
