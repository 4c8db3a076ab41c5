import Foundation
import UnibusCrypto

/// Signed control-plane requests. The caller signs, with its identity's
/// Ed25519 key, the string
///
/// ```text
/// UNIBUS-REQUEST-1 \n METHOD \n PATH \n hex(SHA-256(body)) \n TIMESTAMP \n NONCE \n NODE-ID
/// ```
/// and sends it in headers. TIMESTAMP is Unix seconds; NODE-ID is the target
/// node's server nkey, so a request captured on one node cannot be replayed
/// against another, and the nonce plus the time window stop replays on the
/// same node.
public enum RequestSignature {
    public static let keyHeader = "unibus-key"
    public static let timestampHeader = "unibus-timestamp"
    public static let nonceHeader = "unibus-nonce"
    public static let signatureHeader = "unibus-signature"

    public static func canonical(method: String, path: String, body: [UInt8], timestamp: Int, nonce: String, nodeID: String) -> [UInt8] {
        Array("UNIBUS-REQUEST-1\n\(method)\n\(path)\n\(Hex.encode(Digest.sha256(body)))\n\(timestamp)\n\(nonce)\n\(nodeID)".utf8)
    }

    /// The four headers for a request signed by `identity`.
    public static func headers(method: String, path: String, body: [UInt8], nodeID: String, identity: Identity,
                               now: Date = Date()) -> [(String, String)] {
        let timestamp = Int(now.timeIntervalSince1970)
        let nonce = Base64.encode(Sodium.randomNonce(count: 16), alphabet: .url)
        let signature = identity.sign(canonical(method: method, path: path, body: body, timestamp: timestamp, nonce: nonce, nodeID: nodeID))
        return [(keyHeader, identity.userNKey), (timestampHeader, String(timestamp)), (nonceHeader, nonce),
                (signatureHeader, Base64.encode(signature, alphabet: .url))]
    }
}

/// Why a signed request was refused (each maps to an HTTP status).
public enum RequestAuthError: Error, Equatable, Sendable, CustomStringConvertible {
    case missing(String)
    case skew(seconds: Int)
    case replayed
    case badSignature
    case unknownCaller(String)
    case revokedCaller(String)
    /// The nonce memory is full of live nonces (a flood by active users).
    case busy

    public var status: Int {
        switch self {
        case .missing, .skew, .replayed, .badSignature: return 401
        case .unknownCaller, .revokedCaller: return 403
        case .busy: return 503
        }
    }

    public var description: String {
        switch self {
        case .missing(let header): return "missing or malformed \(header) header: sign the request with your identity"
        case .skew(let seconds):
            return "request timestamp is \(seconds == .max ? "far" : "\(seconds) s") away from the node's clock (window 60 s): check the clocks"
        case .replayed: return "this request's nonce was already used: requests cannot be replayed"
        case .badSignature: return "the request signature does not verify (wrong key, body, path or node)"
        case .unknownCaller(let key): return "\(key) is not a registered user"
        case .revokedCaller(let key): return "\(key) is revoked"
        case .busy: return "the node is refusing signed requests for a moment (too many recent requests); retry shortly"
        }
    }
}

