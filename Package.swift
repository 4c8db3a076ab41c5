// swift-tools-version:6.0
// Unibus: an end-to-end encrypted message bus. See docs/architecture.md for the module layout.
import PackageDescription

let package = Package(
    name: "unibus",
    platforms: [.macOS(.v14)],
    products: [
        // What apps depend on: the client library and the pure modules under it.
        .library(name: "UnibusClient", targets: ["UnibusClient"]),
        .library(name: "UnibusControlClient", targets: ["UnibusControlClient"]),
        .library(name: "UnibusMembership", targets: ["UnibusMembership"]),
        .library(name: "UnibusWire", targets: ["UnibusWire"]),
        .library(name: "UnibusPersistence", targets: ["UnibusPersistence"]),
        .library(name: "UnibusFleet", targets: ["UnibusFleet"]),
        .library(name: "UnibusConfig", targets: ["UnibusConfig"]),
        .library(name: "UnibusCrypto", targets: ["UnibusCrypto"]),
        // The node's modules, for the fuzz package (Fuzz/) and embedding.
        .library(name: "UnibusBroker", targets: ["UnibusBroker"]),
        .library(name: "UnibusMembershipStore", targets: ["UnibusMembershipStore"]),
        .library(name: "UnibusNode", targets: ["UnibusNode"]),
        .library(name: "UnibusControl", targets: ["UnibusControl"]),
        .executable(name: "unibusd", targets: ["unibusd"]),
        .executable(name: "unibus", targets: ["unibus"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        // Logging and metrics through the server ecosystem's APIs, so a host
        // application routes the client library's logs, and Prometheus reads
        // the node's metrics, with the standard handlers (issue 15).
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
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
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
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
            ]
        ),
        // The membership rules: signed operations, the causal log and its
        // fold, key-share rules, replication frames. Pure: nodes and clients
        // run the same code (no SQLite, no NIO).
        .target(
            name: "UnibusMembership",
            dependencies: ["UnibusCrypto"]
        ),
        // Persisted rooms, pure: frame identity and verification, the
        // replication messages between nodes, durability receipts.
        .target(
            name: "UnibusFleet",
            dependencies: ["UnibusCrypto"]
        ),
        // Configuration files, `UNIBUS_*` environment and secret references,
        // resolved into the command line's options (one model: the flags).
        .target(
            name: "UnibusConfig",
            dependencies: ["UnibusCrypto"]
        ),
        .target(
            name: "UnibusPersistence",
            dependencies: ["UnibusWire", "UnibusCrypto", "UnibusMembership"]
        ),
        // SQLite and data directories (0700, locked), for the node's store and the client's.
        .target(
            name: "UnibusSQLite",
            dependencies: ["CSQLite"]
        ),
        // The node's membership log and key shares in SQLite.
        .target(
            name: "UnibusMembershipStore",
            dependencies: ["UnibusMembership", "UnibusPersistence", "UnibusSQLite", "UnibusCrypto"]
        ),
        // Assembly of a node: broker + membership, permissions derived live.
        .target(
            name: "UnibusNode",
            dependencies: ["UnibusBroker", "UnibusMembership", "UnibusMembershipStore", "UnibusPersistence", "UnibusCrypto", "UnibusFleet",
                           .product(name: "Atomics", package: "swift-atomics"),
                           .product(name: "Logging", package: "swift-log")]
        ),
        // The control plane's client side and its typed messages (shared with the server).
        .target(
            name: "UnibusControlClient",
            dependencies: [
                "UnibusMembership", "UnibusCrypto", "UnibusFleet",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // The HTTPS control plane: signed requests, health, metrics, admin API.
        .target(
            name: "UnibusControl",
            dependencies: [
                "UnibusNode", "UnibusBroker", "UnibusMembership", "UnibusMembershipStore", "UnibusControlClient", "UnibusCrypto", "UnibusFleet",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The library peers use: failover connection, rooms, sealed frames.
        .target(
            name: "UnibusClient",
            dependencies: [
                "UnibusWire", "UnibusCrypto", "UnibusMembership", "UnibusPersistence", "UnibusControlClient", "UnibusSQLite", "CZstd",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .executableTarget(
            name: "unibusd",
            dependencies: [
                "UnibusCrypto", "UnibusBroker", "UnibusMembership", "UnibusMembershipStore", "UnibusNode", "UnibusControl", "UnibusSQLite", "UnibusFleet",
                "UnibusConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "unibus",
            dependencies: [
                "UnibusCrypto", "UnibusControlClient", "UnibusMembership", "UnibusClient", "UnibusWire", "UnibusFleet",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
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
            dependencies: ["UnibusMembership", "UnibusMembershipStore", "UnibusPersistence", "UnibusSQLite", "UnibusCrypto", "UnibusWire"]
        ),
        .testTarget(
            name: "UnibusNodeTests",
            dependencies: ["UnibusNode", "UnibusBroker", "UnibusMembership", "UnibusMembershipStore", "UnibusCrypto", "UnibusTestSupport",
                           "UnibusFleet"]
        ),
        .testTarget(
            name: "UnibusFleetTests",
            dependencies: ["UnibusFleet", "UnibusCrypto", "UnibusConfig"]
        ),
        .testTarget(
            name: "UnibusControlTests",
            dependencies: ["UnibusControl", "UnibusControlClient", "UnibusCrypto", "UnibusNode", "UnibusBroker", "UnibusMembership",
                           "UnibusMembershipStore", "UnibusTestSupport", "UnibusFleet"]
        ),
        .testTarget(
            name: "UnibusClientTests",
            dependencies: ["UnibusClient", "UnibusWire", "UnibusCrypto", "UnibusMembership", "UnibusNode", "UnibusControl",
                           "UnibusControlClient", "UnibusMembershipStore", "UnibusPersistence", "UnibusSQLite", "UnibusBroker", "UnibusTestSupport"]
        ),
        .testTarget(
            name: "InteropTests",
            dependencies: ["UnibusCrypto", "UnibusMembership", "UnibusMembershipStore", "UnibusTestSupport"],
            exclude: ["peers"]
        ),
    ]
)
