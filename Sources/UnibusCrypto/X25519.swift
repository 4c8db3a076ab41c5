import CSodium

/// An X25519 public key (32 bytes), the key-exchange half of an identity.
public struct X25519PublicKey: Hashable, Sendable {
    public static let length = 32
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.length else { return nil }
        self.bytes = bytes
    }
}

/// An X25519 key pair; the secret is wiped when released.
public final class X25519KeyPair: Sendable {
    public static let secretLength = 32
    private let secret: SecretBuffer
    public let publicKey: X25519PublicKey

    /// A new random key pair.
    public convenience init() {
        self.init(validSecret: SecretBuffer(random: Self.secretLength))
    }

    /// The key pair for a 32-byte secret scalar.
    public convenience init?(secret: [UInt8]) {
        guard secret.count == Self.secretLength else { return nil }
        self.init(validSecret: SecretBuffer(copying: secret))
    }

    private init(validSecret: SecretBuffer) {
        Sodium.ensureInitialized()
        var publicBytes = [UInt8](repeating: 0, count: X25519PublicKey.length)
        publicBytes.withUnsafeMutableBufferPointer { pk in
            _ = crypto_scalarmult_curve25519_base(pk.baseAddress!, validSecret.pointer.assumingMemoryBound(to: UInt8.self))
        }
        self.secret = validSecret
        self.publicKey = X25519PublicKey(bytes: publicBytes)!
    }

    /// The 32-byte secret. Handle with care.
    public var secretBytes: [UInt8] { secret.array }

    func withSecret<R>(_ body: (UnsafePointer<UInt8>) throws -> R) rethrows -> R {
        try body(UnsafePointer(secret.pointer.assumingMemoryBound(to: UInt8.self)))
    }
}

/// Why a sealed box could not be opened.
public enum SealedBoxError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Shorter than the 48-byte sealed-box overhead.
    case tooShort(Int)
    /// Not sealed to this key, or modified in transit.
    case authenticationFailed

    public var description: String {
        switch self {
        case .tooShort(let count): return "sealed box too short (\(count) bytes; at least \(SealedBox.overhead) expected)"
        case .authenticationFailed: return "sealed box failed to open: not sealed to this key, or modified"
        }
    }
}

/// Anonymous public-key encryption to an X25519 key (libsodium `crypto_box_seal`),
/// byte-compatible with every libsodium binding (PyNaCl's `SealedBox` included).
public enum SealedBox {
    public static let overhead = Int(crypto_box_sealbytes())

    /// Seals `plaintext` so that only the holder of `recipient`'s secret can open it.
    public static func seal(_ plaintext: [UInt8], to recipient: X25519PublicKey) -> [UInt8] {
        Sodium.ensureInitialized()
        var box = [UInt8](repeating: 0, count: plaintext.count + overhead)
        box.withNonNullMutableBytes { out, _ in
            plaintext.withNonNullBytes { input, inputCount in
                recipient.bytes.withNonNullBytes { pk, _ in
                    _ = crypto_box_seal(out, input, UInt64(inputCount), pk)
                }
            }
        }
        return box
    }

    /// Opens a box sealed to `recipient`.
    public static func open(_ box: [UInt8], with recipient: X25519KeyPair) throws(SealedBoxError) -> [UInt8] {
        Sodium.ensureInitialized()
        guard box.count >= overhead else { throw .tooShort(box.count) }
        var plaintext = [UInt8](repeating: 0, count: box.count - overhead)
        let status = plaintext.withNonNullMutableBytes { out, _ in
            box.withNonNullBytes { input, inputCount in
                recipient.publicKey.bytes.withNonNullBytes { pk, _ in
                    recipient.withSecret { sk in
                        crypto_box_seal_open(out, input, UInt64(inputCount), pk, sk)
                    }
                }
            }
        }
        guard status == 0 else { throw .authenticationFailed }
        return plaintext
    }
}
