import Foundation
import UnibusCrypto
import UnibusMembership
import UnibusSQLite

/// The client's own copy of the membership log: every operation verified
/// (signature, predecessors, rules) by the client and folded with the same
/// code nodes run, starting from the root admin the client pinned. Member
/// lists, exchange keys and policies come from here, never from a node's word.
///
/// Kept in SQLite (0600, in a 0700 directory) when the client has a state
/// directory, so a restart does not fetch the whole log again; operations are
/// verified again when loaded (a file is input too). A store that no longer
/// verifies is discarded and fetched anew from the nodes, which are checked
/// the same way.
final class VerifiedLogStore {
    private(set) var log: MembershipLog
    private var database: SQLiteDatabase?
    let root: String
    /// Set when a stored log was unusable and was started again (for a warning).
    private(set) var discarded: String?

    init(directory: String?, root: String) throws(ClientError) {
        self.root = root
        log = MembershipLog(pinnedRoot: root)
        guard let directory else { return }
        do {
            try DataDirectory.prepare(directory)
            let path = directory + "/verified-log-\(root.prefix(20)).sqlite3"
            let database = try SQLiteDatabase(path: path)
            try database.execute("""
                CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, bytes BLOB NOT NULL, signature BLOB NOT NULL);
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                """)
            if let stored = try database.query("SELECT value FROM meta WHERE key = 'root'").first?.first?.text, stored != root {
                throw ClientError.localStore("\(path) was pinned to root admin \(stored), not \(root)")
            }
            try database.query("INSERT OR REPLACE INTO meta (key, value) VALUES ('root', ?)", [.text(root)])
            self.database = database
            do {
                for row in try database.query("SELECT bytes, signature FROM log ORDER BY seq") {
                    guard let bytes = row[0].blob, let signature = row[1].blob else { throw MembershipError.storage("unreadable row") }
                    let operation = try SignedOperation(bytes: bytes, signature: signature)
                    if case .waiting = try log.insert(operation) { throw MembershipError.storage("stored before its predecessors") }
                }
            } catch {
                discarded = "the local copy of the membership log in \(path) did not verify (\(error)); fetching it again"
                log = MembershipLog(pinnedRoot: root)
                try database.execute("DELETE FROM log")
            }
        } catch let error as ClientError {
            throw error
        } catch {
            throw .localStore("\(error)")
        }
    }

    /// Inserts a verified operation and keeps it (all of it replaced when a
    /// checkpoint is adopted).
    func insert(_ operation: SignedOperation) throws(MembershipError) -> MembershipLog.InsertOutcome {
        var next = log
        let outcome = try next.insert(operation)
        if let database {
            do {
                switch outcome {
                case .inserted:
                    try database.query("INSERT OR IGNORE INTO log (id, bytes, signature) VALUES (?, ?, ?)",
                                       [.text(operation.id), .blob(operation.bytes), .blob(operation.signature)])
                case .adopted:
                    try database.transaction {
                        try database.execute("DELETE FROM log")
                        try database.query("INSERT INTO log (id, bytes, signature) VALUES (?, ?, ?)",
                                           [.text(operation.id), .blob(operation.bytes), .blob(operation.signature)])
                    }
                case .known, .waiting:
                    break
                }
            } catch {
                throw .storage("the local store: \(error)")
            }
        }
        log = next
        return outcome
    }
}
