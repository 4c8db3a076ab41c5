import Foundation
import UnibusCrypto

/// A user's role: `admin` manages users, rooms and nodes; `member` uses
/// rooms; `agent` is a VaultMesh node agent's key, which signs heartbeats
/// to the control plane and is neither a bus user nor a room member;
/// `workload` is a key that logged in with a JWT through a login role
/// (`loginWorkload`): a member of its role's rooms until its login expires.
public enum UserRole: String, Codable, Sendable, CaseIterable { case admin, member, agent, workload }
public enum UserStatus: String, Codable, Sendable { case active, revoked }
public enum RoomRole: String, Codable, Sendable { case owner, member }

/// Who may read a persisted room's retained history when they join.
public enum HistoryVisibility: String, Codable, Sendable, CaseIterable {
    /// From the member's join on (frames first stored after it).
    case joined
    /// Everything the nodes retain (senders share their retained sessions).
    case shared
}

/// How a room's traffic is protected, when its Megolm sessions rotate, and
/// (for persisted rooms) how long nodes keep its ciphertext and who reads it.
public struct RoomPolicy: Codable, Equatable, Sendable {
    public var encrypt: Bool
    public var sign: Bool
    public var compress: Bool
    /// Durable history: every node stores the room's ciphertext frames, and
    /// publishes are acknowledged once stored (see docs/persistence.md).
    public var persist: Bool
    public var rotateAfterMessages: Int
    public var rotateAfterSeconds: Int
    /// Receivers refuse frames whose sender timestamp is further than this
    /// from their own clock (either way).
    public var frameWindowSeconds: Int
    /// Retention of a persisted room, applied by each node: frames older
    /// than this (from when the first node stored them), beyond this many
    /// bytes, or beyond this many frames are deleted, oldest first.
    public var retainAgeSeconds: Int
    public var retainBytes: Int
    public var retainMessages: Int
    /// Who reads retained history (persisted rooms).
    public var history: HistoryVisibility
    /// A persisted policy signed without retention (only possible in logs
    /// from before persistence existed, where the rules refused it): kept
    /// as signed, so such a log still loads, and refused again by the rules.
    public private(set) var lacksRetention = false

    public static let defaultFrameWindowSeconds = 300
    public static let defaultRetainAgeSeconds = 7 * 24 * 3600
    public static let defaultRetainBytes = 1 << 30
    public static let defaultRetainMessages = 1_000_000

    public init(encrypt: Bool = true, sign: Bool = true, compress: Bool = false, persist: Bool = false,
                rotateAfterMessages: Int = 1000, rotateAfterSeconds: Int = 7 * 24 * 3600,
                frameWindowSeconds: Int = RoomPolicy.defaultFrameWindowSeconds,
                retainAgeSeconds: Int = RoomPolicy.defaultRetainAgeSeconds, retainBytes: Int = RoomPolicy.defaultRetainBytes,
                retainMessages: Int = RoomPolicy.defaultRetainMessages, history: HistoryVisibility = .joined) {
        self.encrypt = encrypt
        self.sign = sign
        self.compress = compress
        self.persist = persist
        self.rotateAfterMessages = rotateAfterMessages
        self.rotateAfterSeconds = rotateAfterSeconds
        self.frameWindowSeconds = frameWindowSeconds
        self.retainAgeSeconds = retainAgeSeconds
        self.retainBytes = retainBytes
        self.retainMessages = retainMessages
        self.history = history
    }

    private enum CodingKeys: String, CodingKey {
        case encrypt, sign, compress, persist, rotateAfterMessages, rotateAfterSeconds, frameWindowSeconds
        case retainAgeSeconds, retainBytes, retainMessages, history
    }

