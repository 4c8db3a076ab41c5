import Foundation

/// A Unibus identity: an Ed25519 signing key (who you are; exported as a NATS
/// user nkey) and an X25519 key-exchange key (what room keys are sealed to).
public final class Identity: Sendable {
    public let signing: Ed25519KeyPair
    public let keyExchange: X25519KeyPair

    /// A new random identity.
    public convenience init() {
        self.init(signing: Ed25519KeyPair(), keyExchange: X25519KeyPair())
    }

    public init(signing: Ed25519KeyPair, keyExchange: X25519KeyPair) {
        self.signing = signing
        self.keyExchange = keyExchange
    }

    /// The public signing key as a NATS user nkey ("U…").
    public var userNKey: String { NKey.encodePublicKey(signing.publicKey, type: .user) }

    /// The signing seed as a NATS seed nkey ("SU…"). Secret.
    public var userSeedNKey: String { NKey.encodeSeed(signing.seed, type: .user) }

    /// A detached Ed25519 signature.
    public func sign(_ message: some Collection<UInt8>) -> [UInt8] { signing.sign(message) }
}

/// Errors from loading or writing identity files.
public typealias IdentityError = SecretFileError

/// The identity file: JSON, mode 0600.
///
/// ```json
/// {"format":"unibus-identity/1","nkey":"U…","ed25519_public":"…","ed25519_seed":"…",
///  "x25519_public":"…","x25519_secret":"…","created":"2026-11-23T10:00:00Z"}
/// ```
/// Keys are unpadded base64. The public halves are redundant and checked on
/// load, so a damaged file is detected rather than yielding a different key.
public enum IdentityFile {
    public static let format = "unibus-identity/1"
    /// Far larger than any valid file; a bigger one is not read into memory.
    static let maximumSize = 64 * 1024

    struct Contents: Codable {
        var format: String
        var nkey: String?
        var ed25519_public: String
        var ed25519_seed: String
        var x25519_public: String
        var x25519_secret: String
        var created: String?
    }

    /// Loads an existing identity; a missing, unreadable, corrupt or
    /// group/world-accessible file is an error.
    public static func load(from path: String) throws(IdentityError) -> Identity {
        let bytes = try SecretFile.read(path, maximumSize: maximumSize,
                                        missingHint: "create an identity with `unibus identity new --out \(path)`")
        do {
            return try decode(bytes)
        } catch {
            throw .corrupt(path: path, reason: error.reason)
        }
    }

    /// Loads the identity at `path`, or creates and writes a new one if no
    /// file exists. An existing but corrupt file is an error, never replaced.
    public static func loadOrCreate(at path: String) throws(IdentityError) -> (identity: Identity, created: Bool) {
        do {
            return (try load(from: path), false)
        } catch .missing {
            let identity = Identity()
            do {
                try write(identity, to: path)
                return (identity, true)
            } catch .alreadyExists {
                // Another process created it between our check and our write.
                return (try load(from: path), false)
            }
        }
    }

    /// Writes `identity` to a new file with mode 0600. With `overwrite`
    /// false (the default) an existing file is never replaced.
    public static func write(_ identity: Identity, to path: String, overwrite: Bool = false) throws(IdentityError) {
        var bytes = encode(identity)
        defer { wipe(&bytes) }
        try SecretFile.write(bytes, to: path, overwrite: overwrite)
    }

    /// The file's bytes for `identity` (pure; secret, wipe after use).
    public static func encode(_ identity: Identity) -> [UInt8] {
        let formatter = ISO8601DateFormatter()
        var seed = identity.signing.seed
        var secret = identity.keyExchange.secretBytes
        defer {
            wipe(&seed)
            wipe(&secret)
        }
        let contents = Contents(
            format: format,
            nkey: identity.userNKey,
            ed25519_public: Base64.encode(identity.signing.publicKey.bytes),
            ed25519_seed: Base64.encode(seed),
            x25519_public: Base64.encode(identity.keyExchange.publicKey.bytes),
            x25519_secret: Base64.encode(secret),
            created: formatter.string(from: Date()))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        // Encoding a struct of strings cannot fail.
        guard let data = try? encoder.encode(contents) else { return [] }
        return [UInt8](data) + [UInt8(ascii: "\n")]
    }

    /// Parses and checks a file's bytes (pure; the fuzz target's entry point).
    public static func decode(_ bytes: [UInt8]) throws(CorruptDocument) -> Identity {
        guard bytes.count <= maximumSize else { throw CorruptDocument("larger than \(maximumSize) bytes") }
        let contents: Contents
        do {
            contents = try JSONDecoder().decode(Contents.self, from: Data(bytes))
        } catch {
            throw CorruptDocument("not a JSON identity document")
        }
        guard contents.format == format else {
            throw CorruptDocument("unknown format \"\(contents.format.prefix(40))\" (expected \(format))")
        }
        func field(_ name: String, _ text: String, length: Int) throws(CorruptDocument) -> [UInt8] {
            guard let bytes = try? Base64.decode(text), bytes.count == length else {
                throw CorruptDocument("\(name) is not \(length) bytes of unpadded base64")
            }
            return bytes
        }
        var seed = try field("ed25519_seed", contents.ed25519_seed, length: Ed25519KeyPair.seedLength)
        var secret = try field("x25519_secret", contents.x25519_secret, length: X25519KeyPair.secretLength)
        defer {
            wipe(&seed)
            wipe(&secret)
        }
        let signingPublic = try field("ed25519_public", contents.ed25519_public, length: Ed25519PublicKey.length)
        let exchangePublic = try field("x25519_public", contents.x25519_public, length: X25519PublicKey.length)
        guard let signing = Ed25519KeyPair(seed: seed), let exchange = X25519KeyPair(secret: secret) else {
            throw CorruptDocument("key lengths are wrong")
        }
        guard signing.publicKey.bytes == signingPublic else {
            throw CorruptDocument("ed25519_public does not match ed25519_seed")
        }
        guard exchange.publicKey.bytes == exchangePublic else {
            throw CorruptDocument("x25519_public does not match x25519_secret")
        }
        let identity = Identity(signing: signing, keyExchange: exchange)
        if let nkey = contents.nkey, nkey != identity.userNKey {
            throw CorruptDocument("nkey does not match ed25519_public")
        }
        return identity
    }
}

/// Why a document (identity file, session file) is not valid; `reason` names the problem.
public struct CorruptDocument: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String
    init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}
