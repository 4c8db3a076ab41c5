import Foundation
import UnibusCrypto

public enum UserRole: String, Codable, Sendable { case admin, member }
public enum UserStatus: String, Codable, Sendable { case active, revoked }
public enum RoomRole: String, Codable, Sendable { case owner, member }

/// How a room's traffic is protected and when its Megolm sessions rotate.
public struct RoomPolicy: Codable, Equatable, Sendable {
    public var encrypt: Bool
    public var sign: Bool
    public var compress: Bool
    /// Durable history; refused until the persistence issue lands.
    public var persist: Bool
    public var rotateAfterMessages: Int
    public var rotateAfterSeconds: Int
    /// Receivers refuse frames whose sender timestamp is further than this
    /// from their own clock (either way).
    public var frameWindowSeconds: Int

    public static let defaultFrameWindowSeconds = 300

    public init(encrypt: Bool = true, sign: Bool = true, compress: Bool = false, persist: Bool = false,
                rotateAfterMessages: Int = 1000, rotateAfterSeconds: Int = 7 * 24 * 3600,
                frameWindowSeconds: Int = RoomPolicy.defaultFrameWindowSeconds) {
        self.encrypt = encrypt
        self.sign = sign
        self.compress = compress
        self.persist = persist
        self.rotateAfterMessages = rotateAfterMessages
        self.rotateAfterSeconds = rotateAfterSeconds
        self.frameWindowSeconds = frameWindowSeconds
    }

    private enum CodingKeys: String, CodingKey {
        case encrypt, sign, compress, persist, rotateAfterMessages, rotateAfterSeconds, frameWindowSeconds
    }

    /// Operations signed before `frameWindowSeconds` existed decode with the default.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        encrypt = try container.decode(Bool.self, forKey: .encrypt)
        sign = try container.decode(Bool.self, forKey: .sign)
        compress = try container.decode(Bool.self, forKey: .compress)
        persist = try container.decode(Bool.self, forKey: .persist)
        rotateAfterMessages = try container.decode(Int.self, forKey: .rotateAfterMessages)
        rotateAfterSeconds = try container.decode(Int.self, forKey: .rotateAfterSeconds)
        frameWindowSeconds = try container.decodeIfPresent(Int.self, forKey: .frameWindowSeconds) ?? Self.defaultFrameWindowSeconds
    }

    /// Ranges the rules accept. Every value is multiplied into milliseconds
    /// or compared with clocks by clients, so each is bounded far below
    /// where that arithmetic could overflow.
    public static let rotateAfterMessagesRange = 1...100_000_000
    public static let rotateAfterSecondsRange = 1...(366 * 24 * 3600)
    public static let frameWindowSecondsRange = 1...(7 * 24 * 3600)

    /// Why this policy is out of range, or nil when it is acceptable.
    public var problem: String? {
        if !Self.rotateAfterMessagesRange.contains(rotateAfterMessages) {
            return "rotate_after_messages must be \(Self.rotateAfterMessagesRange.lowerBound) to \(Self.rotateAfterMessagesRange.upperBound)"
        }
        if !Self.rotateAfterSecondsRange.contains(rotateAfterSeconds) {
            return "rotate_after_seconds must be \(Self.rotateAfterSecondsRange.lowerBound) to \(Self.rotateAfterSecondsRange.upperBound) (a year)"
        }
        if !Self.frameWindowSecondsRange.contains(frameWindowSeconds) {
            return "frame_window_seconds must be \(Self.frameWindowSecondsRange.lowerBound) to \(Self.frameWindowSecondsRange.upperBound) (a week)"
        }
        return nil
    }
}

/// Cluster-wide rules set by an admin in the log (`setClusterSettings`), so
/// every node and client folds the same answer: never a per-node input.
public struct ClusterSettings: Codable, Equatable, Sendable {
    /// Whether rooms without end-to-end encryption may be created. Off until
    /// an admin turns it on: plaintext rooms are an explicit choice.
    public var allowUnencryptedRooms: Bool
    /// Open rooms one non-admin user may own at once (creation beyond it is
    /// refused), so no member can make every node re-authorize without bound.
    public var maxRoomsPerUser: Int

    public static let maxRoomsPerUserRange = 1...100_000
    public static let standard = ClusterSettings(allowUnencryptedRooms: false, maxRoomsPerUser: 100)

    public init(allowUnencryptedRooms: Bool, maxRoomsPerUser: Int) {
        self.allowUnencryptedRooms = allowUnencryptedRooms
        self.maxRoomsPerUser = maxRoomsPerUser
    }
}

