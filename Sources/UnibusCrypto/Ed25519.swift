import CSodium

/// An Ed25519 public key (32 bytes).
public struct Ed25519PublicKey: Hashable, Sendable {
    public static let length = 32
    public static let signatureLength = 64

    /// The raw 32 bytes.
    public let bytes: [UInt8]

    /// Wraps 32 raw bytes; other lengths are rejected.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.length else { return nil }
        self.bytes = bytes
    }

    /// Verifies a detached signature over `message` (libsodium's checks:
    /// canonical S, no small-order R or key).
    public func verify(signature: some Collection<UInt8>, message: some Collection<UInt8>) -> Bool {
        let signature = Array(signature)
        let message = Array(message)
        return signature.withUnsafeBytes { sig in
            message.withUnsafeBytes { msg in verify(signature: sig, message: msg) }
        }
    }

    /// The allocation-free form for hot paths.
    public func verify(signature: UnsafeRawBufferPointer, message: UnsafeRawBufferPointer) -> Bool {
        Sodium.ensureInitialized()
        guard signature.count == Self.signatureLength else { return false }
        return bytes.withUnsafeBufferPointer { key in
            crypto_sign_ed25519_verify_detached(
                signature.bindMemory(to: UInt8.self).baseAddress!,
                message.bindMemory(to: UInt8.self).baseAddress ?? key.baseAddress!,
                UInt64(message.count),
                key.baseAddress!) == 0
        }
    }
}

/// An Ed25519 signing key pair. The secret half is wiped when released.
public final class Ed25519KeyPair: Sendable {
    public static let seedLength = 32

    /// libsodium's 64-byte secret key: seed followed by the public key.
    private let secret: SecretBuffer
    public let publicKey: Ed25519PublicKey

    /// A new random key pair.
    public convenience init() {
        let seed = SecretBuffer(random: Self.seedLength)
        self.init(validSeed: seed)
    }

    /// The key pair for a 32-byte seed (the form nkeys and identity files store).
    public convenience init?(seed: [UInt8]) {
        guard seed.count == Self.seedLength else { return nil }
        self.init(validSeed: SecretBuffer(copying: seed))
    }

    private init(validSeed seed: SecretBuffer) {
        Sodium.ensureInitialized()
        let secret = SecretBuffer(count: Int(crypto_sign_ed25519_SECRETKEYBYTES))
        var publicBytes = [UInt8](repeating: 0, count: Ed25519PublicKey.length)
        publicBytes.withUnsafeMutableBufferPointer { pk in
            _ = crypto_sign_ed25519_seed_keypair(
                pk.baseAddress!,
                secret.pointer.assumingMemoryBound(to: UInt8.self),
                seed.pointer.assumingMemoryBound(to: UInt8.self))
        }
        self.secret = secret
        self.publicKey = Ed25519PublicKey(bytes: publicBytes)!
    }

    /// The 32-byte seed. Handle with care: it is the private key.
    public var seed: [UInt8] { Array(secret.bytes.prefix(Self.seedLength)) }

    /// A detached 64-byte signature over `message`.
    public func sign(_ message: some Collection<UInt8>) -> [UInt8] {
        let message = Array(message)
        return message.withUnsafeBytes { sign($0) }
    }

    public func sign(_ message: UnsafeRawBufferPointer) -> [UInt8] {
        var signature = [UInt8](repeating: 0, count: Ed25519PublicKey.signatureLength)
        signature.withUnsafeMutableBytes { sign(message, into: $0) }
        return signature
    }

    /// Signs into caller-provided storage of 64 bytes (no allocation).
    public func sign(_ message: UnsafeRawBufferPointer, into signature: UnsafeMutableRawBufferPointer) {
        precondition(signature.count >= Ed25519PublicKey.signatureLength)
        let scratch: UInt8 = 0
        _ = withUnsafePointer(to: scratch) { empty in
            crypto_sign_ed25519_detached(
                signature.bindMemory(to: UInt8.self).baseAddress!,
                nil,
                message.bindMemory(to: UInt8.self).baseAddress.map { UnsafePointer($0) } ?? empty,
                UInt64(message.count),
                secret.pointer.assumingMemoryBound(to: UInt8.self))
        }
    }
}
