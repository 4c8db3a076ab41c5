import Foundation
import UnibusControlClient
import UnibusCrypto
import UnibusFleet

/// A request whose signature verified, before its nonce is spent.
public struct VerifiedRequest: Sendable, Equatable {
    /// The caller's user nkey.
    public let caller: String
    public let nonce: String
    public let timestamp: Int
}

/// Verifies signed requests: signature, time window, and nonces remembered
/// for twice the window. Thread-safe.
///
/// A nonce is spent (`claim`) only after the caller is known to be an active
/// user, so an outsider cannot fill the nonce memory: each request it sends
/// fails before then.
public final class RequestVerifier: @unchecked Sendable {
    // @unchecked: `nonces` is guarded by `lock`.
    public let nodeID: String
    public let window: TimeInterval
    private let lock = NSLock()
    private var nonces: NonceCache

    /// Nonces are 8 to 64 bytes of base64url (the CLI sends 22).
    public static let nonceLengths = 8...64
    /// Timestamps are decimal Unix seconds of at most this many digits.
    static let maximumTimestampDigits = 12

    public init(nodeID: String, window: TimeInterval = 60, maximumNonces: Int = 200_000, maximumNoncesPerCaller: Int = 2_000) {
        self.nodeID = nodeID
        self.window = window
        self.nonces = NonceCache(capacity: maximumNonces, perOwner: maximumNoncesPerCaller)
    }

    /// Checks headers, time window and signature. The nonce is not spent yet.
    public func verify(method: String, path: String, body: [UInt8], header: (String) -> String?,
                       now: Date = Date()) -> Result<VerifiedRequest, RequestAuthError> {
        guard let key = header(RequestSignature.keyHeader), key.utf8.count <= 64,
              let (_, publicKey) = try? NKey.decodePublicKey(key, expecting: .user) else { return .failure(.missing(RequestSignature.keyHeader)) }
        guard let timestampText = header(RequestSignature.timestampHeader),
              (1...Self.maximumTimestampDigits).contains(timestampText.utf8.count),
              timestampText.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let timestamp = Int(timestampText) else {
            return .failure(.missing(RequestSignature.timestampHeader))
        }
        guard let nonce = header(RequestSignature.nonceHeader), Self.nonceLengths.contains(nonce.utf8.count),
              nonce.utf8.allSatisfy(Self.isNonceByte) else {
            return .failure(.missing(RequestSignature.nonceHeader))
        }
        guard let signatureText = header(RequestSignature.signatureHeader), signatureText.utf8.count <= 128,
              let signature = try? Base64.decode(signatureText, alphabet: .url), signature.count == 64 else {
            return .failure(.missing(RequestSignature.signatureHeader))
        }
        // Both values are bounded (12 digits; the clock), so this cannot
        // overflow; checked anyway, since a trap here is a remote kill switch.
        let (skew, overflow) = Self.unixSeconds(now).subtractingReportingOverflow(timestamp)
        guard !overflow, skew.magnitude <= UInt(window) else { return .failure(.skew(seconds: overflow ? .max : skew)) }
        let message = RequestSignature.canonical(method: method, path: path, body: body, timestamp: timestamp, nonce: nonce, nodeID: nodeID)
        guard publicKey.verify(signature: signature, message: message) else { return .failure(.badSignature) }
        return .success(VerifiedRequest(caller: key, nonce: nonce, timestamp: timestamp))
    }

    /// Spends the request's nonce; returns why not when it was seen within
    /// twice the window (a replay) or the memory is full, nil when spent.
    public func claim(_ request: VerifiedRequest, now: Date = Date()) -> RequestAuthError? {
        let seconds = Self.unixSeconds(now)
        return lock.withLock {
            switch nonces.insert(request.nonce, owner: request.caller, now: seconds, lifetime: Int(2 * window) + 2) {
            case .replayed?: return .replayed
            case .full?: return .busy
            case nil: return nil
            }
        }
    }

    /// How many nonces are remembered now (tests, metrics).
    public var rememberedNonces: Int { lock.withLock { nonces.count } }

    static func unixSeconds(_ date: Date) -> Int {
        let seconds = date.timeIntervalSince1970
        return seconds.isFinite && seconds.magnitude < 1e15 ? Int(seconds) : 0
    }

    static func isNonceByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
    }
}

