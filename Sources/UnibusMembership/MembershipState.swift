import Foundation
import UnibusCrypto

public struct User: Codable, Equatable, Sendable {
    public var key: String
    public var exchangeKey: String
    public var handle: String
    public var role: UserRole
    public var status: UserStatus
    public var created: String
    public var updated: String
}

public struct Room: Codable, Equatable, Sendable {
    public var id: String
    public var subject: String
    public var owner: String
    public var policy: RoomPolicy
    public var created: String
    public var archived: String?
}

public struct Member: Codable, Equatable, Sendable {
    public var room: String
    public var user: String
    public var role: RoomRole
    public var joined: String
}

/// A workload's login as the fold accepted it (see `loginWorkload`).
public struct Workload: Codable, Equatable, Sendable {
    public var key: String
    /// The login role it came through.
    public var role: String
    public var subject: String?
    /// Claims the role keeps (its `claim_mappings`).
    public var metadata: [String: String]
    /// Unix seconds: the login ends here (the earlier of the token's `exp`
    /// and the login's time plus the role's ttl). Enforced by clocks, not
    /// the fold: nodes close its connections, clients stop sharing with it.
    public var expiresAt: Int64
    /// When it logged in (the operation's signed time).
    public var loggedIn: String
    /// The same time in Unix seconds: a login dated ahead of a reader's
    /// clock (by more than operations may lead) is not live yet.
    public var startsAt: Int64
}

/// A token's `jti` as used by a login, remembered until the token can no
/// longer be accepted anywhere (its `exp` plus the role's expiry leeway).
public struct UsedToken: Codable, Equatable, Sendable {
    public var issuer: String
    public var jti: String
    /// Unix seconds.
    public var until: Int64
}

/// Users, rooms and members as a pure, deterministic fold of signed
/// operations: the same operations in the same order give the same state on
/// every node. Every rule about who may do what lives in `apply`.
public struct MembershipState: Equatable, Sendable {
    public private(set) var users: [String: User] = [:]
    public private(set) var rooms: [String: Room] = [:]
    public private(set) var members: [String: [String: Member]] = [:]   // room → user → member
    /// The root admin: the only key whose self-registration can start the
    /// log. Nil until known (then the first genesis sets it).
    public private(set) var root: String?
    /// Cluster-wide settings, as the last admin-signed change left them.
    public private(set) var settings = ClusterSettings.standard
    /// Login roles by name (admin-signed).
    public private(set) var loginRoles: [String: LoginRole] = [:]
    /// Workload logins by key: present while the login stands, and after an
    /// admin revoked the key (which then cannot log in again).
    public private(set) var workloads: [String: Workload] = [:]
    /// Token ids used by logins, by `tokenKey(issuer:jti:)`: each is accepted once.
    public private(set) var usedTokens: [String: UsedToken] = [:]

    public init(root: String? = nil) {
        self.root = root
    }

    /// Folds `operations` in order, skipping (and reporting by id) those the
    /// rules refuse at their place in the order. Every node folds the same
    /// ordered log the same way, so refused operations are refused everywhere.
    public static func fold(_ operations: some Sequence<SignedOperation>, root: String?) -> (MembershipState, [String: MembershipError]) {
        var state = MembershipState(root: root)
        var skipped: [String: MembershipError] = [:]
        for operation in operations {
            do { try state.apply(operation) } catch { skipped[operation.id] = error }
        }
        return (state, skipped)
    }

    /// Sets the tables directly (the store compares its tables with the fold).
    mutating func restore(users: [String: User], rooms: [String: Room], members: [String: [String: Member]], root: String?,
                          settings: ClusterSettings) {
        self.root = root
        self.settings = settings
        self.users = users
        self.rooms = rooms
        self.members = members.filter { !$0.value.isEmpty }
    }

