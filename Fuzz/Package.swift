// swift-tools-version:6.0
// libFuzzer targets. A separate package so that the main build never links
// them (they have no main) and the sanitizer build stays in its own folder.
// Build and run with ./run.sh.
import PackageDescription

let package = Package(
    name: "UnibusFuzz",
    dependencies: [
        .package(name: "unibus", path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(name: "FuzzMegolmMessage", dependencies: [.product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzMegolmSessionKey", dependencies: [.product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzIdentityFile", dependencies: [.product(name: "UnibusCrypto", package: "unibus")]),
        .target(name: "FuzzSupport", dependencies: [.product(name: "UnibusWire", package: "unibus")]),
        .executableTarget(name: "FuzzClientProtocol", dependencies: ["FuzzSupport", .product(name: "UnibusWire", package: "unibus")]),
        .executableTarget(name: "FuzzFrameEnvelope", dependencies: [.product(name: "UnibusWire", package: "unibus")]),
        .executableTarget(name: "FuzzServerProtocol", dependencies: ["FuzzSupport", .product(name: "UnibusWire", package: "unibus")]),
        .executableTarget(name: "FuzzRouteProtocol", dependencies: ["FuzzSupport", .product(name: "UnibusWire", package: "unibus")]),
        .executableTarget(name: "FuzzJWT", dependencies: [.product(name: "UnibusMembership", package: "unibus"),
                                                          .product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzConfiguration", dependencies: [.product(name: "UnibusConfig", package: "unibus")]),
        .executableTarget(name: "FuzzFleetMessages", dependencies: [.product(name: "UnibusFleet", package: "unibus"),
                                                                    .product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzReplicationFrame", dependencies: [.product(name: "UnibusMembership", package: "unibus"),
                                                                       .product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzFrameReplication", dependencies: [.product(name: "UnibusPersistence", package: "unibus"),
                                                                       .product(name: "UnibusMembership", package: "unibus"),
                                                                       .product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzRoomKeyring", dependencies: [.product(name: "UnibusClient", package: "unibus"),
                                                                  .product(name: "UnibusWire", package: "unibus"),
                                                                  .product(name: "UnibusMembership", package: "unibus"),
                                                                  .product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzMembershipLog", dependencies: [.product(name: "UnibusMembership", package: "unibus"),
                                                                    .product(name: "UnibusControlClient", package: "unibus"),
                                                                    .product(name: "UnibusCrypto", package: "unibus")]),
        .executableTarget(name: "FuzzWorkloadLogin", dependencies: [
            .product(name: "UnibusControl", package: "unibus"), .product(name: "UnibusNode", package: "unibus"),
            .product(name: "UnibusMembershipStore", package: "unibus"), .product(name: "UnibusControlClient", package: "unibus"),
            .product(name: "UnibusBroker", package: "unibus"), .product(name: "UnibusMembership", package: "unibus"),
            .product(name: "UnibusCrypto", package: "unibus"),
        ]),
        .executableTarget(name: "FuzzControlRequest", dependencies: [
            .product(name: "UnibusControl", package: "unibus"), .product(name: "UnibusNode", package: "unibus"),
            .product(name: "UnibusMembershipStore", package: "unibus"), .product(name: "UnibusControlClient", package: "unibus"),
            .product(name: "UnibusBroker", package: "unibus"), .product(name: "UnibusMembership", package: "unibus"),
            .product(name: "UnibusCrypto", package: "unibus"),
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
    ]
)
