import Foundation
import UnibusCrypto

/// Where an operation sits in the log's one order, the same on every node:
/// the hybrid logical clock reading the accepting node gave it, then that
/// node's id, then the operation's id. A node's clock never runs behind any
/// operation it has seen, so an operation accepted after another (on any
/// node that had received it) always sorts after it.
public struct LogPosition: Comparable, Hashable, Sendable {
    /// Milliseconds since the epoch << 16, plus a counter.
    public var clock: UInt64
    /// The server nkey of the node that accepted it ("" for offline bootstrap).
    public var origin: String
    public var id: String

    public init(clock: UInt64, origin: String, id: String) {
        self.clock = clock
        self.origin = origin
        self.id = id
    }

    /// An origin is "" (offline bootstrap) or a server nkey: nothing else is
    /// stored, so no node ever relays a position its peers cannot parse.
    public static func isValidOrigin(_ origin: String) -> Bool {
        origin.isEmpty || (origin.utf8.count <= 64 && (try? NKey.decodePublicKey(origin, expecting: .server)) != nil)
    }

    public static func < (a: LogPosition, b: LogPosition) -> Bool {
        if a.clock != b.clock { return a.clock < b.clock }
        if a.origin != b.origin { return a.origin < b.origin }
        return a.id < b.id
    }
}

/// One operation of the log with its position.
public struct LogEntry: Sendable {
    public let operation: SignedOperation
    public var position: LogPosition
}

/// What merging a replicated operation did.
public enum MergeOutcome: Sendable, Equatable {
    /// Already held at the same or an earlier position: nothing changed.
    case known
    /// Stored; the fold changed (or, when `refused` is set, this operation
    /// is refused by the rules at its place in the order and changes nothing,
    /// on every node alike).
    case stored(refused: MembershipError?)
}

/// The membership log and its fold, persisted in SQLite under a node's data
/// directory. The `operations` table is the truth: a set of signed
/// operations, each with its log position; `users`, `rooms` and `members`
/// are the fold of the set in position order, written in the same
/// transaction as the operation that changed them (so a kill -9 leaves both
/// or neither), and rebuilt from the log if they ever disagree with it.
///
/// Operations accepted here (`append`) get a position after everything this
/// node has seen and must pass the rules there. Operations from other nodes
/// (`merge`) keep the position their node gave them; if concurrent
/// operations conflict, the one that sorts first wins and the other is
/// refused at its place, identically on every node.
public final class MembershipStore: @unchecked Sendable {
    // @unchecked: every access to `database` and the fields below holds `lock`.
    public static let fileName = "membership.sqlite3"
    static let schemaVersion = 3

    private let lock = NSLock()
    private let database: SQLiteDatabase
    /// An exclusive lock on `DIR/lock`, held for the store's lifetime: two
    /// processes (a running node and `unibusd init`, or two nodes) never
    /// write one data directory. Stores of one process share it.
    private let directoryLock: DirectoryLock
    private var state = MembershipState()
    private var entries: [LogEntry] = []
    private var positions: [String: LogPosition] = [:]
    private var refused: [String: MembershipError] = [:]
    private var clock: UInt64 = 0
    private var root: String?
    private var cachedLogDigest: String?

    /// Opens or creates the store in `directory` (created 0700 if missing),
    /// migrates the schema, and replays the log, verifying every signature.
    /// A log with an operation that does not verify is an error naming it.
    public init(directory: String) throws(MembershipError) {
        try Self.prepareDirectory(directory)
        directoryLock = try Self.lockDirectory(directory)
        do {
            database = try SQLiteDatabase(path: directory + "/" + Self.fileName)
            try Self.migrate(database)
        } catch let error as MembershipError {
            directoryLock.release()
            throw error
        } catch {
            directoryLock.release()
            throw .storage("\(error)")
        }
        do { try replay() } catch {
            directoryLock.release()
            throw error
        }
    }

    deinit { directoryLock.release() }

    /// Takes the data directory's lock or says who holds it.
    static func lockDirectory(_ directory: String) throws(MembershipError) -> DirectoryLock {
        try DirectoryLock.acquire(directory)
    }

    /// Whether `directory` holds a store (without creating anything).
    public static func exists(in directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/" + fileName)
    }