    /// Checks and applies one operation; on error nothing changes.
    public mutating func apply(_ signed: SignedOperation) throws(MembershipError) {
        let actor = signed.envelope.actor
        let at = signed.envelope.timestamp
        let operation = signed.envelope.operation

        if users.isEmpty {
            // Genesis: the first operation must be an admin registering itself,
            // and that admin must be the root when one is pinned.
            guard case .addUser(let key, _, _, .admin) = operation, key == actor else {
                throw .unauthorized("the first operation must be an admin adding its own key (bootstrap)")
            }
            if let root, root != actor {
                throw .unauthorized("the log's root admin is \(root); \(actor) cannot start it")
            }
        } else if case .loginWorkload = operation {
            // Authorized by its token, not by being a user (checked below).
        } else {
            guard let acting = users[actor] else { throw .unauthorized("\(actor) is not a registered user") }
            guard acting.status == .active else { throw .unauthorized("\(actor) is revoked") }
            guard acting.role != .agent else { throw .unauthorized("\(actor) is an agent key: it signs VaultMesh heartbeats, not operations") }
            if acting.role == .workload {
                // A workload is a short-lived member of its role's rooms: it
                // may leave a room, nothing else (it owns nothing that would
                // outlive its login).
                guard case .removeMember(_, let user) = operation, user == actor else {
                    throw .unauthorized("\(actor) is a workload: it may only log in again or leave a room")
                }
            }
        }
        let isAdmin = users[actor]?.role == .admin && users[actor]?.status == .active

        switch operation {
        case .addUser(let key, let exchangeKey, let handle, let role):
            guard users.isEmpty || isAdmin else { throw .unauthorized("only an admin may add users") }
            // Admins are the root's to make (and to reinstate): an admin key
            // cannot mint other admins that would outlive its revocation.
            guard users.isEmpty || role != .admin || actor == root else { throw .unauthorized("only the root admin may add admins") }
            guard (try? NKey.decodePublicKey(key, expecting: .user)) != nil else { throw .invalid("\(key.prefix(60)) is not a user nkey") }
            guard let exchange = try? Base64.decode(exchangeKey), exchange.count == 32 else {
                throw .invalid("the X25519 key must be 32 bytes of unpadded base64")
            }
            // Characters, as the fold has always counted: a rule that refused
            // what it once accepted would rewrite existing logs on replay.
            guard !handle.isEmpty, handle.count <= 64 else { throw .invalid("a handle must be 1 to 64 characters") }
            if var existing = users[key] {
                // Re-adding an active user changes nothing; a revoked one is
                // reinstated by this new operation (its history stays), with
                // the keys and handle given now and in no room.
                guard existing.status == .revoked else { throw .alreadyRegistered(key) }
                existing.status = .active
                existing.exchangeKey = exchangeKey
                existing.handle = handle
                existing.role = role
                existing.updated = at
                users[key] = existing
                // A reinstated workload key is an ordinary user now.
                workloads[key] = nil
                break
            }
            if users.isEmpty { root = key }
            users[key] = User(key: key, exchangeKey: exchangeKey, handle: handle, role: role, status: .active, created: at, updated: at)

        case .revokeUser(let key):
            guard isAdmin else { throw .unauthorized("only an admin may revoke users") }
            guard key != root else {
                throw .unauthorized("the root admin cannot be revoked; hand the root to another admin first (unibus root rotate)")
            }
            guard var user = users[key] else { throw .notFound("user \(key)") }
            guard user.role != .admin || actor == root else { throw .unauthorized("only the root admin may revoke admins") }
            guard user.status == .active else { throw .conflict("\(key) is already revoked") }
            user.status = .revoked
            user.updated = at
            users[key] = user
            // Revocation is removal from every room: members see it as a
            // departure (senders rotate), and a reinstated key starts in none.
            for roomID in members.keys where members[roomID]?[key] != nil {
                members[roomID]?[key] = nil
                if members[roomID]?.isEmpty == true { members[roomID] = nil }
            }

        case .createRoom(let id, let subject, let policy):
            guard Self.isValidRoomID(id) else { throw .invalid("room ids are 1 to 64 of [A-Za-z0-9_-]") }
            guard Self.isValidLiteralSubject(subject) else { throw .invalid("\(subject.prefix(80)) is not a valid literal subject") }
            if let reason = ReservedNamespace.reservation(of: subject) {
                throw .invalid("room subject \(subject.prefix(80)) is reserved: \(reason)")
            }
            if let problem = policy.problem { throw .invalid(problem) }
            guard policy.encrypt || settings.allowUnencryptedRooms else {
                throw .unauthorized("this cluster does not allow unencrypted rooms; create the room with encryption "
                                    + "(an admin can allow them with `unibus cluster settings --allow-unencrypted-rooms true`)")
            }
            guard rooms[id] == nil else { throw .conflict("room \(id) exists") }
            if let other = rooms.values.first(where: { $0.archived == nil && ReservedNamespace.overlaps($0.subject, subject) }) {
                throw .conflict("subject \(subject.prefix(80)) overlaps room \(other.id)'s subject \(other.subject) (one may not equal or lie under the other)")
            }
            if !isAdmin {
                let owned = rooms.values.reduce(0) { $0 + ($1.owner == actor && $1.archived == nil ? 1 : 0) }
                guard owned < settings.maxRoomsPerUser else {
                    throw .unauthorized("\(actor) already owns \(owned) open rooms, the cluster's limit; archive one first")
                }
            }
            rooms[id] = Room(id: id, subject: subject, owner: actor, policy: policy, created: at, archived: nil)
            members[id] = [actor: Member(room: id, user: actor, role: .owner, joined: at)]

        case .archiveRoom(let id):
            guard var room = rooms[id] else { throw .notFound("room \(id)") }
            guard isAdmin || members[id]?[actor]?.role == .owner else { throw .unauthorized("only the room's owner or an admin may archive it") }
            guard room.archived == nil else { throw .conflict("room \(id) is already archived") }
            room.archived = at
            rooms[id] = room

        case .addMember(let roomID, let user, let role):
            let room = try openRoom(roomID)
            guard isAdmin || members[roomID]?[actor]?.role == .owner else {
                throw .unauthorized("only the room's owner or an admin may add members to \(room.id)")
            }
            guard let target = users[user] else { throw .notFound("user \(user)") }
            guard target.status == .active else { throw .conflict("\(user) is revoked") }
            guard target.role != .agent else { throw .invalid("\(user) is an agent key: agents are not room members") }
            guard members[roomID]?[user] == nil else { throw .conflict("\(user) is already a member of \(roomID)") }
            members[roomID, default: [:]][user] = Member(room: roomID, user: user, role: role, joined: at)

        case .removeMember(let roomID, let user):
            _ = try openRoom(roomID)
            guard isAdmin || members[roomID]?[actor]?.role == .owner || actor == user else {
                throw .unauthorized("only the room's owner, an admin or the member itself may remove a member")
            }
            guard members[roomID]?[user] != nil else { throw .notFound("\(user) in room \(roomID)") }
            members[roomID]?[user] = nil
            if members[roomID]?.isEmpty == true { members[roomID] = nil }

        case .setMemberRole(let roomID, let user, let role):
            _ = try openRoom(roomID)
            guard isAdmin || members[roomID]?[actor]?.role == .owner else {
                throw .unauthorized("only the room's owner or an admin may change roles")
            }
            guard members[roomID]?[user] != nil else { throw .notFound("\(user) in room \(roomID)") }
            members[roomID]?[user]?.role = role

        case .setRoomPolicy(let roomID, let policy):
            var room = try openRoom(roomID)
            guard isAdmin || members[roomID]?[actor]?.role == .owner else {
                throw .unauthorized("only the room's owner or an admin may change its policy")
            }
            if let problem = policy.problem { throw .invalid(problem) }
            guard policy.encrypt == room.policy.encrypt, policy.sign == room.policy.sign else {
                throw .invalid("a room's protection (encrypt, sign) cannot change; create a new room instead")
            }
            room.policy = policy
            rooms[roomID] = room

        case .setClusterSettings(let newSettings):
            guard isAdmin else { throw .unauthorized("only an admin may change cluster settings") }
            guard ClusterSettings.maxRoomsPerUserRange.contains(newSettings.maxRoomsPerUser) else {
                throw .invalid("max_rooms_per_user must be \(ClusterSettings.maxRoomsPerUserRange.lowerBound) to \(ClusterSettings.maxRoomsPerUserRange.upperBound)")
            }
            settings = newSettings

        case .rotateRoot(let key):
            guard actor == root else { throw .unauthorized("only the root admin may hand over the root") }
            guard key != actor else { throw .conflict("\(key) is already the root admin") }
            guard let successor = users[key], successor.status == .active, successor.role == .admin else {
                throw .invalid("the new root must be an active admin (add it with --role admin first)")
            }
            root = key

        case .setLoginRole(let role):
            guard isAdmin else { throw .unauthorized("only an admin may set login roles") }
            do { try role.validate() } catch { throw .invalid(error.description) }
            guard role.rooms.allSatisfy(Self.isValidRoomID) else { throw .invalid("a login role's rooms are room ids (1 to 64 of [A-Za-z0-9_-])") }
            guard loginRoles[role.name] != nil || loginRoles.count < Self.maximumLoginRoles else {
                throw .conflict("the cluster already has \(Self.maximumLoginRoles) login roles; remove one first")
            }
            // New keys, claims or rooms: logins made under the old role end.
            endLogins(of: role.name, at: at)
            loginRoles[role.name] = role

        case .removeLoginRole(let name):
            guard isAdmin else { throw .unauthorized("only an admin may remove login roles") }
            guard LoginRole.isRoleName(name), loginRoles[name] != nil else { throw .notFound("login role \(name.prefix(64))") }
            endLogins(of: name, at: at)
            loginRoles[name] = nil

        case .loginWorkload(let roleName, let token, let exchangeKey):
            try loginWorkload(actor: actor, at: at, atMillis: signed.timestampMillis, roleName: roleName, token: token, exchangeKey: exchangeKey)

        case .checkpoint:
            // A checkpoint replaces the fold's starting point; only the log
            // (`MembershipLog`) adopts one, after checking it.
            throw .invalid("a checkpoint is adopted by the log, not folded as a change")
        }
    }

