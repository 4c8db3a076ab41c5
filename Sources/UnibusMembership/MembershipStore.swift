import Foundation

/// The membership log and its fold, persisted in SQLite under a node's data
/// directory. The `operations` table is the truth; `users`, `rooms` and
/// `members` are the fold, written in the same transaction as the operation
/// that changed them (so a kill -9 leaves both or neither), and rebuilt from
/// the log if they ever disagree with it.
public final class MembershipStore: @unchecked Sendable {
    // @unchecked: every access to `database` and `state` holds `lock`.
    public static let fileName = "membership.sqlite3"
    static let schemaVersion = 2

    private let lock = NSLock()
    private let database: SQLiteDatabase
    private var state = MembershipState()

    /// Opens or creates the store in `directory` (created 0700 if missing),
    /// migrates the schema, and replays the log, verifying every signature.
    /// A log that does not replay is an error naming the operation.
    public init(directory: String) throws(MembershipError) {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            database = try SQLiteDatabase(path: directory + "/" + Self.fileName)
            try Self.migrate(database)
        } catch let error as MembershipError {
            throw error
        } catch {
            throw .storage("\(error)")
        }
        try replay()
    }

    private static func migrate(_ database: SQLiteDatabase) throws {
        let version = try database.userVersion
        if version > schemaVersion {
            throw MembershipError.storage("the database has schema \(version); this unibusd knows up to \(schemaVersion). Upgrade unibusd")
        }
        if version < 1 {
            try database.transaction {
                try database.execute("""
                CREATE TABLE operations (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                    actor TEXT NOT NULL, ts TEXT NOT NULL, bytes BLOB NOT NULL, signature BLOB NOT NULL);
                CREATE TABLE users (key TEXT PRIMARY KEY, exchange_key TEXT NOT NULL, handle TEXT NOT NULL,
                    role TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
                CREATE TABLE rooms (id TEXT PRIMARY KEY, subject TEXT NOT NULL, owner TEXT NOT NULL, policy TEXT NOT NULL,
                    created TEXT NOT NULL, archived TEXT);
                CREATE TABLE members (room TEXT NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL, joined TEXT NOT NULL,
                    PRIMARY KEY (room, user));
                PRAGMA user_version = 1;
                """)
            }
        }
        if version < 2 {
            try database.transaction {
                try database.execute("""
                CREATE TABLE key_shares (id TEXT PRIMARY KEY, room TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
                    session_id TEXT NOT NULL, sealed BLOB NOT NULL, signature BLOB NOT NULL, created TEXT NOT NULL, acked TEXT);
                CREATE INDEX key_shares_pending ON key_shares (recipient, acked);
                PRAGMA user_version = 2;
                """)
            }
        }
    }

    /// Runs `body` with the database under the store's lock.
    func withDatabase<T>(_ body: (SQLiteDatabase) throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(database)
    }

    private func replay() throws(MembershipError) {
        do {
            var fresh = MembershipState()
            for row in try database.query("SELECT seq, bytes, signature FROM operations ORDER BY seq") {
                guard let seq = row[0].integer, let bytes = row[1].blob, let signature = row[2].blob else {
                    throw MembershipError.storage("operations table has an unreadable row")
                }
                do {
                    try fresh.apply(try SignedOperation(bytes: bytes, signature: signature))
                } catch {
                    throw MembershipError.storage("operation \(seq) in the log does not replay (\(error)); the database is damaged")
                }
            }
            state = fresh
            if try materializedState() != fresh {
                try database.transaction { try rewriteTables(from: fresh) }
            }
        } catch let error as MembershipError {
            throw error
        } catch {
            throw .storage("\(error)")
        }
    }

    /// The current fold.
    public var snapshot: MembershipState {
        lock.lock()
        defer { lock.unlock() }
        return state
    }

    public var operationCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return (try? database.query("SELECT count(*) FROM operations").first?.first?.integer).flatMap { $0.map(Int.init) } ?? 0
    }

    /// Verifies, checks against the rules and appends; durable when it returns.
    @discardableResult
    public func append(_ signed: SignedOperation) throws(MembershipError) -> MembershipState {
        lock.lock()
        defer { lock.unlock() }
        var next = state
        try next.apply(signed)
        do {
            try database.transaction {
                try database.query("INSERT INTO operations (id, kind, actor, ts, bytes, signature) VALUES (?, ?, ?, ?, ?, ?)",
                                   [.text(signed.id), .text(signed.envelope.operation.kind), .text(signed.envelope.actor),
                                    .text(signed.envelope.timestamp), .blob(signed.bytes), .blob(signed.signature)])
                try materialize(signed.envelope.operation, in: next)
            }
        } catch {
            throw .storage("\(error)")
        }
        state = next
        return next
    }

    /// Every operation in log order.
    public func operations() throws(MembershipError) -> [SignedOperation] {
        lock.lock()
        defer { lock.unlock() }
        do {
            return try database.query("SELECT bytes, signature FROM operations ORDER BY seq").map { row in
                try SignedOperation(bytes: row[0].blob ?? [], signature: row[1].blob ?? [])
            }
        } catch let error as MembershipError {
            throw error
        } catch {
            throw .storage("\(error)")
        }
    }

    // MARK: tables

    private func materialize(_ operation: MembershipOperation, in state: MembershipState) throws {
        switch operation {
        case .addUser(let key, _, _, _), .revokeUser(let key):
            if let user = state.users[key] { try upsert(user) }
        case .createRoom(let id, _, _), .archiveRoom(let id):
            if let room = state.rooms[id] { try upsert(room) }
            for member in state.members[id]?.values ?? [:].values { try upsert(member) }
        case .addMember(let room, let user, _), .setMemberRole(let room, let user, _):
            if let member = state.members[room]?[user] { try upsert(member) }
        case .removeMember(let room, let user):
            try database.query("DELETE FROM members WHERE room = ? AND user = ?", [.text(room), .text(user)])
        }
    }

    private func upsert(_ user: User) throws {
        try database.query("INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [.text(user.key), .text(user.exchangeKey), .text(user.handle), .text(user.role.rawValue),
                            .text(user.status.rawValue), .text(user.created), .text(user.updated)])
    }

    private func upsert(_ room: Room) throws {
        let policy = String(decoding: try JSONEncoder().encode(room.policy), as: UTF8.self)
        try database.query("INSERT OR REPLACE INTO rooms VALUES (?, ?, ?, ?, ?, ?)",
                           [.text(room.id), .text(room.subject), .text(room.owner), .text(policy), .text(room.created),
                            room.archived.map { .text($0) } ?? .null])
    }

    private func upsert(_ member: Member) throws {
        try database.query("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)",
                           [.text(member.room), .text(member.user), .text(member.role.rawValue), .text(member.joined)])
    }

    private func rewriteTables(from state: MembershipState) throws {
        try database.execute("DELETE FROM users; DELETE FROM rooms; DELETE FROM members;")
        for user in state.users.values { try upsert(user) }
        for room in state.rooms.values { try upsert(room) }
        for roomMembers in state.members.values { for member in roomMembers.values { try upsert(member) } }
    }

    /// The fold as the tables hold it (for the consistency check and tests).
    func materializedState() throws -> MembershipState {
        var users: [String: User] = [:]
        for row in try database.query("SELECT key, exchange_key, handle, role, status, created, updated FROM users") {
            guard let key = row[0].text, let role = row[3].text.flatMap(UserRole.init), let status = row[4].text.flatMap(UserStatus.init) else { continue }
            users[key] = User(key: key, exchangeKey: row[1].text ?? "", handle: row[2].text ?? "", role: role, status: status,
                              created: row[5].text ?? "", updated: row[6].text ?? "")
        }
        var rooms: [String: Room] = [:]
        for row in try database.query("SELECT id, subject, owner, policy, created, archived FROM rooms") {
            guard let id = row[0].text, let policyText = row[3].text,
                  let policy = try? JSONDecoder().decode(RoomPolicy.self, from: Data(policyText.utf8)) else { continue }
            rooms[id] = Room(id: id, subject: row[1].text ?? "", owner: row[2].text ?? "", policy: policy,
                             created: row[4].text ?? "", archived: row[5].text)
        }
        var members: [String: [String: Member]] = [:]
        for row in try database.query("SELECT room, user, role, joined FROM members") {
            guard let room = row[0].text, let user = row[1].text, let role = row[2].text.flatMap(RoomRole.init) else { continue }
            members[room, default: [:]][user] = Member(room: room, user: user, role: role, joined: row[3].text ?? "")
        }
        return MembershipState(users: users, rooms: rooms, members: members)
    }
}

extension MembershipState {
    init(users: [String: User], rooms: [String: Room], members: [String: [String: Member]]) {
        self.init()
        self.restore(users: users, rooms: rooms, members: members)
    }
}
