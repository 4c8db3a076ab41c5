import Foundation
import UnibusFleet
import UnibusCrypto
import UnibusMembership

/// The control plane's request and response bodies, typed, shared by the
/// server (`UnibusControl`) and every client (the CLI, `UnibusClient`).
/// JSON field names are snake_case on the wire.
///
/// What a client may trust: nothing here is taken on a node's word by the
/// client library. Membership, keys and policies come from the signed
/// operations of `LogPage`, verified and folded by the client itself; the
/// list endpoints (`UsersResponse`, `RoomView`…) are the node's view, for
/// admins and tools.
public enum ControlAPI {
    /// Encodes a message as the control plane sends it (sorted keys).
    public static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // These types hold strings, numbers, booleans and arrays of them.
        return (try? [UInt8](encoder.encode(value))) ?? Array("{}".utf8)
    }

    /// Decodes a message, or nil when the bytes are not one.
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) -> T? {
        try? JSONDecoder().decode(type, from: Data(bytes))
    }

    public struct ErrorBody: Codable, Sendable {
        public var error: String
        public init(error: String) { self.error = error }
    }

    public struct Health: Codable, Sendable {
        public var status: String
        public init(status: String) { self.status = status }
    }

    public struct Readiness: Codable, Sendable {
        public var ready: Bool
        public var reason: String?
        public init(ready: Bool, reason: String? = nil) {
            self.ready = ready
            self.reason = reason
        }
    }

    /// `GET /v1/node`: who the node is (unsigned; the id every signed request names).
    public struct NodeInfo: Codable, Sendable {
        public var nodeID: String
        public var version: String
        public var clientPort: Int
        public var membership: MembershipInfo
        public var cluster: ClusterInfo?
        /// starting, serving, draining or stopping (nil from older nodes).
        public var status: String?
        /// Each runtime setting's value and where it came from (default, flag, command).
        public var runtimeSettings: [String: EffectiveSetting]?
        /// Engaged killswitches.
        public var killswitches: [String]?

        enum CodingKeys: String, CodingKey {
            case nodeID = "node_id", version, clientPort = "client_port", membership, cluster, status
            case runtimeSettings = "runtime_settings", killswitches
        }

        public init(nodeID: String, version: String, clientPort: Int, membership: MembershipInfo, cluster: ClusterInfo?,
                    status: String? = nil, runtimeSettings: [String: EffectiveSetting]? = nil, killswitches: [String]? = nil) {
            self.nodeID = nodeID
            self.version = version
            self.clientPort = clientPort
            self.membership = membership
            self.cluster = cluster
            self.status = status
            self.runtimeSettings = runtimeSettings
            self.killswitches = killswitches
        }
    }

    /// `GET /v1/fleet` (admins): the latest signed beat of every node this
    /// node heard (base64 of the exact bytes, so the caller verifies each),
    /// the latest signed command results, this node's VaultMesh agents, and
    /// when each node's log digest began to differ from the majority's (this
    /// node's observation: the only unsigned part).
    public struct FleetResponse: Codable, Sendable {
        public var observer: String
        public var beats: [String]
        public var results: [String]
        public var agents: [FleetView.AgentRow]
        public var disagreeingSince: [String: Int64]
        public var nowMs: Int64

        enum CodingKeys: String, CodingKey {
            case observer, beats, results, agents
            case disagreeingSince = "disagreeing_since", nowMs = "now_ms"
        }

        public init(observer: String, beats: [String], results: [String], agents: [FleetView.AgentRow], disagreeingSince: [String: Int64], nowMs: Int64) {
            self.observer = observer
            self.beats = beats
            self.results = results
            self.agents = agents
            self.disagreeingSince = disagreeingSince
            self.nowMs = nowMs
        }
    }

    /// `POST /v1/cc/codes` (admins): a single-use code for the Command
    /// Center page, valid for `expiresInSeconds`.
    public struct CommandCenterCode: Codable, Sendable {
        public var code: String
        public var expiresInSeconds: Int
        /// The page's path with the code in its fragment (never sent to a server or a log).
        public var path: String

        enum CodingKeys: String, CodingKey {
            case code, path
            case expiresInSeconds = "expires_in_seconds"
        }

        public init(code: String, expiresInSeconds: Int, path: String) {
            self.code = code
            self.expiresInSeconds = expiresInSeconds
            self.path = path
        }
    }

    public struct MembershipInfo: Codable, Sendable {
        public var operations: Int
        public var logDigest: String
        public var stateDigest: String
        public var refused: Int
        /// The root the log was started by (what clients pin).
        public var root: String
        /// The root now, after any hand-overs.
        public var currentRoot: String
        public var heads: [String]
        public var checkpoint: String?
        public var settings: Settings

        enum CodingKeys: String, CodingKey {
            case operations, logDigest = "log_digest", stateDigest = "state_digest", refused, root, currentRoot = "current_root",
                 heads, checkpoint, settings
        }

        public init(operations: Int, logDigest: String, stateDigest: String, refused: Int, root: String, currentRoot: String,
                    heads: [String], checkpoint: String?, settings: Settings) {
            self.operations = operations
            self.logDigest = logDigest
            self.stateDigest = stateDigest
            self.refused = refused
            self.root = root
            self.currentRoot = currentRoot
            self.heads = heads
            self.checkpoint = checkpoint
            self.settings = settings
        }
    }

    public struct Settings: Codable, Sendable {
        public var allowUnencryptedRooms: Bool
        public var maxRoomsPerUser: Int

        enum CodingKeys: String, CodingKey {
            case allowUnencryptedRooms = "allow_unencrypted_rooms", maxRoomsPerUser = "max_rooms_per_user"
        }

        public init(_ settings: ClusterSettings) {
            allowUnencryptedRooms = settings.allowUnencryptedRooms
            maxRoomsPerUser = settings.maxRoomsPerUser
        }
    }

    public struct ClusterInfo: Codable, Sendable {
        public var name: String
        public var routePort: Int
        public var routes: [RouteView]

        enum CodingKeys: String, CodingKey { case name, routePort = "route_port", routes }

        public init(name: String, routePort: Int, routes: [RouteView]) {
            self.name = name
            self.routePort = routePort
            self.routes = routes
        }
    }

    public struct RouteView: Codable, Sendable {
        public var nodeID: String
        public var name: String
        public var clientURL: String?
        public var controlURL: String?

        enum CodingKeys: String, CodingKey { case nodeID = "node_id", name, clientURL = "client_url", controlURL = "control_url" }

        public init(nodeID: String, name: String, clientURL: String?, controlURL: String?) {
            self.nodeID = nodeID
            self.name = name
            self.clientURL = clientURL
            self.controlURL = controlURL
        }
    }

    public struct UserView: Codable, Sendable, Equatable {
        public var key: String
        public var handle: String
        public var role: String
        public var status: String
        public var exchangeKey: String
        public var created: String
        public var updated: String

        enum CodingKeys: String, CodingKey { case key, handle, role, status, exchangeKey = "exchange_key", created, updated }

        public init(_ user: User) {
            key = user.key
            handle = user.handle
            role = user.role.rawValue
            status = user.status.rawValue
            exchangeKey = user.exchangeKey
            created = user.created
            updated = user.updated
        }
    }

    public struct UsersResponse: Codable, Sendable {
        public var users: [UserView]
        public init(users: [UserView]) { self.users = users }
    }

    public struct PolicyView: Codable, Sendable, Equatable {
        public var encrypt: Bool
        public var sign: Bool
        public var compress: Bool
        public var rotateAfterMessages: Int
        public var rotateAfterSeconds: Int
        public var frameWindowSeconds: Int
        /// Persisted rooms only (absent otherwise).
        public var persist: Bool?
        public var retainAgeSeconds: Int?
        public var retainBytes: Int?
        public var retainMessages: Int?
        public var history: String?

        enum CodingKeys: String, CodingKey {
            case encrypt, sign, compress, rotateAfterMessages = "rotate_after_messages", rotateAfterSeconds = "rotate_after_seconds",
                 frameWindowSeconds = "frame_window_seconds", persist, retainAgeSeconds = "retain_age_seconds",
                 retainBytes = "retain_bytes", retainMessages = "retain_messages", history
        }

        public init(_ policy: RoomPolicy) {
            encrypt = policy.encrypt
            sign = policy.sign
            compress = policy.compress
            rotateAfterMessages = policy.rotateAfterMessages
            rotateAfterSeconds = policy.rotateAfterSeconds
            frameWindowSeconds = policy.frameWindowSeconds
            if policy.persist {
                persist = true
                retainAgeSeconds = policy.retainAgeSeconds
                retainBytes = policy.retainBytes
                retainMessages = policy.retainMessages
                history = policy.history.rawValue
            }
        }
    }

    public struct RoomView: Codable, Sendable, Equatable {
        public var id: String
        public var subject: String
        public var owner: String
        public var created: String
        public var archived: String?
        public var policy: PolicyView

        public init(_ room: Room) {
            id = room.id
            subject = room.subject
            owner = room.owner
            created = room.created
            archived = room.archived
            policy = PolicyView(room.policy)
        }
    }

    public struct RoomsResponse: Codable, Sendable {
        public var rooms: [RoomView]
        public init(rooms: [RoomView]) { self.rooms = rooms }
    }

    public struct MemberView: Codable, Sendable {
        public var user: String
        public var role: String
        public var joined: String
        public var handle: String

        public init(user: String, role: String, joined: String, handle: String) {
            self.user = user
            self.role = role
            self.joined = joined
            self.handle = handle
        }
    }

    public struct MembersResponse: Codable, Sendable {
        public var members: [MemberView]
        public init(members: [MemberView]) { self.members = members }
    }

    /// A signed operation as it travels (`POST /v1/operations`, log pages).
    public struct OperationDocument: Codable, Sendable, Equatable {
        public var bytes: String
        public var signature: String

        public init(_ operation: SignedOperation) {
            bytes = Base64.encode(operation.bytes)
            signature = Base64.encode(operation.signature)
        }

        /// The operation, signature verified.
        public func verified() throws(MembershipError) -> SignedOperation {
            guard let bytes = try? Base64.decode(bytes), let signature = try? Base64.decode(signature) else {
                throw .invalid("an operation's bytes and signature must be base64")
            }
            return try SignedOperation(bytes: bytes, signature: signature)
        }
    }

    /// Where a signed operation is submitted: checkpoints (which may be
    /// large) have their own endpoint, everything else `/v1/operations`.
    public static func submissionPath(for operation: SignedOperation) -> String {
        if case .checkpoint = operation.envelope.operation { return "/v1/checkpoints" }
        return "/v1/operations"
    }

    public struct OperationAccepted: Codable, Sendable {
        public var id: String
        public var kind: String
        public init(id: String, kind: String) {
            self.id = id
            self.kind = kind
        }
    }

    /// `POST /v1/rooms/{id}/history`: a page of a persisted room's stored
    /// frames (ciphertext; the caller decrypts and verifies each). Members
    /// only; with `joined` history, nothing first stored before the caller joined.
    public struct HistoryRequest: Codable, Sendable, Equatable {
        public enum Order: String, Codable, Sendable {
            case newest, oldest
        }
        /// `newest`: newest first, below `before`. `oldest`: oldest first,
        /// after `after`, from `since` (ms since the epoch, first-stored time) on.
        public var order: Order
        /// Page tokens from an earlier page of the same node (node-local).
        public var before: Int64?
        public var after: Int64?
        public var since: UInt64?
        /// Instead of `since`: frames first stored within this many ms before
        /// the node's now (so a resuming client needs no clock agreement).
        public var within: UInt64?
        /// Oldest first: stop at the first frame first stored after this (ms):
        /// the page ends there and `next` is null.
        public var until: UInt64?
        /// Frames the caller has: per sender and stream, every index below
        /// `below` (they are left out; paging goes on past them).
        public var known: [Known]?
        public var limit: Int?

        public struct Known: Codable, Sendable, Equatable {
            /// The sender's Ed25519 key and the stream (session id), base64.
            public var sender: String
            public var stream: String
            public var below: UInt64
            public init(sender: String, stream: String, below: UInt64) {
                self.sender = sender
                self.stream = stream
                self.below = below
            }
        }

        public init(order: Order, before: Int64? = nil, after: Int64? = nil, since: UInt64? = nil, within: UInt64? = nil,
                    until: UInt64? = nil, known: [Known]? = nil, limit: Int? = nil) {
            self.order = order
            self.before = before
            self.after = after
            self.since = since
            self.within = within
            self.until = until
            self.known = known
            self.limit = limit
        }

        public static let maximumKnown = 10_000

        public static let maximumFrames = 1000
        public static let maximumBytes = 4 * 1024 * 1024
    }

    public struct StoredFrameView: Codable, Sendable, Equatable {
        /// The node's own order (a page token on that node only).
        public var seq: Int64
        /// When the first node stored it (ms since the epoch).
        public var firstStored: UInt64
        /// The frame as published (base64).
        public var frame: String

        public init(seq: Int64, firstStored: UInt64, frame: String) {
            self.seq = seq
            self.firstStored = firstStored
            self.frame = frame
        }

        enum CodingKeys: String, CodingKey {
            case seq, frame
            case firstStored = "first_stored"
        }
    }

    public struct HistoryPage: Codable, Sendable, Equatable {
        public var frames: [StoredFrameView]
        /// The token for the next page (`before` or `after`), or nil at the end.
        /// A page may be empty (everything in it was `known`) and still have one.
        public var next: Int64?
        /// The node that answered (its tokens mean nothing elsewhere).
        public var node: String
        /// The node's clock when it answered (ms since the epoch): a resuming
        /// client stops at frames stored after its first page (those come live).
        public var now: UInt64?

        public init(frames: [StoredFrameView], next: Int64?, node: String, now: UInt64?) {
            self.frames = frames
            self.next = next
            self.node = node
            self.now = now
        }
    }

    /// `POST /v1/log`: the operations the caller lacks, given what it holds.
    public struct LogRequest: Codable, Sendable {
        /// Heads of the caller's log (empty: from the start).
        public var heads: [String]
        public var limit: Int?
        public init(heads: [String], limit: Int? = nil) {
            self.heads = heads
            self.limit = limit
        }
        public static let maximumHeads = 512
    }

    public struct LogPage: Codable, Sendable {
        /// In the node's fold order (predecessors first); a checkpoint, when
        /// the caller must start from one, comes first.
        public var operations: [OperationDocument]
        /// False when more operations follow: ask again with the new heads.
        public var complete: Bool
        /// The node's heads when it answered.
        public var heads: [String]

        public init(operations: [OperationDocument], complete: Bool, heads: [String]) {
            self.operations = operations
            self.complete = complete
            self.heads = heads
        }
        public static let maximumOperations = 500
        /// Signed bytes in one page (a checkpoint alone may exceed it).
        public static let maximumBytes = 4 * 1024 * 1024
    }

    /// `GET /v1/log/heads`: what a node holds, to compare nodes.
    public struct LogHeads: Codable, Sendable {
        public var heads: [String]
        public var checkpoint: String?
        public var count: Int
        public var digest: String

        public init(heads: [String], checkpoint: String?, count: Int, digest: String) {
            self.heads = heads
            self.checkpoint = checkpoint
            self.count = count
            self.digest = digest
        }
    }

    /// One sealed share in `POST /v1/rooms/{id}/key-shares`.
    public struct ShareSubmission: Codable, Sendable {
        public var recipient: String
        public var sealed: String
        public var signature: String

        public init(recipient: String, sealed: [UInt8], signature: [UInt8]) {
            self.recipient = recipient
            self.sealed = Base64.encode(sealed)
            self.signature = Base64.encode(signature)
        }
    }

    public struct KeySharesSubmission: Codable, Sendable {
        public var sessionID: String
        /// The session's own key signs that the caller owns it (see `KeyShare.ownerStatement`).
        public var sessionSignature: String
        public var shares: [ShareSubmission]

        enum CodingKeys: String, CodingKey { case sessionID = "session_id", sessionSignature = "session_signature", shares }

        public init(sessionID: String, sessionSignature: [UInt8], shares: [ShareSubmission]) {
            self.sessionID = sessionID
            self.sessionSignature = Base64.encode(sessionSignature)
            self.shares = shares
        }
        public static let maximumShares = 1000
    }

    public struct SharesStored: Codable, Sendable {
        public var stored: Int
        public init(stored: Int) { self.stored = stored }
    }

    public struct KeyShareView: Codable, Sendable {
        public var id: String
        public var room: String
        public var sender: String
        public var sessionID: String
        public var sealed: String
        public var signature: String
        public var sessionSignature: String
        public var created: String

        enum CodingKeys: String, CodingKey {
            case id, room, sender, sessionID = "session_id", sealed, signature, sessionSignature = "session_signature", created
        }

        public init(_ share: KeyShare) {
            id = share.id
            room = share.room
            sender = share.sender
            sessionID = share.sessionID
            sealed = Base64.encode(share.sealed)
            signature = Base64.encode(share.signature)
            sessionSignature = Base64.encode(share.sessionSignature)
            created = share.created
        }
    }

    public struct KeySharesPage: Codable, Sendable {
        public var keyShares: [KeyShareView]
        /// The cursor for the next page (`?after=`), absent on the last.
        public var next: String?

        enum CodingKeys: String, CodingKey { case keyShares = "key_shares", next }

        public init(keyShares: [KeyShareView], next: String?) {
            self.keyShares = keyShares
            self.next = next
        }
    }

    /// `POST /v1/key-shares/ack`: each acknowledgement signed by the caller
    /// (the recipient) over `KeyShare.ackStatement`, so other nodes can check it.
    public struct AckRequest: Codable, Sendable {
        public var acks: [Ack]
        public init(acks: [Ack]) { self.acks = acks }

        public struct Ack: Codable, Sendable {
            public var id: String
            public var signature: String
            public init(id: String, signature: [UInt8]) {
                self.id = id
                self.signature = Base64.encode(signature)
            }
        }
    }

    public struct AckResponse: Codable, Sendable {
        public var acknowledged: Int
        public init(acknowledged: Int) { self.acknowledged = acknowledged }
    }
}