    /// Operations signed before `frameWindowSeconds` existed decode with the
    /// default; retention and history are present exactly when `persist` is
    /// (so the policies of rooms made before persistence keep their bytes).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        encrypt = try container.decode(Bool.self, forKey: .encrypt)
        sign = try container.decode(Bool.self, forKey: .sign)
        compress = try container.decode(Bool.self, forKey: .compress)
        persist = try container.decode(Bool.self, forKey: .persist)
        rotateAfterMessages = try container.decode(Int.self, forKey: .rotateAfterMessages)
        rotateAfterSeconds = try container.decode(Int.self, forKey: .rotateAfterSeconds)
        frameWindowSeconds = try container.decodeIfPresent(Int.self, forKey: .frameWindowSeconds) ?? Self.defaultFrameWindowSeconds
        if persist, container.contains(.retainAgeSeconds) || container.contains(.retainBytes)
            || container.contains(.retainMessages) || container.contains(.history) {
            retainAgeSeconds = try container.decode(Int.self, forKey: .retainAgeSeconds)
            retainBytes = try container.decode(Int.self, forKey: .retainBytes)
            retainMessages = try container.decode(Int.self, forKey: .retainMessages)
            history = try container.decode(HistoryVisibility.self, forKey: .history)
        } else {
            lacksRetention = persist
            retainAgeSeconds = Self.defaultRetainAgeSeconds
            retainBytes = Self.defaultRetainBytes
            retainMessages = Self.defaultRetainMessages
            history = .joined
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(encrypt, forKey: .encrypt)
        try container.encode(sign, forKey: .sign)
        try container.encode(compress, forKey: .compress)
        try container.encode(persist, forKey: .persist)
        try container.encode(rotateAfterMessages, forKey: .rotateAfterMessages)
        try container.encode(rotateAfterSeconds, forKey: .rotateAfterSeconds)
        try container.encode(frameWindowSeconds, forKey: .frameWindowSeconds)
        if persist && !lacksRetention {
            try container.encode(retainAgeSeconds, forKey: .retainAgeSeconds)
            try container.encode(retainBytes, forKey: .retainBytes)
            try container.encode(retainMessages, forKey: .retainMessages)
            try container.encode(history, forKey: .history)
        }
    }

    /// Ranges the rules accept. Every value is multiplied into milliseconds
    /// or compared with clocks by clients, so each is bounded far below
    /// where that arithmetic could overflow.
    public static let rotateAfterMessagesRange = 1...100_000_000
    public static let rotateAfterSecondsRange = 1...(366 * 24 * 3600)
    public static let frameWindowSecondsRange = 1...(7 * 24 * 3600)
    public static let retainAgeSecondsRange = 60...(10 * 366 * 24 * 3600)
    public static let retainBytesRange = 1024...(1 << 50)
    public static let retainMessagesRange = 1...1_000_000_000

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
        guard persist else { return nil }
        if lacksRetention { return "a persisted room's policy must name its retention and history" }
        // Stored frames are identified by their Megolm (session, index) or
        // signed (stream, sequence): a plain frame has no identity to store by.
        if !encrypt && !sign { return "a persisted room must be encrypted or signed (plain frames have no identity to store and deduplicate by)" }
        if !Self.retainAgeSecondsRange.contains(retainAgeSeconds) {
            return "retain_age_seconds must be \(Self.retainAgeSecondsRange.lowerBound) to \(Self.retainAgeSecondsRange.upperBound) (ten years)"
        }
        if !Self.retainBytesRange.contains(retainBytes) {
            return "retain_bytes must be \(Self.retainBytesRange.lowerBound) to \(Self.retainBytesRange.upperBound) (1 PiB)"
        }
        if !Self.retainMessagesRange.contains(retainMessages) {
            return "retain_messages must be \(Self.retainMessagesRange.lowerBound) to \(Self.retainMessagesRange.upperBound)"
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
    /// The room's owner or an admin: replaces the room's policy. Rotation,
    /// compression, persistence, retention and history may change; the
    /// protection (encrypt, sign) may not (a downgrade is a new room).
    case setRoomPolicy(room: String, policy: RoomPolicy)
    /// Admin only: replaces the cluster-wide settings.
    case setClusterSettings(settings: ClusterSettings)
    /// Root only: hands the root role to another active admin (`key`).
    /// Clients that pinned an earlier root follow the chain of these.
    case rotateRoot(key: String)
    /// Root only: the folded state at the operation's predecessors, which
    /// nodes and clients start from instead of the log before it (see
    /// `MembershipLog`).
    case checkpoint(CheckpointState)
    /// Admin only: adds a login role, or replaces the role of that name
    /// (new keys, claims, rooms…), which ends every login made through the
    /// role before (they log in again under the new one).
    case setLoginRole(role: LoginRole)
    /// Admin only: removes a login role and ends every login made through it.
    case removeLoginRole(name: String)
    /// Signed by the workload's own new key (the actor): it logs in through
    /// `role` with `token`, a JWT every reader re-verifies against the role
    /// at the operation's signed time. The same key logging in again renews
    /// its login (no departure, so no rotation).
    case loginWorkload(role: String, token: String, exchangeKey: String)

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
        case .setRoomPolicy: return "room.policy"
        case .setClusterSettings: return "cluster.settings"
        case .rotateRoot: return "root.rotate"
        case .checkpoint: return "log.checkpoint"
        case .setLoginRole: return "role.set"
        case .removeLoginRole: return "role.remove"
        case .loginWorkload: return "workload.login"
        }
    }
}