/// One membership change. Users are named by their NATS user nkey ("U…"),
/// the one canonical form of a signing key.
public enum MembershipOperation: Codable, Equatable, Sendable {
    case addUser(key: String, exchangeKey: String, handle: String, role: UserRole)
    case revokeUser(key: String)
    case createRoom(id: String, subject: String, policy: RoomPolicy)
    case archiveRoom(id: String)
    case addMember(room: String, user: String, role: RoomRole)
    case removeMember(room: String, user: String)
    case setMemberRole(room: String, user: String, role: RoomRole)
    /// Admin only: replaces the cluster-wide settings.
    case setClusterSettings(settings: ClusterSettings)

    /// A short name for logs and the operations table.
    public var kind: String {
        switch self {
        case .addUser: return "user.add"
        case .revokeUser: return "user.revoke"
        case .createRoom: return "room.create"
        case .archiveRoom: return "room.archive"
        case .addMember: return "member.add"
        case .removeMember: return "member.remove"
        case .setMemberRole: return "member.role"
        case .setClusterSettings: return "cluster.settings"
        }
    }
}

/// What is signed: the operation, who acts, when, and a nonce that makes
/// two otherwise identical operations distinct.
public struct OperationEnvelope: Codable, Equatable, Sendable {
    public var version: Int
    public var actor: String
    public var timestamp: String
    public var nonce: String
    public var operation: MembershipOperation
}

/// An operation with the exact bytes that were signed and the signature.
/// The bytes are kept as received: verification never depends on
/// re-encoding, so every node checks the same bytes.
public struct SignedOperation: Equatable, Sendable {
    public let bytes: [UInt8]
    public let signature: [UInt8]
    public let envelope: OperationEnvelope

    /// SHA-256 of the signed bytes, hex: the operation's identity in the log.
    public var id: String { Hex.encode(Digest.sha256(bytes)) }

    /// Signs `operation` as `identity`.
    public static func sign(_ operation: MembershipOperation, by identity: Identity, at date: Date = Date()) -> SignedOperation {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let envelope = OperationEnvelope(version: 1, actor: identity.userNKey, timestamp: formatter.string(from: date),
                                         nonce: Base64.encode(Sodium.randomNonce(count: 12)), operation: operation)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding strings, numbers and enums cannot fail.
        let bytes = (try? [UInt8](encoder.encode(envelope))) ?? []
        return SignedOperation(bytes: bytes, signature: identity.sign(bytes), envelope: envelope)
    }

    private init(bytes: [UInt8], signature: [UInt8], envelope: OperationEnvelope) {
        self.bytes = bytes
        self.signature = signature
        self.envelope = envelope
    }

    /// Decodes received bytes and verifies the signature against the actor's key.
    public init(bytes: [UInt8], signature: [UInt8]) throws(MembershipError) {
        guard bytes.count <= 64 * 1024 else { throw .invalid("operation larger than 64 KiB") }
        guard let envelope = try? JSONDecoder().decode(OperationEnvelope.self, from: Data(bytes)) else {
            throw .invalid("not a membership operation document")
        }
        guard envelope.version == 1 else { throw .invalid("unsupported operation version \(envelope.version)") }
        guard let (_, key) = try? NKey.decodePublicKey(envelope.actor, expecting: .user) else {
            throw .invalid("actor \(envelope.actor.prefix(60)) is not a user nkey")
        }
        guard key.verify(signature: signature, message: bytes) else { throw .badSignature }
        self.bytes = bytes
        self.signature = signature
        self.envelope = envelope
    }
}

/// Why a membership operation was refused; the message says why.
public enum MembershipError: Error, Equatable, Sendable, CustomStringConvertible {
    case badSignature
    case invalid(String)
    case unauthorized(String)
    case alreadyRegistered(String)
    case notFound(String)
    case conflict(String)
    case unsupported(String)
    case storage(String)

    public var description: String {
        switch self {
        case .badSignature: return "the operation's signature does not verify against its actor's key"
        case .invalid(let why): return "invalid operation: \(why)"
        case .unauthorized(let why): return "not allowed: \(why)"
        case .alreadyRegistered(let key): return "already registered: \(key); nothing was changed"
        case .notFound(let what): return "not found: \(what)"
        case .conflict(let why): return "conflict: \(why)"
        case .unsupported(let why): return "not supported yet: \(why)"
        case .storage(let why): return "storage error: \(why)"
        }
    }
}