    /// Most login roles a cluster holds.
    public static let maximumLoginRoles = 256

    /// Verifies and applies a workload's login (see `MembershipOperation.loginWorkload`).
    private mutating func loginWorkload(actor: String, at: String, atMillis: UInt64?, roleName: String, token: String,
                                        exchangeKey: String) throws(MembershipError) {
        guard LoginRole.isRoleName(roleName), let role = loginRoles[roleName] else { throw .notFound("login role \(JWSError.printable(roleName))") }
        guard let millis = atMillis else { throw .invalid("the operation's timestamp is not an RFC 3339 UTC time of the form 2026-11-23T10:00:00.123Z (a real date, no offset)") }
        guard let (_, signingKey) = try? NKey.decodePublicKey(actor, expecting: .user) else { throw .invalid("\(actor.prefix(60)) is not a user nkey") }
        guard let exchange = try? Base64.decode(exchangeKey), exchange.count == 32 else {
            throw .invalid("the X25519 key must be 32 bytes of unpadded base64")
        }
        // Checked at the operation's signed time, never the reader's clock:
        // every node and client folds the same verdict. (The control plane
        // bounds that time near its clock when the login arrives; a login
        // backdated by a forger ends at its token's expiry all the same.)
        let login: VerifiedLogin
        do { login = try role.verify(token, at: Int64(millis / 1000), workloadKey: signingKey.bytes) } catch {
            throw .unauthorized("login through role \(role.name) refused: \(error)")
        }
        let tokenID = Self.tokenKey(issuer: role.issuer, jti: login.jti)
        guard usedTokens[tokenID] == nil else { throw .conflict("token id (jti) \(JWSError.printable(login.jti)) was already used to log in") }
        if let refusal = loginRefusal(key: actor, role: role.name) { throw refusal }
        usedTokens[tokenID] = UsedToken(issuer: role.issuer, jti: login.jti, until: login.tokenExpiresAt)
        // A renewal while the login is still live keeps its start: a renewal
        // signed a little ahead of some reader's clock must not interrupt it.
        let seconds = Int64(millis / 1000)
        let previous = users[actor]?.status == .active ? workloads[actor] : nil
        let startsAt = previous.map { $0.expiresAt > seconds ? min($0.startsAt, seconds) : seconds } ?? seconds
        let created = users[actor]?.created ?? at
        users[actor] = User(key: actor, exchangeKey: exchangeKey, handle: login.handle, role: .workload, status: .active, created: created, updated: at)
        workloads[actor] = Workload(key: actor, role: role.name, subject: login.subject, metadata: login.metadata,
                                    expiresAt: login.expiresAt, loggedIn: at, startsAt: startsAt)
        for roomID in role.rooms {
            guard let room = rooms[roomID], room.archived == nil, members[roomID]?[actor] == nil else { continue }
            members[roomID, default: [:]][actor] = Member(room: roomID, user: actor, role: .member, joined: at)
        }
    }