    /// Creates the data directory 0700, or checks an existing one: a
    /// directory that group or others can reach is refused with the command
    /// that fixes it (the store and key files inside are the node's secrets).
    static func prepareDirectory(_ directory: String) throws(MembershipError) {
        var info = stat()
        if lstat(directory, &info) != 0 {
            guard errno == ENOENT else { throw .storage("cannot use the data directory \(directory): \(String(cString: strerror(errno)))") }
            // The parent, by hand: NSString.deletingLastPathComponent traps on
            // some short relative paths (a one-letter "d" killed `unibusd init`).
            let parent = directory.lastIndex(of: "/").map { String(directory[..<$0]) } ?? ""
            if !parent.isEmpty {
                try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            }
            guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
                throw .storage("cannot create the data directory \(directory): \(String(cString: strerror(errno)))")
            }
            guard lstat(directory, &info) == 0 else { throw .storage("cannot use the data directory \(directory)") }
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw .storage("\(directory) is not a directory (symbolic links are not followed); give the data directory itself")
        }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw .storage("the data directory \(directory) is accessible to others (mode \(String(mode, radix: 8))); run `chmod 700 \(directory)`")
        }
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
        if version < 3 {
            // Log positions (replication) and the pinned root admin. Existing
            // operations keep their order: positions follow their sequence.
            try database.transaction {
                try database.execute("""
                ALTER TABLE operations ADD COLUMN clock INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE operations ADD COLUMN origin TEXT NOT NULL DEFAULT '';
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                """)
                var last: UInt64 = 0
                let rows = try database.query("SELECT seq, ts, actor FROM operations ORDER BY seq")
                for row in rows {
                    guard let seq = row[0].integer else { continue }
                    let millis = Self.millis(row[1].text ?? "") ?? 0
                    last = max(millis << 16, last + 1)
                    try database.query("UPDATE operations SET clock = ? WHERE seq = ?", [.integer(Int64(bitPattern: last)), .integer(seq)])
                }
                // The genesis operation's actor is the root admin.
                if let actor = rows.first?[2].text {
                    try database.query("INSERT INTO meta (key, value) VALUES ('root', ?)", [.text(actor)])
                }
                try database.execute("PRAGMA user_version = 3;")
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
            root = try database.query("SELECT value FROM meta WHERE key = 'root'").first?.first?.text
            var loaded: [LogEntry] = []
            for row in try database.query("SELECT seq, bytes, signature, clock, origin FROM operations ORDER BY seq") {
                guard let seq = row[0].integer, let bytes = row[1].blob, let signature = row[2].blob,
                      let clock = row[3].integer, let origin = row[4].text else {
                    throw MembershipError.storage("operations table has an unreadable row")
                }
                let operation: SignedOperation
                do {
                    operation = try SignedOperation(bytes: bytes, signature: signature)
                } catch {
                    throw MembershipError.storage("operation \(seq) in the log does not replay (\(error)); the database is damaged")
                }
                loaded.append(LogEntry(operation: operation, position: LogPosition(clock: UInt64(bitPattern: clock), origin: origin, id: operation.id)))
            }
            entries = loaded.sorted { $0.position < $1.position }
            positions = Dictionary(uniqueKeysWithValues: entries.map { ($0.operation.id, $0.position) })
            clock = entries.last?.position.clock ?? 0
            (state, refused) = MembershipState.fold(entries.lazy.map(\.operation), root: root)
            if root == nil, let learned = state.root { try setRootLocked(learned) }
            if try materializedState() != state {
                try database.transaction { try rewriteTables(from: state) }
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
        return entries.count
    }

    /// The root admin this log trusts, if known.
    public var rootAdmin: String? {
        lock.lock()
        defer { lock.unlock() }
        return root
    }

    /// Pins the root admin of an empty store (a node that will receive its
    /// log from peers). Refused when another root is already pinned.
    public func pinRoot(_ key: String) throws(MembershipError) {
        lock.lock()
        defer { lock.unlock() }
        guard (try? NKey.decodePublicKey(key, expecting: .user)) != nil else { throw .invalid("\(key.prefix(60)) is not a user nkey") }
        if let root {
            guard root == key else { throw .conflict("this store's root admin is \(root), not \(key)") }
            return
        }
        do { try setRootLocked(key) } catch { throw .storage("\(error)") }
        state = MembershipState.fold(entries.lazy.map(\.operation), root: key).0
    }

    private func setRootLocked(_ key: String) throws {
        try database.query("INSERT OR REPLACE INTO meta (key, value) VALUES ('root', ?)", [.text(key)])
        root = key
    }

    /// Operations the rules refuse at their place in the order, by id.
    public var refusedOperations: [String: MembershipError] {
        lock.lock()
        defer { lock.unlock() }
        return refused
    }

    /// SHA-256 (hex) over the log's positions in order: two nodes hold the
    /// same log exactly when their digests match.
    public var logDigest: String {
        lock.lock()
        defer { lock.unlock() }
        if let cachedLogDigest { return cachedLogDigest }
        var text = ""
        for entry in entries { text += "\(entry.position.clock) \(entry.position.origin) \(entry.position.id)\n" }
        let digest = Hex.encode(Digest.sha256(Array(text.utf8)))
        cachedLogDigest = digest
        return digest
    }

    /// A clock reading after everything this store has seen (saturating:
    /// a log that already holds a position at the top of the range keeps
    /// working, ties being broken by origin and id).
    private func tick() -> UInt64 {
        let now = Self.clockReading(at: Date())
        let (next, overflow) = clock.addingReportingOverflow(1)
        clock = max(now, overflow ? clock : next)
        return clock
    }

    /// A hybrid-logical-clock reading for `date`: milliseconds << 16.
    static func clockReading(at date: Date) -> UInt64 {
        let millis = date.timeIntervalSince1970 * 1000
        guard millis > 0, millis < Double(UInt64(1) << 47) else { return millis > 0 ? UInt64(1) << 63 : 0 }
        return UInt64(millis) << 16
    }

    /// How far ahead of this node's clock a peer may place an operation.
    /// A position beyond it is refused and never stored: stored, it would
    /// push every node's clock to the end of its range.
    public static let maximumClockLead: TimeInterval = 300

    /// Replicated operations refused because their position lay too far ahead.
    public var refusedFuturePositions: Int {
        lock.lock()
        defer { lock.unlock() }
        return futurePositionsRefused
    }
    private var futurePositionsRefused = 0

    /// Verifies, checks against the rules at the end of the log and appends
    /// (an operation accepted by this node, `origin` being its id); durable
    /// when it returns.
    @discardableResult
    public func append(_ signed: SignedOperation, origin: String = "") throws(MembershipError) -> MembershipState {
        lock.lock()
        defer { lock.unlock() }
        guard positions[signed.id] == nil else { throw .conflict("operation \(signed.id) is already in the log") }
        var next = state
        try next.apply(signed)
        let position = LogPosition(clock: tick(), origin: origin, id: signed.id)
        do {
            try database.transaction {
                try insert(signed, at: position)
                if root == nil, let learned = next.root { try setRootLocked(learned) }
                try materialize(signed.envelope.operation, in: next)
            }
        } catch {
            throw .storage("\(error)")
        }
        entries.append(LogEntry(operation: signed, position: position))
        positions[signed.id] = position
        cachedLogDigest = nil
        state = next
        return next
    }

    /// Stores an operation another node accepted, at the position it gave
    /// it, and refolds if it sorts before operations already held. Stored
    /// even when the rules refuse it at its place (every node must hold the
    /// same log to fold the same state). An operation held at a later
    /// position moves to the earlier one (the same signed operation accepted
    /// twice, on two nodes).
    public func merge(_ signed: SignedOperation, at position: LogPosition) throws(MembershipError) -> MergeOutcome {
        lock.lock()
        defer { lock.unlock() }
        guard position.id == signed.id else { throw .invalid("a log position for another operation") }
        guard LogPosition.isValidOrigin(position.origin) else { throw .invalid("a log position's origin must be a node id") }
        let horizon = Self.clockReading(at: Date().addingTimeInterval(Self.maximumClockLead))
        guard position.clock <= horizon else {
            futurePositionsRefused += 1
            throw .invalid("log position \(position.clock >> 16) ms is more than \(Int(Self.maximumClockLead)) s ahead of this node's clock; not stored")
        }
        clock = max(clock, position.clock)
        let existing = positions[signed.id]
        if let existing, existing <= position { return .known }
        // Work out the new log and fold first; commit them only with the database.
        var nextEntries = entries
        var nextState = state
        var nextRefused = refused
        var incremental = false
        if existing == nil, let last = entries.last?.position, last < position {
            // The common case: it sorts last, so it folds on top.
            do { try nextState.apply(signed) } catch { nextRefused[signed.id] = error }
            nextEntries.append(LogEntry(operation: signed, position: position))
            incremental = true
        } else {
            nextEntries.removeAll { $0.operation.id == signed.id }
            let at = nextEntries.firstIndex { position < $0.position } ?? nextEntries.endIndex
            nextEntries.insert(LogEntry(operation: signed, position: position), at: at)
            (nextState, nextRefused) = MembershipState.fold(nextEntries.lazy.map(\.operation), root: root)
        }
        do {
            try database.transaction {
                if existing != nil {
                    try database.query("UPDATE operations SET clock = ?, origin = ? WHERE id = ?",
                                       [.integer(Int64(bitPattern: position.clock)), .text(position.origin), .text(signed.id)])
                } else {
                    try insert(signed, at: position)
                }
                if incremental {
                    if nextRefused[signed.id] == nil { try materialize(signed.envelope.operation, in: nextState) }
                } else {
                    try rewriteTables(from: nextState)
                }
                if root == nil, let learned = nextState.root { try setRootLocked(learned) }
            }
        } catch {
            throw .storage("\(error)")
        }
        entries = nextEntries
        state = nextState
        refused = nextRefused
        positions[signed.id] = position
        cachedLogDigest = nil
        return .stored(refused: refused[signed.id])
    }

    private func insert(_ signed: SignedOperation, at position: LogPosition) throws {
        try database.query("INSERT INTO operations (id, kind, actor, ts, bytes, signature, clock, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [.text(signed.id), .text(signed.envelope.operation.kind), .text(signed.envelope.actor),
                            .text(signed.envelope.timestamp), .blob(signed.bytes), .blob(signed.signature),
                            .integer(Int64(bitPattern: position.clock)), .text(position.origin)])
    }

    /// Every operation in log order.
    public func operations() throws(MembershipError) -> [SignedOperation] {
        lock.lock()
        defer { lock.unlock() }
        return entries.map(\.operation)
    }

    /// Every operation with its position, in log order (for replication).
    public func logEntries() -> [LogEntry] {
        lock.lock()
        defer { lock.unlock() }
        return entries
    }

    /// The position of an operation held, if any.
    public func position(of id: String) -> LogPosition? {
        lock.lock()
        defer { lock.unlock() }
        return positions[id]
    }

    /// Milliseconds since the epoch of an RFC 3339 UTC timestamp as
    /// operations carry them ("2026-11-23T10:00:00.123Z"), or nil.
    static func millis(_ text: String) -> UInt64? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return UInt64(max(0, date.timeIntervalSince1970 * 1000)) }
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: text) { return UInt64(max(0, date.timeIntervalSince1970 * 1000)) }
        return nil
    }

    // MARK: tables

    private func materialize(_ operation: MembershipOperation, in state: MembershipState) throws {
        switch operation {
        case .addUser(let key, _, _, _):
            if let user = state.users[key] { try upsert(user) }
        case .revokeUser(let key):
            if let user = state.users[key] { try upsert(user) }
            try database.query("DELETE FROM members WHERE user = ?", [.text(key)])
        case .createRoom(let id, _, _), .archiveRoom(let id):
            if let room = state.rooms[id] { try upsert(room) }
            for member in state.members[id]?.values ?? [:].values { try upsert(member) }
        case .addMember(let room, let user, _), .setMemberRole(let room, let user, _):
            if let member = state.members[room]?[user] { try upsert(member) }
        case .removeMember(let room, let user):
            try database.query("DELETE FROM members WHERE room = ? AND user = ?", [.text(room), .text(user)])
        case .setClusterSettings:
            break   // settings live in the fold only (the log is the truth)
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
        return MembershipState(users: users, rooms: rooms, members: members, root: state.root, settings: state.settings)
    }
}

