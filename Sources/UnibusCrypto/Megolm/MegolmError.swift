/// Why a Megolm message, session key or export was rejected.
///
/// The cases match vodozemac's verdicts so that a message refused by one
/// implementation is refused by the other for the same stated reason.
public enum MegolmError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The version byte is not the one this format uses (nil: empty input).
    case badVersion(expected: UInt8, got: UInt8?)
    /// The bytes do not have the exact canonical layout (lengths, field tags,
    /// varints, trailing bytes, an invalid public key).
    case badFormat(String)
    /// The Ed25519 signature does not verify against the session's signing key.
    case badSignature
    /// The truncated HMAC-SHA-256 does not match.
    case badMAC
    /// The message index is earlier than the first index this session knows.
    case unknownIndex(firstKnown: UInt32, got: UInt32)
    /// The decrypted plaintext does not end in valid PKCS#7 padding.
    case badPadding
    /// The text is not canonical unpadded base64.
    case badBase64
    /// The outbound session has used its last index (2^32 - 1); start a new one.
    case sessionExhausted

    /// A short stable token for counters, logs and the CLI's `error<TAB>REASON`.
    public var reason: String {
        switch self {
        case .badVersion: return "bad-version"
        case .badFormat: return "bad-format"
        case .badSignature: return "bad-signature"
        case .badMAC: return "bad-mac"
        case .unknownIndex: return "unknown-index"
        case .badPadding: return "bad-padding"
        case .badBase64: return "bad-base64"
        case .sessionExhausted: return "session-exhausted"
        }
    }

    public var description: String {
        switch self {
        case .badVersion(let expected, let got):
            return got.map { "unsupported version \($0) (expected \(expected))" } ?? "empty input (expected version \(expected))"
        case .badFormat(let why): return "malformed: \(why)"
        case .badSignature: return "the Ed25519 signature does not verify"
        case .badMAC: return "the message MAC does not match"
        case .unknownIndex(let first, let got):
            return "message index \(got) is before the first known index \(first) of this session"
        case .badPadding: return "invalid PKCS#7 padding after decryption"
        case .badBase64: return "not canonical unpadded base64"
        case .sessionExhausted: return "the outbound session has used all 2^32 indices; create a new session"
        }
    }
}
