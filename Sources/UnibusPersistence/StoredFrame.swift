import UnibusCrypto
import UnibusMembership
import UnibusWire

/// What makes a frame of a persisted room unique, on every node and in
/// every client: the Megolm (session, index), or for signed rooms the
/// sender's (stream, sequence). Never a node-local number, so the same
/// frame arriving twice (a resend after failover, a copy from a peer) is
/// stored once and delivered once.
public struct FrameID: Hashable, Sendable, CustomStringConvertible {
    /// The Megolm session id (its Ed25519 key, 32 bytes) or the signed stream (16 bytes).
    public let stream: [UInt8]
    public let index: UInt64

    public init(stream: [UInt8], index: UInt64) {
        self.stream = stream
        self.index = index
    }

    public var description: String { "\(Base64.encode(stream))/\(index)" }
}

/// A frame whose signature was checked: by the Megolm session's key over
/// the Megolm message (encrypted rooms), or by the sender's identity over
/// the whole frame (signed rooms). Only such frames are stored, so nobody
/// can store junk under another sender's (session, index) and make the
/// real frame look like a duplicate.
public struct VerifiedFrame: Sendable, Equatable {
    /// The envelope's sender (an Ed25519 public key).
    public let sender: [UInt8]
    public let id: FrameID
    public let bytes: [UInt8]

    /// The sender as a user nkey ("U…").
    public var senderNKey: String {
        guard let key = Ed25519PublicKey(bytes: sender) else { return "" }
        return NKey.encodePublicKey(key, type: .user)
    }
}

/// Why a node does not store a frame (and says so in the receipt).
public enum FrameStorageError: Error, Equatable, Sendable, CustomStringConvertible {
    case format(FrameFormatError)
    /// The frame's kind is not the one the room's policy asks for.
    case policyMismatch(expected: FrameKind, got: FrameKind)
    case badSignature
    /// The Megolm message inside does not parse.
    case badMessage(String)
    /// The envelope names a sender other than the connection that published it.
    case senderMismatch
    case notAMember(String)
    case tooLarge(Int, limit: Int)
    /// Per-sender quota of the room (bytes or messages per window).
    case overQuota(String)
    case notPersisted(String)

    public var description: String {
        switch self {
        case .format(let error): return "\(error)"
        case .policyMismatch(let expected, let got): return "the room stores \(expected) frames; this one is \(got)"
        case .badSignature: return "the frame's signature does not verify (a Megolm frame must be signed by its session's key)"
        case .badMessage(let why): return "malformed Megolm message: \(why)"
        case .senderMismatch: return "the frame names a sender other than the identity that published it"
        case .notAMember(let who): return "\(who) is not a member of the room"
        case .tooLarge(let size, let limit): return "a stored frame may be at most \(limit) bytes (this one is \(size))"
        case .overQuota(let why): return "over the room's storage quota for this sender: \(why)"
        case .notPersisted(let room): return "room \(room) is not persisted"
        }
    }

    /// A short machine-readable reason for receipts.
    public var code: String {
        switch self {
        case .format: return "malformed"
        case .policyMismatch: return "policy"
        case .badSignature: return "signature"
        case .badMessage: return "malformed"
        case .senderMismatch: return "sender"
        case .notAMember: return "member"
        case .tooLarge: return "size"
        case .overQuota: return "quota"
        case .notPersisted: return "room"
        }
    }
}

/// Checks a frame of a persisted room before anything stores it. Pure: the
/// node's persister runs it on frames from its clients and from peers, and
/// the fuzz target runs it on arbitrary bytes.
public enum FrameVerifier {
    /// The largest frame a node stores (the broker's default max payload).
    public static let maximumFrame = 1024 * 1024

    /// Verifies `bytes` as a frame of a room with `policy` and returns its
    /// identity. It does not check membership (the caller holds the state).
    public static func verify(_ bytes: [UInt8], policy: RoomPolicy) throws(FrameStorageError) -> VerifiedFrame {
        guard bytes.count <= maximumFrame else { throw .tooLarge(bytes.count, limit: maximumFrame) }
        let envelope: FrameEnvelope
        do { envelope = try FrameEnvelope(decoding: bytes) } catch { throw .format(error) }
        let expected: FrameKind = policy.encrypt ? .megolm : (policy.sign ? .signed : .plain)
        guard envelope.kind == expected else { throw .policyMismatch(expected: expected, got: envelope.kind) }
        switch envelope.body {
        case .megolm(let sessionKey, let messageBytes):
            guard let session = Ed25519PublicKey(bytes: sessionKey) else { throw .badSignature }
            let message: MegolmMessage
            do { message = try MegolmMessage(bytes: Array(messageBytes)) } catch { throw .badMessage("\(error)") }
            let signed = message.bytes
            let signatureOffset = signed.count - Ed25519PublicKey.signatureLength
            let valid = signed.withUnsafeBytes { raw in
                session.verify(signature: UnsafeRawBufferPointer(rebasing: raw[signatureOffset...]),
                               message: UnsafeRawBufferPointer(rebasing: raw[..<signatureOffset]))
            }
            guard valid else { throw .badSignature }
            return VerifiedFrame(sender: envelope.sender, id: FrameID(stream: sessionKey, index: UInt64(message.index)), bytes: bytes)
        case .signed(let stream, let sequence, _, let signature, let signedRange):
            guard let sender = Ed25519PublicKey(bytes: envelope.sender) else { throw .badSignature }
            let valid = bytes.withUnsafeBytes { raw in
                signature.withUnsafeBytes { sig in
                    sender.verify(signature: sig, message: UnsafeRawBufferPointer(rebasing: raw[signedRange]))
                }
            }
            guard valid else { throw .badSignature }
            return VerifiedFrame(sender: envelope.sender, id: FrameID(stream: stream, index: sequence), bytes: bytes)
        case .plain:
            throw .policyMismatch(expected: expected, got: .plain)
        }
    }

    /// The identity and sender of a frame, parsed but **not verified**: for
    /// frames this client sealed itself, or to drop repeats before the
    /// expensive checks (which still run on every frame that is used).
    public static func identify(_ bytes: [UInt8]) -> (sender: [UInt8], id: FrameID)? {
        guard let envelope = try? FrameEnvelope(decoding: bytes) else { return nil }
        switch envelope.body {
        case .megolm(let sessionKey, let messageBytes):
            guard let message = try? MegolmMessage(bytes: Array(messageBytes)) else { return nil }
            return (envelope.sender, FrameID(stream: sessionKey, index: UInt64(message.index)))
        case .signed(let stream, let sequence, _, _, _):
            return (envelope.sender, FrameID(stream: stream, index: sequence))
        case .plain:
            return nil
        }
    }

    /// Verifies `bytes` and checks that its sender may store it in `room` of
    /// `state`: an active member (and, when `publisher` is given, the very
    /// identity that published it).
    public static func verify(_ bytes: [UInt8], room: String, in state: MembershipState,
                              publisher: String? = nil) throws(FrameStorageError) -> VerifiedFrame {
        guard let found = state.rooms[room], found.archived == nil, found.policy.persist else { throw .notPersisted(room) }
        let frame = try verify(bytes, policy: found.policy)
        let sender = frame.senderNKey
        if let publisher, publisher != sender { throw .senderMismatch }
        guard state.members[room]?[sender] != nil, state.users[sender]?.status == .active else { throw .notAMember(sender) }
        return frame
    }
}