    /// Why `key` may not log in through role `role` now, or nil: a key that
    /// is a user of another kind, one an admin revoked (final), or one that
    /// logged in through another role (a login renews through its own role
    /// only, or it would keep that role's rooms beyond the role's removal).
    /// The one rule; the login endpoint asks it too, to refuse early.
    public func loginRefusal(key: String, role: String) -> MembershipError? {
        guard let existing = users[key] else { return nil }
        guard existing.role == .workload else {
            return .conflict("\(key) is a registered \(existing.role.rawValue) key; a workload logs in with a key of its own")
        }
        guard existing.status == .active || workloads[key] == nil else {
            return .unauthorized("\(key) was revoked by an admin; log in with a new key")
        }
        if let current = workloads[key], current.role != role {
            return .conflict("\(key) logged in through role \(current.role); it renews through that role only (log in with a new key for role \(role))")
        }
        return nil
    }

    /// Ends every login made through role `name`: the keys are revoked and
    /// leave their rooms; they may log in again under the role as it is now.
    private mutating func endLogins(of name: String, at: String) {
        for (key, workload) in workloads where workload.role == name && users[key]?.status == .active {
            users[key]?.status = .revoked
            users[key]?.updated = at
            workloads[key] = nil
            leaveAllRooms(key)
        }
    }