// MARK: workload login (issue 16)

extension ControlAPI {
    /// `POST /v1/auth/jwt/login`, signed (request signature) by the
    /// workload's new key, which `sign_pub` names. Without `operation` the
    /// node checks the token and answers `WorkloadLoginChallenge` (the log
    /// heads to sign against); with it (a `loginWorkload` operation signed by
    /// the same key, embedding the same token) the node appends it.
    public struct WorkloadLoginRequest: Codable, Sendable {
        public var role: String
        public var jwt: String
        /// The workload's signing key (user nkey).
        public var signPub: String
        /// Its X25519 exchange key (base64).
        public var kxPub: String
        public var operation: OperationDocument?

        enum CodingKeys: String, CodingKey {
            case role, jwt, operation
            case signPub = "sign_pub", kxPub = "kx_pub"
        }

        public init(role: String, jwt: String, signPub: String, kxPub: String, operation: OperationDocument? = nil) {
            self.role = role
            self.jwt = jwt
            self.signPub = signPub
            self.kxPub = kxPub
            self.operation = operation
        }

        /// Bodies above this are refused (a token is at most 16 KiB).
        public static let maximumBytes = 64 * 1024
    }

    /// The token verified here: sign a `loginWorkload` operation naming
    /// these parents and send the request again with it.
    public struct WorkloadLoginChallenge: Codable, Sendable {
        public var parents: [String]
        /// The node's clock (Unix seconds): sign near it.
        public var now: Int64
        public init(parents: [String], now: Int64) {
            self.parents = parents
            self.now = now
        }
    }

    /// The login is in the log: the key is a workload until `expiresAt`.
    public struct WorkloadLoginAccepted: Codable, Sendable {
        public var id: String
        public var key: String
        public var handle: String
        public var role: String
        /// Unix seconds.
        public var expiresAt: Int64
        public var rooms: [String]
        public init(id: String, key: String, handle: String, role: String, expiresAt: Int64, rooms: [String]) {
            self.id = id
            self.key = key
            self.handle = handle
            self.role = role
            self.expiresAt = expiresAt
            self.rooms = rooms
        }
    }

    /// `GET /v1/roles`: the login roles in this node's log.
    public struct LoginRolesResponse: Codable, Sendable {
        public var roles: [LoginRole]
        /// Live workload logins per role.
        public var workloads: [String: Int]
        public init(roles: [LoginRole], workloads: [String: Int]) {
            self.roles = roles
            self.workloads = workloads
        }
    }
}