/// What is signed: the operation, who acts, when, the log heads the actor
/// had seen (`parents`), and a nonce that makes two otherwise identical
/// operations distinct.
///
/// Version 2 carries `parents`: the causal order is part of what the actor
/// signs, so no node can move an operation before what it followed.
/// Version 1 (no parents) is the log format before that; it is read only to
/// migrate an old data directory (`unibusd migrate`).
public struct OperationEnvelope: Codable, Equatable, Sendable {
    public init(version: Int, actor: String, timestamp: String, nonce: String, parents: [String]?, operation: MembershipOperation) {
        self.version = version
        self.actor = actor
        self.timestamp = timestamp
        self.nonce = nonce
        self.parents = parents
        self.operation = operation
    }

    public var version: Int
    public var actor: String
    public var timestamp: String
    public var nonce: String
    /// Ids of the operations the actor had seen as heads, sorted and unique
    /// (empty only for the first operation of a log). Absent in version 1.
    public var parents: [String]?
    public var operation: MembershipOperation

    public static let currentVersion = 2
    public static let legacyVersion = 1
    /// Most predecessors one operation may name.
    public static let maximumParents = 64
}

/// An operation with the exact bytes that were signed and the signature.
/// The bytes are kept as received: verification never depends on
/// re-encoding, so every node checks the same bytes.
public struct SignedOperation: Equatable, Sendable {
    public let bytes: [UInt8]
    public let signature: [UInt8]
    public let envelope: OperationEnvelope
    /// SHA-256 of the signed bytes, hex: the operation's identity in the log.
    public let id: String

    /// Largest operation; checkpoints (the whole folded state) may be larger.
    public static let maximumSize = 64 * 1024
    public static let maximumCheckpointSize = 2 * 1024 * 1024

    /// The predecessors the actor named (empty for a legacy operation).
    public var parents: [String] { envelope.parents ?? [] }
    public var actor: String { envelope.actor }
    public var isLegacy: Bool { envelope.version == OperationEnvelope.legacyVersion }

    /// Signs `operation` as `identity`, naming `parents` (the heads of the
    /// log the signer holds; see `MembershipLog.heads`). Empty parents only
    /// start a log (or serve the pure-rules tests, which have no log).
    public static func sign(_ operation: MembershipOperation, by identity: Identity, parents: [String] = [],
                            at date: Date = Date(), nonce: [UInt8]? = nil) -> SignedOperation {
        let envelope = OperationEnvelope(version: OperationEnvelope.currentVersion, actor: identity.userNKey,
                                         timestamp: OperationTime.string(date),
                                         nonce: Base64.encode(nonce ?? Sodium.randomNonce(count: 12)),
                                         parents: Array(Set(parents)).sorted(), operation: operation)
        return signEnvelope(envelope, by: identity)
    }

    /// Signs a prepared envelope (migration signs a legacy-free checkpoint
    /// with fixed fields, so every node migrating the same log signs the same bytes).
    public static func signEnvelope(_ envelope: OperationEnvelope, by identity: Identity) -> SignedOperation {
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
        self.id = Hex.encode(Digest.sha256(bytes))
    }