    private mutating func leaveAllRooms(_ key: String) {
        for roomID in members.keys where members[roomID]?[key] != nil {
            members[roomID]?[key] = nil
            if members[roomID]?.isEmpty == true { members[roomID] = nil }
        }
    }

    /// Whether `key` may use the bus at `now` (Unix seconds): an active user
    /// that is not an agent, and, for a workload, before its login expires.
    public func isLive(_ key: String, now: Int64) -> Bool {
        guard let user = users[key], user.status == .active, user.role != .agent else { return false }
        guard user.role == .workload, let workload = workloads[key] else { return user.role != .workload }
        // Not before its signed time (beyond the lead operations may have),
        // not from its end on.
        let (earliest, overflow) = now.addingReportingOverflow(Int64(OperationWindow.maximumLead / 1000))
        return workload.expiresAt > now && (overflow || workload.startsAt <= earliest)
    }

    /// The key of a used token: the issuer and jti as UTF-8 bytes (hex), so
    /// every reader compares them as bytes whatever its Unicode tables.
    public static func tokenKey(issuer: String, jti: String) -> String {
        Hex.encode(Array(issuer.utf8) + [0] + Array(jti.utf8))
    }

    /// When `key`'s login expires (Unix seconds), for a workload.
    public func expiry(of key: String) -> Int64? {
        users[key]?.role == .workload ? workloads[key]?.expiresAt : nil
    }

