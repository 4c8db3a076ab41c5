import Foundation
import UnibusCrypto
import UnibusMembership
import UnibusSQLite

/// What merging a replicated operation did.
public enum MergeOutcome: Sendable, Equatable {
    /// Already held (or already waiting): nothing changed.
    case known
    /// Held now, with any waiting operations it completed (in the order they
    /// were inserted). `refused` is set when the rules refuse it at its place
    /// in the order (it then changes nothing, on every node alike).
    case stored(refused: MembershipError?, alsoStored: [SignedOperation])
    /// A checkpoint became the log's base.
    case adopted(replaced: Int)
    /// Kept aside until its predecessors arrive (bounded; see `maximumWaiting`).
    case waiting
}

/// The node's membership log and its fold, persisted in SQLite under the
/// data directory. The `log` table holds the signed operations in the order
/// they were inserted (always a valid causal order: an operation is stored
/// only after its predecessors); everything else (users, rooms, members,
/// the order the rules fold in) is `MembershipLog`, rebuilt from that table
/// when the store opens, so there is no second copy to disagree with it.
///
/// Operations accepted here (`append`) must pass the rules at their place
/// and, when they arrive through the control plane, be signed within the
/// operation window. Operations from other nodes (`merge`) are stored even
/// when the rules refuse them at their place (every node must hold the same
/// graph to fold the same state), or wait for missing predecessors.
public final class MembershipStore: @unchecked Sendable {
    // @unchecked: every access to `database` and the fields below holds `lock`.
    public static let fileName = "membership.sqlite3"
    static let schemaVersion = 4

    private let lock = NSLock()
    private let database: SQLiteDatabase
    /// An exclusive lock on `DIR/lock`, held for the store's lifetime: two
    /// processes (a running node and `unibusd init`, or two nodes) never
    /// write one data directory. Stores of one process share it.
    private let directoryLock: DirectoryLock
    private var log: MembershipLog
    /// Replicated operations whose predecessors have not arrived, by id.
    private var waiting: [String: (operation: SignedOperation, since: Date)] = [:]
    private var waitingBytes = 0
    /// Ids of operations refused at the control plane for a timestamp too
    /// far ahead, until they would have expired: such an operation cannot
    /// be submitted again later to succeed.
    private var refusedEarly: [String: UInt64] = [:]
    private var counted = Counters()

    /// Most operations (and bytes) kept waiting for predecessors, and for how long.
    public static let maximumWaiting = 10_000
    public static let maximumWaitingBytes = 16 * 1024 * 1024
    public static let waitingLifetime: TimeInterval = 600
    static let maximumRefusedEarly = 100_000

    /// Counts of what the store refused or dropped (for metrics).
    public struct Counters: Sendable, Equatable {
        /// Replicated operations refused outright (bad checkpoint, legacy, second start).
        public var replicatedRefused = 0
        /// Waiting operations dropped (their predecessors never came, or the pool was full).
        public var waitingDropped = 0
        /// Operations refused at arrival for their signed time.
        public var outsideWindow = 0
        /// Operations dropped when a checkpoint was adopted.
        public var replacedByCheckpoint = 0
    }

    /// Opens or creates the store in `directory` (created 0700 if missing)
    /// and replays the log, verifying every signature. A log with an
    /// operation that does not verify is an error naming it; a data
    /// directory from before causal order (schema 3) must be migrated first.
    public init(directory: String) throws(MembershipError) {
        try Self.prepareDirectory(directory)
        directoryLock = try Self.lockDirectory(directory)
        do {
            database = try SQLiteDatabase(path: directory + "/" + Self.fileName)
            try Self.createOrCheckSchema(database, directory: directory)
            log = try Self.replay(database)
        } catch let error as MembershipError {
            directoryLock.release()
            throw error
        } catch {
            directoryLock.release()
            throw .storage("\(error)")
        }
    }

    deinit { directoryLock.release() }

    /// Takes the data directory's lock or says who holds it.
    static func lockDirectory(_ directory: String) throws(MembershipError) -> DirectoryLock {
        do { return try DirectoryLock.acquire(directory) } catch { throw .storage(error.description) }
    }

    /// Whether `directory` holds a store (without creating anything).
    public static func exists(in directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/" + fileName)
    }

    /// Creates the data directory 0700, or checks an existing one (see `DataDirectory.prepare`).
    static func prepareDirectory(_ directory: String) throws(MembershipError) {
        do { try DataDirectory.prepare(directory) } catch { throw .storage(error.description) }
    }

