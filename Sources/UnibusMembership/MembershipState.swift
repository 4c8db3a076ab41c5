import UnibusCrypto

public struct User: Equatable, Sendable {
    public var key: String
    public var exchangeKey: String
    public var handle: String
    public var role: UserRole
    public var status: UserStatus
    public var created: String
    public var updated: String
}

public struct Room: Equatable, Sendable {
    public var id: String
    public var subject: String
    public var owner: String
    public var policy: RoomPolicy
    public var created: String
    public var archived: String?
}

public struct Member: Equatable, Sendable {
    public var room: String
    public var user: String
    public var role: RoomRole
    public var joined: String
}

/// Users, rooms and members as a pure, deterministic fold of signed
/// operations: the same operations in the same order give the same state on
/// every node. Every rule about who may do what lives in `apply`.
public struct MembershipState: Equatable, Sendable {
    public private(set) var users: [String: User] = [:]
    public private(set) var rooms: [String: Room] = [:]
    public private(set) var members: [String: [String: Member]] = [:]   // room → user → member

    public init() {}

    /// Sets the tables directly (the store compares its tables with the fold).
    mutating func restore(users: [String: User], rooms: [String: Room], members: [String: [String: Member]]) {
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
            // Genesis: the first operation must be an admin registering itself.
            guard case .addUser(let key, _, _, .admin) = operation, key == actor else {
                throw .unauthorized("the first operation must be an admin adding its own key (bootstrap)")
            }
        } else {
            guard let acting = users[actor] else { throw .unauthorized("\(actor) is not a registered user") }
            guard acting.status == .active else { throw .unauthorized("\(actor) is revoked") }
        }
        let isAdmin = users[actor]?.role == .admin && users[actor]?.status == .active

        switch operation {
        case .addUser(let key, let exchangeKey, let handle, let role):
            guard users.isEmpty || isAdmin else { throw .unauthorized("only an admin may add users") }
            guard (try? NKey.decodePublicKey(key, expecting: .user)) != nil else { throw .invalid("\(key.prefix(60)) is not a user nkey") }
            guard let exchange = try? Base64.decode(exchangeKey), exchange.count == 32 else {
                throw .invalid("the X25519 key must be 32 bytes of unpadded base64")
            }
            guard !handle.isEmpty, handle.count <= 64 else { throw .invalid("a handle must be 1 to 64 characters") }
            guard users[key] == nil else { throw .alreadyRegistered(key) }
            users[key] = User(key: key, exchangeKey: exchangeKey, handle: handle, role: role, status: .active, created: at, updated: at)

        case .revokeUser(let key):
            guard isAdmin else { throw .unauthorized("only an admin may revoke users") }
            guard var user = users[key] else { throw .notFound("user \(key)") }
            guard user.status == .active else { throw .conflict("\(key) is already revoked") }
            user.status = .revoked
            user.updated = at
            users[key] = user

        case .createRoom(let id, let subject, let policy):
            guard !policy.persist else { throw .unsupported("durable history (persist) comes with a later release; create the room without it") }
            guard Self.isValidRoomID(id) else { throw .invalid("room ids are 1 to 64 of [A-Za-z0-9_-]") }
            guard Self.isValidLiteralSubject(subject) else { throw .invalid("\(subject) is not a valid literal subject") }
            guard rooms[id] == nil else { throw .conflict("room \(id) exists") }
            guard !rooms.values.contains(where: { $0.subject == subject && $0.archived == nil }) else {
                throw .conflict("subject \(subject) belongs to another room")
            }
            guard policy.rotateAfterMessages > 0, policy.rotateAfterSeconds > 0 else { throw .invalid("rotation limits must be positive") }
            guard policy.frameWindowSeconds > 0 else { throw .invalid("the frame window must be positive") }
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
        }
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

    static func isValidRoomID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64 && id.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95
        }
    }

    static func isValidLiteralSubject(_ subject: String) -> Bool {
        guard !subject.isEmpty, subject.utf8.count <= 256 else { return false }
        return subject.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { token in
            !token.isEmpty && token != "*" && token != ">" && !token.contains(where: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" })
        }
    }
}