extension MembershipState {
    init(users: [String: User], rooms: [String: Room], members: [String: [String: Member]], root: String?, settings: ClusterSettings) {
        self.init()
        self.restore(users: users, rooms: rooms, members: members, root: root, settings: settings)
    }
}

/// `flock` on `DIR/lock`, shared by every store of this process on the same
/// directory (tests reopen a store in-process) and exclusive between
/// processes. Released when the last holder releases it.
final class DirectoryLock: @unchecked Sendable {
    // @unchecked: `released` is guarded by `DirectoryLock.registryLock`.
    private static let registryLock = NSLock()
    nonisolated(unsafe) private static var held: [String: (fd: Int32, holders: Int)] = [:]
    private let key: String
    private var released = false

    private init(key: String) {
        self.key = key
    }

    static func acquire(_ directory: String) throws(MembershipError) -> DirectoryLock {
        let key = URL(fileURLWithPath: directory).standardizedFileURL.path
        registryLock.lock()
        defer { registryLock.unlock() }
        if let entry = held[key] {
            held[key] = (entry.fd, entry.holders + 1)
            return DirectoryLock(key: key)
        }
        let path = directory + "/lock"
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .storage("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno == EWOULDBLOCK ? "another unibusd (a running node, or init) is using \(directory); stop it first"
                : "cannot lock \(path): \(String(cString: strerror(errno)))"
            close(fd)
            throw .storage(reason)
        }
        held[key] = (fd, 1)
        return DirectoryLock(key: key)
    }

    func release() {
        Self.registryLock.lock()
        defer { Self.registryLock.unlock() }
        guard !released, let entry = Self.held[key] else { return }
        released = true
        if entry.holders <= 1 {
            close(entry.fd)
            Self.held[key] = nil
        } else {
            Self.held[key] = (entry.fd, entry.holders - 1)
        }
    }
}