    static let logSchema = """
        CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
            actor TEXT NOT NULL, ts TEXT NOT NULL, bytes BLOB NOT NULL, signature BLOB NOT NULL);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS key_shares (id TEXT PRIMARY KEY, room TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
            session_id TEXT NOT NULL, sealed BLOB NOT NULL, signature BLOB NOT NULL, created TEXT NOT NULL, acked TEXT,
            session_signature BLOB NOT NULL DEFAULT x'', ack_signature BLOB);
        CREATE INDEX IF NOT EXISTS key_shares_pending ON key_shares (recipient, acked);
        """

    private static func createOrCheckSchema(_ database: SQLiteDatabase, directory: String) throws {
        let version = try database.userVersion
        if version > schemaVersion {
            throw MembershipError.storage("the database has schema \(version); this unibusd knows up to \(schemaVersion). Upgrade unibusd")
        }
        if version == 0 {
            try database.transaction {
                try database.execute(logSchema + "\nPRAGMA user_version = \(schemaVersion);")
            }
        } else if version < schemaVersion {
            throw MembershipError.storage("the membership log in \(directory) is from before causal order (schema \(version)); "
                                          + "stop the node and run `unibusd migrate --data-dir \(directory) --admin-identity ROOT.json` "
                                          + "(see docs/cluster.md, \"Migrating a data directory\")")
        }
    }

    private static func replay(_ database: SQLiteDatabase) throws -> MembershipLog {
        let root = try database.query("SELECT value FROM meta WHERE key = 'root'").first?.first?.text
        var log = MembershipLog(pinnedRoot: root)
        for row in try database.query("SELECT seq, bytes, signature FROM log ORDER BY seq") {
            guard let seq = row[0].integer, let bytes = row[1].blob, let signature = row[2].blob else {
                throw MembershipError.storage("the log table has an unreadable row")
            }
            do {
                let operation = try SignedOperation(bytes: bytes, signature: signature)
                switch try log.insert(operation) {
                case .waiting: throw MembershipError.invalid("stored before its predecessors")
                default: break
                }
            } catch {
                throw MembershipError.storage("operation \(seq) in the log does not replay (\(error)); the database is damaged")
            }
        }
        if root == nil, let learned = log.pinnedRoot {
            try database.query("INSERT OR REPLACE INTO meta (key, value) VALUES ('root', ?)", [.text(learned)])
        }
        return log
    }

    /// Runs `body` with the database under the store's lock.
    func withDatabase<T>(_ body: (SQLiteDatabase) throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(database)
    }

    private func locked<T>(_ body: () throws(MembershipError) -> T) throws(MembershipError) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    // MARK: reading

    /// The current fold.
    public var snapshot: MembershipState { lock.withLock { log.state } }
    /// The log itself (a value: a consistent copy).
    public var membershipLog: MembershipLog { lock.withLock { log } }
    public var operationCount: Int { lock.withLock { log.count } }
    /// The root admin this log was started by (and is pinned to), if known.
    public var rootAdmin: String? { lock.withLock { log.pinnedRoot } }
    /// The root admin now (after any hand-overs).
    public var currentRoot: String? { lock.withLock { log.state.root } }
    /// Operations the rules refuse at their place in the order, by id.
    public var refusedOperations: [String: MembershipError] { lock.withLock { log.refused } }
    /// Base and heads digest: two nodes hold the same log exactly when these match.
    public var logDigest: String { lock.withLock { log.digest } }
    public var heads: [String] { lock.withLock { log.heads } }
    public var counters: Counters { lock.withLock { counted } }
    public var waitingCount: Int { lock.withLock { waiting.count } }

    /// Every held operation in fold order (the base checkpoint first).
    public func operations() -> [SignedOperation] { lock.withLock { log.orderedOperations } }

    /// Signs `operation` as `identity`, naming this store's current heads.
    public func signed(_ operation: MembershipOperation, by identity: Identity, at date: Date = Date()) -> SignedOperation {
        SignedOperation.sign(operation, by: identity, parents: heads, at: date)
    }

    /// Pins the root admin of an empty store (a node that will receive its
    /// log from peers). Refused when another root is already pinned.
    public func pinRoot(_ key: String) throws(MembershipError) {
        guard (try? NKey.decodePublicKey(key, expecting: .user)) != nil else { throw .invalid("\(key.prefix(60)) is not a user nkey") }
        try locked { () throws(MembershipError) in
            if let root = log.pinnedRoot {
                guard root == key else { throw .conflict("this store's root admin is \(root), not \(key)") }
                return
            }
            do {
                try database.query("INSERT OR REPLACE INTO meta (key, value) VALUES ('root', ?)", [.text(key)])
            } catch {
                throw .storage("\(error)")
            }
            var fresh = MembershipLog(pinnedRoot: key)
            for operation in log.orderedOperations { _ = try? fresh.insert(operation) }
            log = fresh
        }
    }

