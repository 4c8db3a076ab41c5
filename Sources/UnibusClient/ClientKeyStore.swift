import Foundation
import UnibusCrypto
import UnibusPersistence
import UnibusSQLite

/// What a client keeps between runs besides its verified log: the inbound
/// Megolm sessions it was given (and its own), their replay windows, and the
/// resume cursor of each persisted room. In SQLite (0600, in the 0700 state
/// directory), every value sealed at rest (`StoreSealingKey`) and bound to
/// its row, so a restarted client reads live frames and history at once,
/// without waiting for any sender to share again.
///
/// The sealing key comes from the identity by default: a copy of the store
/// without the identity file reveals no key. With a passphrase (Argon2id,
/// its salt in the store) the store can be kept apart from the identity
/// file. Neither protects against someone who holds the key material and
/// the store together, or who controls the running process.
final class ClientKeyStore: @unchecked Sendable {
    // @unchecked: made before the client and used only by the client actor afterwards.
    private let database: SQLiteDatabase
    private let key: StoreSealingKey
    let path: String
    /// Rows that no longer opened (a damaged or swapped value), skipped.
    private(set) var discarded = 0

    init(directory: String, identity: Identity, passphrase: [UInt8]?) throws(ClientError) {
        path = directory + "/keys-\(identity.userNKey.prefix(20)).sqlite3"
        do {
            try DataDirectory.prepare(directory)
            database = try SQLiteDatabase(path: path)
            try database.execute("""
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
                CREATE TABLE IF NOT EXISTS inbound (sender BLOB NOT NULL, session BLOB NOT NULL, room TEXT NOT NULL,
                    key BLOB NOT NULL, replay BLOB, created INTEGER NOT NULL DEFAULT 0, owner_signature BLOB,
                    PRIMARY KEY (sender, session));
                CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, stream BLOB NOT NULL, idx INTEGER NOT NULL,
                    room TEXT NOT NULL, subject TEXT NOT NULL, frame BLOB NOT NULL, sealed_at INTEGER NOT NULL, UNIQUE (stream, idx));
                CREATE TABLE IF NOT EXISTS history_shares (session BLOB NOT NULL, recipient TEXT NOT NULL, PRIMARY KEY (session, recipient));
                CREATE TABLE IF NOT EXISTS cursors (room TEXT PRIMARY KEY, value BLOB NOT NULL);
                """)
        } catch {
            throw .localStore("cannot open the key store \(path): \(error)")
        }
        let mode = try? database.query("SELECT value FROM meta WHERE key = 'mode'").first?.first?.blob
        let wanted = passphrase == nil ? "identity" : "passphrase"
        if let mode, let text = String(validating: mode, as: UTF8.self), text != wanted {
            throw .localStore("\(path) is sealed with the \(text == "identity" ? "identity" : "passphrase"), "
                              + (passphrase == nil ? "but no passphrase was given" : "but a passphrase was given") + "; use the same as before")
        }
        if let passphrase {
            var salt = (try? database.query("SELECT value FROM meta WHERE key = 'salt'").first?.first?.blob) ?? nil
            if salt == nil {
                let fresh = StoreSealingKey.randomSalt()
                _ = try? database.query("INSERT INTO meta (key, value) VALUES ('salt', ?)", [.blob(fresh)])
                salt = fresh
            }
            // The salt is bound to the identity: the same passphrase opens no other identity's store.
            guard let salt, salt.count == StoreSealingKey.saltLength,
                  let derived = StoreSealingKey.derived(passphrase: passphrase,
                                                        salt: Array(Digest.sha256(salt + Array(identity.userNKey.utf8)).prefix(StoreSealingKey.saltLength))) else {
                throw .localStore("cannot derive the key store's key from the passphrase (not enough memory for Argon2id, or a damaged salt)")
            }
            key = derived
        } else {
            key = StoreSealingKey.derived(from: identity)
        }
        // A known value sealed under the key: a wrong identity or passphrase is named, not silently ignored.
        let check = Array("unibus-client-store".utf8)
        if let sealed = (try? database.query("SELECT value FROM meta WHERE key = 'check'").first?.first?.blob) ?? nil {
            guard key.open(sealed, context: Array("check".utf8)) == check else {
                throw .localStore("\(path) was sealed under another \(passphrase == nil ? "identity" : "passphrase"); "
                                  + "use the one it was made with, or move the file away to start over")
            }
        } else {
            do {
                try database.transaction {
                    try database.query("INSERT OR REPLACE INTO meta (key, value) VALUES ('mode', ?)", [.blob(Array(wanted.utf8))])
                    try database.query("INSERT OR REPLACE INTO meta (key, value) VALUES ('check', ?)",
                                       [.blob(key.seal(check, context: Array("check".utf8)))])
                }
            } catch {
                throw .localStore("cannot write the key store \(path): \(error)")
            }
        }
    }