    /// The state as a checkpoint carries it (sorted, so the same state always
    /// encodes to the same bytes). With `prunedAt` (Unix seconds, at most
    /// the checkpoint's own time), workloads whose login expired by then
    /// leave it (users, rooms, records), as do the logins that role changes
    /// ended and token ids no longer acceptable anywhere: so workloads that
    /// log in every few minutes do not grow the log without bound.
    public func checkpointState(sequence: Int, rootChain: [ChainLink], prunedAt: Int64? = nil) -> CheckpointState {
        var state = self
        if let prunedAt { state.prune(at: prunedAt) }
        return CheckpointState(sequence: sequence, root: state.root ?? "", settings: state.settings,
                               users: state.users.values.sorted { $0.key < $1.key },
                               rooms: state.rooms.values.sorted { $0.id < $1.id },
                               members: state.members.values.flatMap(\.values).sorted { ($0.room, $0.user) < ($1.room, $1.user) },
                               rootChain: rootChain,
                               loginRoles: state.loginRoles.isEmpty ? nil : state.loginRoles.values.sorted { $0.name < $1.name },
                               workloads: state.workloads.isEmpty ? nil : state.workloads.values.sorted { $0.key < $1.key },
                               usedTokens: state.usedTokens.isEmpty ? nil : state.usedTokens.sorted { $0.key < $1.key }.map(\.value),
                               prunedAt: prunedAt)
    }

    private mutating func prune(at now: Int64) {
        for (key, user) in users where user.role == .workload {
            let ended = user.status == .active ? (workloads[key]?.expiresAt ?? 0) <= now : workloads[key] == nil
            guard ended else { continue }
            users[key] = nil
            workloads[key] = nil
            leaveAllRooms(key)
        }
        usedTokens = usedTokens.filter { $0.value.until > now }
    }

    /// The state a checkpoint describes, checked as the rules would have
    /// built it (a root-signed checkpoint is still input: nothing in it may
    /// trap the fold or describe a state the rules could not reach).
    public init(checkpoint: CheckpointState) throws(MembershipError) {
        self.init(root: checkpoint.root)
        guard ClusterSettings.maxRoomsPerUserRange.contains(checkpoint.settings.maxRoomsPerUser) else {
            throw .invalid("checkpoint settings out of range")
        }
        settings = checkpoint.settings
        for user in checkpoint.users {
            guard (try? NKey.decodePublicKey(user.key, expecting: .user)) != nil,
                  let exchange = try? Base64.decode(user.exchangeKey), exchange.count == 32,
                  !user.handle.isEmpty, user.handle.count <= 64, users[user.key] == nil else {
                throw .invalid("checkpoint user \(user.key.prefix(60)) is malformed or repeated")
            }
            users[user.key] = user
        }
        guard let rootUser = users[checkpoint.root], rootUser.role == .admin, rootUser.status == .active else {
            throw .invalid("a checkpoint's root must be one of its active admins")
        }
        for room in checkpoint.rooms {
            guard Self.isValidRoomID(room.id), Self.isValidLiteralSubject(room.subject), room.policy.problem == nil,
                  rooms[room.id] == nil, users[room.owner] != nil else {
                throw .invalid("checkpoint room \(room.id.prefix(64)) is malformed or repeated")
            }
            rooms[room.id] = room
        }
        for member in checkpoint.members {
            guard rooms[member.room] != nil, users[member.user]?.status == .active, members[member.room]?[member.user] == nil else {
                throw .invalid("checkpoint member \(member.user.prefix(60)) of \(member.room.prefix(64)) is malformed or repeated")
            }
            members[member.room, default: [:]][member.user] = member
        }
        for role in checkpoint.loginRoles ?? [] {
            guard loginRoles[role.name] == nil, loginRoles.count < Self.maximumLoginRoles, (try? role.validate()) != nil,
                  role.rooms.allSatisfy(Self.isValidRoomID) else {
                throw .invalid("checkpoint login role \(JWSError.printable(role.name)) is malformed or repeated")
            }
            loginRoles[role.name] = role
        }
        for workload in checkpoint.workloads ?? [] {
            guard workloads[workload.key] == nil, users[workload.key]?.role == .workload, LoginRole.isRoleName(workload.role),
                  users[workload.key]?.status != .active || loginRoles[workload.role] != nil else {
                throw .invalid("checkpoint workload \(workload.key.prefix(60)) is malformed, repeated or not a workload user")
            }
            workloads[workload.key] = workload
        }
        for token in checkpoint.usedTokens ?? [] {
            let id = Self.tokenKey(issuer: token.issuer, jti: token.jti)
            guard usedTokens[id] == nil, token.issuer.utf8.count <= 256, (1...256).contains(token.jti.utf8.count) else {
                throw .invalid("checkpoint token id is malformed or repeated")
            }
            usedTokens[id] = token
        }
    }

