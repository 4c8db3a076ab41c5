// swift-tools-version:6.0
// A tiny app that depends on Unibus the way any app would: by a version tag.
// Tests/SampleApp/check.sh and build-and-run.sh point it at a tagged clone
// (UNIBUS_PACKAGE_URL); anyone else writes the repository's URL here.
import Foundation
import PackageDescription

let unibus = ProcessInfo.processInfo.environment["UNIBUS_PACKAGE_URL"] ?? "https://github.com/unibus/unibus"

let package = Package(
    name: "SampleApp",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(url: unibus, from: "0.1.0"),
    ],
    targets: [
        .executableTarget(
            name: "SampleApp",
            dependencies: [
                .product(name: "UnibusClient", package: "unibus"),
                .product(name: "UnibusCrypto", package: "unibus"),
            ]
        ),
    ]
)