    private static func context(_ table: String, _ parts: [UInt8]...) -> [UInt8] {
        var bytes = Array("\(table)\n".utf8)
        for part in parts { bytes += [UInt8(truncatingIfNeeded: part.count)] + part }
        return bytes
    }

    /// Every stored inbound session that still opens.
    func inbound() -> [RoomKeyring.StoredInbound] {
        guard let rows = try? database.query("SELECT sender, session, room, key, replay, created, owner_signature FROM inbound") else { return [] }
        var result: [RoomKeyring.StoredInbound] = []
        for row in rows {
            guard row.count == 7, let sender = row[0].blob, let session = row[1].blob, let room = row[2].text, let sealed = row[3].blob,
                  let sessionKey = key.open(sealed, context: Self.context("inbound-key", sender, session, Array(room.utf8))) else {
                discarded += 1
                continue
            }
            let replay = row[4].blob.flatMap { key.open($0, context: Self.context("inbound-replay", sender, session)) }
            // A window that no longer opens is counted (the session then starts
            // with an empty one: frames dated within a window of the cursor may repeat).
            if row[4].blob != nil && replay == nil { discarded += 1 }
            result.append(RoomKeyring.StoredInbound(room: room, sender: sender, session: session, key: sessionKey, replay: replay,
                                                    created: UInt64(max(0, row[5].integer ?? 0)), ownerSignature: row[6].blob))
        }
        return result
    }

