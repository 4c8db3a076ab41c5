// swift-tools-version:6.0
// Unibus: an end-to-end encrypted message bus. See docs/architecture.md for the module layout.
import PackageDescription

let package = Package(
    name: "unibus",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "UnibusCrypto", targets: ["UnibusCrypto"]),
        .executable(name: "unibusd", targets: ["unibusd"]),
        .executable(name: "unibus", targets: ["unibus"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
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
        .target(
            name: "UnibusCrypto",
            dependencies: ["CSodium", "COpenSSL"]
        ),
        .executableTarget(
            name: "unibusd",
            dependencies: [
                "UnibusCrypto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "unibus",
            dependencies: [
                "UnibusCrypto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "UnibusCryptoTests",
            dependencies: ["UnibusCrypto"]
        ),
        .testTarget(
            name: "InteropTests",
            dependencies: ["UnibusCrypto"],
            exclude: ["peers"]
        ),
    ]
)