    // MARK: writing

    /// Checks and stores an operation accepted by this node: its
    /// predecessors must be held, it must pass the rules at its place, and
    /// (when `arrival` is given: the control plane) its signed time must be
    /// within `OperationWindow` of the node's clock. Durable when it returns;
    /// on error nothing changed. Returns the new fold.
    @discardableResult
    public func append(_ signed: SignedOperation, arrival: Date? = nil) throws(MembershipError) -> MembershipState {
        try locked { () throws(MembershipError) -> MembershipState in
            if log.contains(signed.id) { throw .conflict("operation \(signed.id) is already in the log") }
            if let arrival { try checkWindow(signed, at: arrival) }
            var next = log
            let outcome = try next.insert(signed)
            switch outcome {
            case .waiting(let missing):
                throw .conflict("this node does not hold the operation's predecessor \(missing[0].prefix(16))… (it may come before "
                                + "the latest checkpoint, or not have arrived yet); fetch the log again and sign anew")
            case .inserted(let refused?):
                throw refused
            case .known:
                throw .conflict("operation \(signed.id) is already in the log")
            case .inserted(nil), .adopted:
                break
            }
            try persist(signed, outcome: outcome, before: log.state, after: next.state)
            log = next
            if case .adopted(let replaced) = outcome { counted.replacedByCheckpoint += max(0, replaced - 1) }
            return log.state
        }
    }

    private func checkWindow(_ signed: SignedOperation, at arrival: Date) throws(MembershipError) {
        let now = UInt64(max(0, arrival.timeIntervalSince1970 * 1000))
        if let until = refusedEarly[signed.id] {
            if until > now {
                counted.outsideWindow += 1
                throw .invalid("this operation was refused earlier for its time and cannot be submitted again; sign a new one")
            }
            refusedEarly[signed.id] = nil
        }
        switch OperationWindow.judge(signed, nowMillis: now) {
        case .inside:
            return
        case .unreadable:
            counted.outsideWindow += 1
            throw .invalid("the operation's timestamp is not an RFC 3339 UTC time of the form 2026-11-23T10:00:00.123Z (a real date, no offset)")
        case .expired(let age):
            counted.outsideWindow += 1
            throw .invalid("the operation was signed \(age) s ago; operations must arrive within \(OperationWindow.maximumAge / 1000) s "
                           + "of signing (check the signer's clock, then sign anew)")
        case .early(let lead):
            counted.outsideWindow += 1
            if refusedEarly.count >= Self.maximumRefusedEarly, let latest = refusedEarly.max(by: { $0.value < $1.value }) {
                refusedEarly[latest.key] = nil
            }
            let (until, overflow) = (signed.timestampMillis ?? now).addingReportingOverflow(OperationWindow.maximumAge)
            refusedEarly[signed.id] = overflow ? .max : until
            throw .invalid("the operation is dated \(lead) s ahead of this node's clock (at most \(OperationWindow.maximumLead / 1000) s); "
                           + "check the clocks, then sign anew")
        }
    }

    /// Stores an operation another node holds. Stored even when the rules
    /// refuse it at its place; kept aside (bounded) while predecessors are
    /// missing, and inserted with any operations waiting on it once they
    /// arrive. Throws for an operation no log may hold.
    public func merge(_ signed: SignedOperation, now: Date = Date()) throws(MembershipError) -> MergeOutcome {
        try locked { () throws(MembershipError) -> MergeOutcome in
            if log.contains(signed.id) || waiting[signed.id] != nil { return .known }
            var next = log
            let outcome: MembershipLog.InsertOutcome
            do throws(MembershipError) { outcome = try next.insert(signed) } catch {
                counted.replicatedRefused += 1
                throw error
            }
            switch outcome {
            case .known:
                return .known
            case .waiting:
                expireWaiting(now: now)
                guard waiting.count < Self.maximumWaiting, waitingBytes + signed.bytes.count <= Self.maximumWaitingBytes else {
                    counted.waitingDropped += 1
                    throw .conflict("too many operations are waiting for their predecessors; this one was dropped")
                }
                waiting[signed.id] = (signed, now)
                waitingBytes += signed.bytes.count
                return .waiting
            case .adopted(let replaced):
                try persist(signed, outcome: outcome, before: log.state, after: next.state)
                log = next
                counted.replacedByCheckpoint += max(0, replaced - 1)
                // Operations that arrived before their checkpoint may follow it now.
                let drained = drainWaiting(into: &next)
                if !drained.isEmpty {
                    try persist(drained, before: log.state, after: next.state)
                    log = next
                }
                return .adopted(replaced: replaced)
            case .inserted(let refused):
                let before = log.state
                let stored = [signed] + drainWaiting(into: &next)
                try persist(stored, before: before, after: next.state)
                log = next
                return .stored(refused: refused, alsoStored: Array(stored.dropFirst()))
            }
        }
    }