    /// Saves new inbound sessions and changed replay windows in one transaction.
    func save(inbound sessions: [RoomKeyring.StoredInbound], replay: [(sender: [UInt8], session: [UInt8], replay: [UInt8])],
              cursors: [String: UInt64]) throws {
        guard !sessions.isEmpty || !replay.isEmpty || !cursors.isEmpty else { return }
        try database.transaction {
            for stored in sessions {
                try database.query("INSERT OR REPLACE INTO inbound (sender, session, room, key, replay, created, owner_signature) VALUES (?, ?, ?, ?, ?, ?, ?)", [
                    .blob(stored.sender), .blob(stored.session), .text(stored.room),
                    .blob(key.seal(stored.key, context: Self.context("inbound-key", stored.sender, stored.session, Array(stored.room.utf8)))),
                    stored.replay.map { .blob(key.seal($0, context: Self.context("inbound-replay", stored.sender, stored.session))) } ?? .null,
                    .integer(Int64(min(stored.created, UInt64(Int64.max)))), stored.ownerSignature.map { .blob($0) } ?? .null,
                ])
            }
            for window in replay {
                try database.query("UPDATE inbound SET replay = ? WHERE sender = ? AND session = ?", [
                    .blob(key.seal(window.replay, context: Self.context("inbound-replay", window.sender, window.session))),
                    .blob(window.sender), .blob(window.session),
                ])
            }
            for (room, millis) in cursors {
                var bytes: [UInt8] = []
                for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: millis >> UInt64(shift))) }
                try database.query("INSERT OR REPLACE INTO cursors (room, value) VALUES (?, ?)",
                                   [.text(room), .blob(key.seal(bytes, context: Self.context("cursor", Array(room.utf8))))])
            }
        }
    }

    /// The resume cursors (ms, client clock) of persisted rooms.
    func cursors() -> [String: UInt64] {
        guard let rows = try? database.query("SELECT room, value FROM cursors") else { return [:] }
        var result: [String: UInt64] = [:]
        for row in rows {
            guard row.count == 2, let room = row[0].text, let sealed = row[1].blob,
                  let bytes = key.open(sealed, context: Self.context("cursor", Array(room.utf8))), bytes.count == 8 else {
                discarded += 1
                continue
            }
            result[room] = bytes.reduce(0) { $0 << 8 | UInt64($1) }
        }
        return result
    }

    /// A frame waiting for a node's acknowledgement, as the spool keeps it:
    /// already a Megolm frame (the spool adds no plaintext; room and subject
    /// are what any node sees anyway).
    struct Spooled {
        let id: FrameID
        let room: String
        let subject: String
        let frame: [UInt8]
        let sealedAt: UInt64
    }

    /// The spool in the order frames were first sent.
    func spooled() -> [Spooled] {
        guard let rows = try? database.query("SELECT stream, idx, room, subject, frame, sealed_at FROM spool ORDER BY seq") else { return [] }
        return rows.compactMap { row in
            guard row.count == 6, let stream = row[0].blob, let index = row[1].integer, let room = row[2].text, let subject = row[3].text,
                  let frame = row[4].blob, let sealed = row[5].integer else { return nil }
            return Spooled(id: FrameID(stream: stream, index: UInt64(bitPattern: index)), room: room, subject: subject, frame: frame,
                           sealedAt: UInt64(max(0, sealed)))
        }
    }

    /// Adds frames to the spool and removes the ones that were settled, in one transaction.
    func updateSpool(adding: [Spooled], removing: [FrameID]) throws {
        guard !adding.isEmpty || !removing.isEmpty else { return }
        try database.transaction {
            for frame in adding {
                try database.query("INSERT OR IGNORE INTO spool (stream, idx, room, subject, frame, sealed_at) VALUES (?, ?, ?, ?, ?, ?)", [
                    .blob(frame.id.stream), .integer(Int64(bitPattern: frame.id.index)), .text(frame.room), .text(frame.subject),
                    .blob(frame.frame), .integer(Int64(min(frame.sealedAt, UInt64(Int64.max)))),
                ])
            }
            for id in removing {
                try database.query("DELETE FROM spool WHERE stream = ? AND idx = ?", [.blob(id.stream), .integer(Int64(bitPattern: id.index))])
            }
        }
    }

    /// Drops a spool row that did not check out (it counts as discarded).
    func discardSpooled(_ id: FrameID) {
        discarded += 1
        _ = try? database.query("DELETE FROM spool WHERE stream = ? AND idx = ?", [.blob(id.stream), .integer(Int64(bitPattern: id.index))])
    }

    /// Recipients a past session was shared with for history.
    func historyShares() -> Set<[UInt8]> {
        guard let rows = try? database.query("SELECT session, recipient FROM history_shares") else { return [] }
        return Set(rows.compactMap { row in
            guard row.count == 2, let session = row[0].blob, let recipient = row[1].text else { return nil }
            return session + Array(recipient.utf8)
        })
    }

    func recordHistoryShares(session: [UInt8], recipients: [String]) {
        _ = try? database.transaction {
            for recipient in recipients {
                try database.query("INSERT OR IGNORE INTO history_shares (session, recipient) VALUES (?, ?)", [.blob(session), .text(recipient)])
            }
        }
    }

    /// Forgets a room this client left or lost.
    func forget(room: String) {
        _ = try? database.transaction {
            try database.query("DELETE FROM inbound WHERE room = ?", [.text(room)])
            try database.query("DELETE FROM cursors WHERE room = ?", [.text(room)])
        }
    }
}
