import Foundation
import Testing
@testable import UnibusCrypto

@Suite("Identity files")
struct IdentityTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "unibus-identity-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    private func mode(_ path: String) throws -> Int {
        try #require(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
    }

    @Test func writeThenLoadGivesTheSameKeysWithMode0600() throws {
        let path = directory + "/id.json"
        let identity = Identity()
        try IdentityFile.write(identity, to: path)
        #expect(try mode(path) == 0o600)
        let loaded = try IdentityFile.load(from: path)
        #expect(loaded.signing.publicKey == identity.signing.publicKey)
        #expect(loaded.keyExchange.publicKey == identity.keyExchange.publicKey)
        #expect(loaded.userNKey == identity.userNKey)
        #expect(loaded.userNKey.hasPrefix("U"))
    }

    @Test func writeNeverOverwritesUnlessAsked() throws {
        let path = directory + "/id.json"
        try IdentityFile.write(Identity(), to: path)
        #expect(throws: IdentityError.alreadyExists(path: path)) { try IdentityFile.write(Identity(), to: path) }
        let replacement = Identity()
        try IdentityFile.write(replacement, to: path, overwrite: true)
        #expect(try IdentityFile.load(from: path).userNKey == replacement.userNKey)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["id.json"])
    }

    @Test func loadOnlyRefusesAMissingFile() {
        let path = directory + "/absent.json"
        #expect(throws: IdentityError.missing(path: path, hint: "create an identity with `unibus identity new --out \(path)`")) {
            try IdentityFile.load(from: path)
        }
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func loadOrCreateCreatesOnceThenLoads() throws {
        let path = directory + "/node.json"
        let (first, created) = try IdentityFile.loadOrCreate(at: path)
        #expect(created)
        let (second, createdAgain) = try IdentityFile.loadOrCreate(at: path)
        #expect(!createdAgain)
        #expect(second.userNKey == first.userNKey)
    }

    @Test func aCorruptFileIsAnErrorAndIsNeverRegenerated() throws {
        let path = directory + "/id.json"
        try IdentityFile.write(Identity(), to: path)
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text = text.replacingOccurrences(of: "\"format\"", with: "\"formt\"")
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o600)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(throws: IdentityError.corrupt(path: path, reason: "not a JSON identity document")) { try IdentityFile.load(from: path) }
        #expect(throws: IdentityError.self) { try IdentityFile.loadOrCreate(at: path) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
    }

    @Test func mismatchedPublicKeysAreCorruption() throws {
        let good = String(decoding: IdentityFile.encode(Identity()), as: UTF8.self)
        let other = Base64.encode(Ed25519KeyPair().publicKey.bytes)
        let lines = good.split(separator: "\n").map { line -> String in
            line.contains("\"ed25519_public\"") ? "  \"ed25519_public\" : \"\(other)\"," : String(line)
        }
        #expect(throws: CorruptDocument("ed25519_public does not match ed25519_seed")) {
            try IdentityFile.decode(Array(lines.joined(separator: "\n").utf8))
        }
        #expect(throws: CorruptDocument.self) { try IdentityFile.decode(Array("not json".utf8)) }
        #expect(throws: CorruptDocument.self) { try IdentityFile.decode([UInt8](repeating: 0x20, count: 70_000)) }
    }

    @Test func groupOrWorldReadableFilesAreRefusedWithAFix() throws {
        let path = directory + "/id.json"
        try IdentityFile.write(Identity(), to: path)
        chmod(path, 0o644)
        #expect(throws: IdentityError.insecurePermissions(path: path, mode: 0o644)) { try IdentityFile.load(from: path) }
        #expect("\(IdentityError.insecurePermissions(path: path, mode: 0o644))".contains("chmod 600 \(path)"))
    }

    @Test func directoriesAreNotIdentityFiles() throws {
        let path = directory + "/dir"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        chmod(path, 0o700)
        #expect(throws: IdentityError.notAFile(path: path, reason: "is a directory; give the path of the file itself")) { try IdentityFile.load(from: path) }
    }

    /// Secret files are opened without following links: another user's
    /// link cannot point a node at a file of its choosing.
    @Test func symbolicLinksAreNotFollowed() throws {
        let real = directory + "/real.json"
        _ = try IdentityFile.loadOrCreate(at: real)
        let link = directory + "/link.json"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: real)
        #expect(throws: IdentityError.notAFile(path: link, reason: "is a symbolic link; give the real file's path (links are not followed for secret files)")) {
            try IdentityFile.load(from: link)
        }
    }
}
