/// Why a received frame was not delivered. Each reason is counted
/// separately (`UnibusClient.rejections`) and has a stable token for logs
/// and metrics.
public enum FrameRejection: String, Error, CaseIterable, Sendable, CustomStringConvertible {
    /// Not a frame, truncated, bad lengths, bad UTF-8, unknown flags, a body
    /// that does not decompress.
    case malformed
    /// A version of the envelope this build does not read.
    case unknownVersion = "unknown-version"
    /// The sender is not (or no longer) a member of the room.
    case nonMember = "non-member"
    /// No key for the frame's Megolm session, or for its index (a frame from
    /// before the share this member received).
    case unknownSession = "unknown-session"
    /// The Megolm message or the signed frame fails its Ed25519 signature.
    case badSignature = "bad-signature"
    /// The Megolm MAC does not match (signature valid, content inconsistent).
    case badMAC = "bad-mac"
    /// This (session, index) or (stream, sequence) was delivered before, or
    /// is too far behind the newest to be checked.
    case replay
    /// The sender's timestamp is outside the room's time window.
    case outsideWindow = "outside-window"
    /// The authenticated room id is not the room it arrived in.
    case wrongRoom = "wrong-room"
    /// A frame kind the room's policy does not allow (a plain or signed-only
    /// frame in an encrypted room is never accepted: no downgrade).
    case policyMismatch = "policy-mismatch"

    public var description: String {
        switch self {
        case .malformed: return "malformed frame"
        case .unknownVersion: return "unknown envelope version"
        case .nonMember: return "sender is not a member of the room"
        case .unknownSession: return "no key for this session or index"
        case .badSignature: return "signature does not verify"
        case .badMAC: return "MAC does not match"
        case .replay: return "replayed (session, index)"
        case .outsideWindow: return "timestamp outside the room's time window"
        case .wrongRoom: return "frame was sealed for another room"
        case .policyMismatch: return "frame kind not allowed by the room's policy"
        }
    }
}