    /// Inserts the waiting operations whose predecessors `log` now holds
    /// (and those that waited for them), returning them in insertion order.
    private func drainWaiting(into log: inout MembershipLog) -> [SignedOperation] {
        var stored: [SignedOperation] = []
        var progress = true
        while progress, !waiting.isEmpty {
            progress = false
            for (id, item) in waiting.sorted(by: { $0.key < $1.key }) {
                guard item.operation.parents.allSatisfy({ log.contains($0) }) else { continue }
                waiting[id] = nil
                waitingBytes -= item.operation.bytes.count
                if case .inserted? = try? log.insert(item.operation) {
                    stored.append(item.operation)
                    progress = true
                }
            }
        }
        return stored
    }

    /// Drops waiting operations older than their lifetime.
    private func expireWaiting(now: Date) {
        for (id, item) in waiting where now.timeIntervalSince(item.since) > Self.waitingLifetime {
            waiting[id] = nil
            waitingBytes -= item.operation.bytes.count
            counted.waitingDropped += 1
        }
    }

    private func persist(_ signed: SignedOperation, outcome: MembershipLog.InsertOutcome, before: MembershipState,
                         after: MembershipState) throws(MembershipError) {
        if case .adopted = outcome {
            do {
                try database.transaction {
                    // Everything before the checkpoint is summarized by it.
                    try database.execute("DELETE FROM log")
                    try insertRow(signed)
                    if try database.query("SELECT value FROM meta WHERE key = 'root'").isEmpty, let root = after.root {
                        try database.query("INSERT INTO meta (key, value) VALUES ('root', ?)", [.text(root)])
                    }
                    try purgeShares(before: before, after: after)
                }
            } catch {
                throw .storage("\(error)")
            }
            return
        }
        try persist([signed], before: before, after: after)
    }

    private func persist(_ operations: [SignedOperation], before: MembershipState, after: MembershipState) throws(MembershipError) {
        do {
            try database.transaction {
                for operation in operations { try insertRow(operation) }
                if try database.query("SELECT value FROM meta WHERE key = 'root'").isEmpty, let root = after.root {
                    try database.query("INSERT INTO meta (key, value) VALUES ('root', ?)", [.text(root)])
                }
                try purgeShares(before: before, after: after)
            }
        } catch {
            throw .storage("\(error)")
        }
    }

    private func insertRow(_ signed: SignedOperation) throws {
        try database.query("INSERT INTO log (id, kind, actor, ts, bytes, signature) VALUES (?, ?, ?, ?, ?, ?)",
                           [.text(signed.id), .text(signed.envelope.operation.kind), .text(signed.actor),
                            .text(signed.envelope.timestamp), .blob(signed.bytes), .blob(signed.signature)])
    }

    /// No key share waits for someone who can no longer read the room: a
    /// revoked user's pending shares go, and a removed member's shares of
    /// that room, in the same transaction as the change.
    private func purgeShares(before: MembershipState, after: MembershipState) throws {
        for (key, user) in before.users where user.status == .active && after.users[key]?.status != .active {
            try database.query("DELETE FROM key_shares WHERE recipient = ? AND acked IS NULL", [.text(key)])
        }
        for (room, members) in before.members {
            for user in members.keys where after.members[room]?[user] == nil {
                try database.query("DELETE FROM key_shares WHERE room = ? AND recipient = ? AND acked IS NULL", [.text(room), .text(user)])
            }
        }
    }

    /// Operations not in the causal past of `known`, in fold order (for
    /// clients and peers that hold part of the log).
    public func operations(after known: [String], limit: Int, maxBytes: Int = .max) -> (operations: [SignedOperation], complete: Bool) {
        lock.withLock { log.operations(after: known, limit: limit, maxBytes: maxBytes) }
    }
}