    /// SHA-256 (hex) of a canonical rendering of the state: two nodes hold
    /// the same users, rooms and members exactly when their digests match.
    public var digest: String {
        var text = "root \(root ?? "-")\n"
        if settings != .standard {
            text += "settings \(settings.allowUnencryptedRooms) \(settings.maxRoomsPerUser)\n"
        }
        for user in users.values.sorted(by: { $0.key < $1.key }) {
            text += "user \(user.key) \(user.exchangeKey) \(user.handle) \(user.role.rawValue) \(user.status.rawValue) \(user.created) \(user.updated)\n"
        }
        for room in rooms.values.sorted(by: { $0.id < $1.id }) {
            let p = room.policy
            text += "room \(room.id) \(room.subject) \(room.owner) \(room.created) \(room.archived ?? "-") "
                + "\(p.encrypt) \(p.sign) \(p.compress) \(p.persist) \(p.rotateAfterMessages) \(p.rotateAfterSeconds) \(p.frameWindowSeconds)"
                + (p.persist ? " \(p.retainAgeSeconds) \(p.retainBytes) \(p.retainMessages) \(p.history.rawValue)\n" : "\n")
            for member in (members[room.id] ?? [:]).values.sorted(by: { $0.user < $1.user }) {
                text += "member \(member.room) \(member.user) \(member.role.rawValue) \(member.joined)\n"
            }
        }
        // Login state in canonical JSON (sorted keys): absent when there is
        // none, so the digests of logs without login roles are unchanged.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for role in loginRoles.values.sorted(by: { $0.name < $1.name }) {
            text += "login-role " + ((try? encoder.encode(role)).map { String(decoding: $0, as: UTF8.self) } ?? "?") + "\n"
        }
        for workload in workloads.values.sorted(by: { $0.key < $1.key }) {
            text += "workload " + ((try? encoder.encode(workload)).map { String(decoding: $0, as: UTF8.self) } ?? "?") + "\n"
        }
        for token in usedTokens.keys.sorted() {
            text += "token \(token) \(usedTokens[token]?.until ?? 0)\n"
        }
        return Hex.encode(Digest.sha256(Array(text.utf8)))
    }

    private func openRoom(_ id: String) throws(MembershipError) -> Room {
        guard let room = rooms[id] else { throw .notFound("room \(id)") }
        guard room.archived == nil else { throw .conflict("room \(id) is archived") }
        return room
    }

    /// Rooms `user` belongs to (open rooms only), for permissions.
    public func rooms(of user: String) -> [Room] {
        members.compactMap { roomID, roomMembers in
            guard roomMembers[user] != nil, let room = rooms[roomID], room.archived == nil else { return nil }
            return room
        }.sorted { $0.id < $1.id }
    }

    public static func isValidRoomID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64 && id.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95
        }
    }

    static func isValidLiteralSubject(_ subject: String) -> Bool {
        guard !subject.isEmpty, subject.utf8.count <= 256 else { return false }
        // Bytes, not Characters: "\r\n" is one Swift Character, which a
        // character test for "\r" or "\n" does not match.
        return subject.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).allSatisfy { token in
            !token.isEmpty && !(token.count == 1 && (token.first == UInt8(ascii: "*") || token.first == UInt8(ascii: ">")))
                && !token.contains(where: { $0 <= 0x20 || $0 == 0x7f })
        }
    }
}
