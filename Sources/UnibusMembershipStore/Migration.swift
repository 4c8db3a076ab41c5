import Foundation
import UnibusCrypto
import UnibusMembership
import UnibusSQLite

/// What `MembershipStore.migrate` did.
public struct MigrationReport: Sendable, Equatable {
    /// Legacy operations read (kept in the `legacy_operations` table).
    public var legacyOperations: Int
    /// Of those, refused by the rules at their place (as before).
    public var refused: Int
    /// The checkpoint that now starts the log.
    public var checkpointID: String
    /// The folded state's digest (the same before and after).
    public var stateDigest: String
}

extension MembershipStore {
    /// Migrates a data directory from before causal order (schema 3: log
    /// positions chosen by nodes, nobody's signature on the order) to a log
    /// that starts from a checkpoint signed by the root admin.
    ///
    /// The old operations are folded in their old order (the state users
    /// had), and `root` signs that state. The checkpoint is deterministic (its
    /// time is the last operation's, its nonce derived from the state), so
    /// nodes that held the same log sign the same checkpoint and agree at
    /// once. The old rows stay in `legacy_operations` for audit; nothing
    /// reads them again. The node must be stopped (the directory lock says so).
    public static func migrate(directory: String, root: Identity) throws(MembershipError) -> MigrationReport {
        let lock = try lockDirectory(directory)
        defer { lock.release() }
        let path = directory + "/" + fileName
        guard FileManager.default.fileExists(atPath: path) else { throw .notFound("no membership store in \(directory)") }
        do {
            let database = try SQLiteDatabase(path: path)
            let version = try database.userVersion
            guard version == 3 else {
                if version == schemaVersion { throw MembershipError.conflict("\(directory) is already migrated (schema \(version))") }
                throw MembershipError.unsupported("schema \(version) cannot be migrated by this unibusd (it migrates schema 3)")
            }
            let pinned = try database.query("SELECT value FROM meta WHERE key = 'root'").first?.first?.text
            guard let pinned else { throw MembershipError.notFound("the store has no root admin (an empty log needs no migration; delete it)") }
            guard pinned == root.userNKey else {
                throw MembershipError.unauthorized("this log's root admin is \(pinned); give its identity (--admin-identity), not \(root.userNKey)")
            }
            // The old order: (clock, origin, id), as nodes folded it.
            var legacy: [(clock: UInt64, origin: String, operation: SignedOperation)] = []
            for row in try database.query("SELECT bytes, signature, clock, origin FROM operations") {
                guard let bytes = row[0].blob, let signature = row[1].blob, let clock = row[2].integer, let origin = row[3].text else {
                    throw MembershipError.storage("the operations table has an unreadable row")
                }
                legacy.append((UInt64(bitPattern: clock), origin, try SignedOperation(bytes: bytes, signature: signature)))
            }
            legacy.sort { ($0.clock, $0.origin, $0.operation.id) < ($1.clock, $1.origin, $1.operation.id) }
            let (state, refused) = MembershipState.fold(legacy.map(\.operation), root: pinned)
            guard state.users[pinned]?.status == .active else {
                throw MembershipError.invalid("the root admin is not an active user of this log; it cannot be migrated")
            }
            let content = state.checkpointState(sequence: 1, rootChain: [])
            let digest = state.digest
            let envelope = OperationEnvelope(version: OperationEnvelope.currentVersion, actor: root.userNKey,
                                             timestamp: legacy.last?.operation.envelope.timestamp ?? OperationTime.now(),
                                             nonce: Base64.encode(Array(Digest.sha256(Array(digest.utf8)).prefix(12))),
                                             parents: [], operation: .checkpoint(content))
            let checkpoint = SignedOperation.signEnvelope(envelope, by: root)
            guard checkpoint.bytes.count <= SignedOperation.maximumCheckpointSize else {
                throw MembershipError.unsupported("the state is too large for one checkpoint (\(checkpoint.bytes.count) bytes)")
            }
            // The new log must open: check before touching the database.
            var log = MembershipLog(pinnedRoot: pinned)
            _ = try log.insert(checkpoint)
            guard log.state.digest == digest else { throw MembershipError.invalid("the checkpoint does not reproduce the state") }
            try database.transaction {
                try database.execute("""
                ALTER TABLE operations RENAME TO legacy_operations;
                DROP TABLE IF EXISTS users; DROP TABLE IF EXISTS rooms; DROP TABLE IF EXISTS members;
                ALTER TABLE key_shares ADD COLUMN session_signature BLOB NOT NULL DEFAULT x'';
                ALTER TABLE key_shares ADD COLUMN ack_signature BLOB;
                """)
                try database.execute(logSchema)
                try database.query("INSERT INTO log (id, kind, actor, ts, bytes, signature) VALUES (?, ?, ?, ?, ?, ?)",
                                   [.text(checkpoint.id), .text(checkpoint.envelope.operation.kind), .text(checkpoint.actor),
                                    .text(checkpoint.envelope.timestamp), .blob(checkpoint.bytes), .blob(checkpoint.signature)])
                try database.execute("PRAGMA user_version = \(schemaVersion);")
            }
            return MigrationReport(legacyOperations: legacy.count, refused: refused.count, checkpointID: checkpoint.id, stateDigest: digest)
        } catch let error as MembershipError {
            throw error
        } catch {
            throw .storage("\(error)")
        }
    }
}