    /// Decodes received bytes and verifies the signature against the actor's
    /// key. Version 1 (legacy) decodes too, for migration; a log refuses it.
    public init(bytes: [UInt8], signature: [UInt8]) throws(MembershipError) {
        guard bytes.count <= Self.maximumCheckpointSize else { throw .invalid("operation larger than 2 MiB") }
        guard let envelope = try? JSONDecoder().decode(OperationEnvelope.self, from: Data(bytes)) else {
            throw .invalid("not a membership operation document")
        }
        if case .checkpoint = envelope.operation {} else if bytes.count > Self.maximumSize {
            throw .invalid("operation larger than 64 KiB")
        }
        switch envelope.version {
        case OperationEnvelope.currentVersion:
            guard let parents = envelope.parents, parents.count <= OperationEnvelope.maximumParents else {
                throw .invalid("an operation names 0 to \(OperationEnvelope.maximumParents) predecessors (parents)")
            }
            guard parents.allSatisfy(Self.isOperationID), zip(parents, parents.dropFirst()).allSatisfy({ $0 < $1 }) else {
                throw .invalid("parents must be sorted, distinct operation ids (64 lowercase hex)")
            }
        case OperationEnvelope.legacyVersion:
            guard envelope.parents == nil else { throw .invalid("a version 1 operation has no parents") }
            if case .checkpoint = envelope.operation { throw .invalid("a version 1 operation cannot be a checkpoint") }
            if case .rotateRoot = envelope.operation { throw .invalid("a version 1 operation cannot rotate the root") }
        default:
            throw .invalid("unsupported operation version \(envelope.version)")
        }
        guard envelope.timestamp.utf8.count <= 40, envelope.nonce.utf8.count <= 64 else { throw .invalid("overlong timestamp or nonce") }
        guard let (_, key) = try? NKey.decodePublicKey(envelope.actor, expecting: .user) else {
            throw .invalid("actor \(envelope.actor.prefix(60)) is not a user nkey")
        }
        guard key.verify(signature: signature, message: bytes) else { throw .badSignature }
        // Exactly the bytes `sign` writes: nothing unknown rides along (a
        // member could otherwise pad every operation to the size limit and
        // bloat every node's and client's log).
        if envelope.version == OperationEnvelope.currentVersion {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            guard let canonical = try? [UInt8](encoder.encode(envelope)), canonical == bytes else {
                throw .invalid("an operation's bytes must be its canonical encoding (sorted keys, no unknown fields)")
            }
        }
        self.init(bytes: bytes, signature: signature, envelope: envelope)
    }

    /// Whether `text` has the form of an operation id (64 lowercase hex).
    public static func isOperationID(_ text: some StringProtocol) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// The actor's timestamp in milliseconds since the epoch, or nil when it
    /// does not parse.
    public var timestampMillis: UInt64? { OperationTime.millis(envelope.timestamp) }
}

/// How far from a node's clock an operation's signed timestamp may be when
/// it first arrives through the control plane. Checked only there: never at
/// merge, replay or migration, or copies of the log would stop converging.
public enum OperationWindow {
    /// An operation signed longer ago than this is refused (it can only get older).
    public static let maximumAge: UInt64 = 600_000
    /// An operation dated further ahead than this is refused, and its id is
    /// remembered until it would have expired, so it cannot succeed later.
    public static let maximumLead: UInt64 = 120_000

    public enum Verdict: Equatable, Sendable {
        case inside
        case expired(ageSeconds: UInt64)
        case early(leadSeconds: UInt64)
        case unreadable
    }

    public static func judge(_ operation: SignedOperation, nowMillis: UInt64) -> Verdict {
        guard let at = operation.timestampMillis else { return .unreadable }
        if at > nowMillis {
            let lead = at - nowMillis
            return lead > maximumLead ? .early(leadSeconds: lead / 1000) : .inside
        }
        let age = nowMillis - at
        return age > maximumAge ? .expired(ageSeconds: age / 1000) : .inside
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
