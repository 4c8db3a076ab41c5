import Foundation
import UnibusCrypto
import UnibusMembership
import UnibusSQLite

/// One page of a recipient's pending shares and where the next starts.
public struct KeySharePage: Sendable {
    public var shares: [KeyShare]
    /// The cursor for the next page (`after`), nil on the last page.
    public var next: Int64?
}

extension MembershipStore {
    /// Most pending (unacknowledged) shares one sender may have waiting for
    /// one recipient on a node: past it, that sender's new shares for that
    /// recipient are refused. Counted per pair, so a sender flooding a
    /// member blocks only itself, never the other senders of the room.
    public static let maximumPendingSharesPerSender = 2_000
    /// How long an acknowledged share's id is kept (its sealed key is erased
    /// at acknowledgement): long enough that a peer still offering it cannot
    /// bring it back, then it is pruned.
    public static let acknowledgedShareRetention: TimeInterval = 7 * 24 * 3600

    /// Stores shares from `sender` for `room` after checking that the sender
    /// and every recipient are current members and each share is signed by
    /// the sender. All or nothing.
    public func storeKeyShares(_ shares: [KeyShare]) throws(MembershipError) {
        let state = snapshot
        for share in shares {
            guard let room = state.rooms[share.room], room.archived == nil else { throw .notFound("open room \(share.room)") }
            guard state.members[share.room]?[share.sender] != nil else { throw .unauthorized("\(share.sender) is not a member of \(share.room)") }
            guard state.members[share.room]?[share.recipient] != nil else {
                throw .unauthorized("\(share.recipient) is not a member of \(share.room); keys go to current members only")
            }
            if let problem = share.fieldProblem { throw .invalid(problem) }
            guard share.isSignedBySender else { throw .badSignature }
            guard share.isOwnedBySender else {
                throw .unauthorized("the session's own key does not sign that \(share.sender) owns it; only a session's creator may share it")
            }
            guard state.users[share.recipient]?.status == .active else { throw .unauthorized("\(share.recipient) is revoked") }
        }
        do {
            try withDatabase { database in
                try database.transaction {
                    for recipient in Set(shares.map(\.recipient)) {
                        let adding = shares.reduce(0) { $0 + ($1.recipient == recipient ? 1 : 0) }
                        guard let sender = shares.first?.sender,
                              try Self.pendingCount(for: recipient, from: sender, in: database) + adding <= Self.maximumPendingSharesPerSender else {
                            throw MembershipError.conflict("\(recipient) already has \(Self.maximumPendingSharesPerSender) of your key shares waiting; "
                                                           + "it must fetch them before you can store more")
                        }
                    }
                    for share in shares {
                        let known = try !database.query("SELECT 1 FROM key_shares WHERE id = ?", [.text(share.id)]).isEmpty
                        guard !known else { throw MembershipError.conflict("key share \(share.id.prefix(16))… is already stored") }
                        try database.query("INSERT INTO key_shares (id, room, sender, recipient, session_id, sealed, signature, created, session_signature) "
                                           + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                           [.text(share.id), .text(share.room), .text(share.sender), .text(share.recipient),
                                            .text(share.sessionID), .blob(share.sealed), .blob(share.signature), .text(share.created),
                                            .blob(share.sessionSignature)])
                    }
                }
            }
        } catch let error as MembershipError {
            throw error
        } catch {
            throw .storage("\(error)")
        }
    }

    static func pendingCount(for recipient: String, from sender: String, in database: SQLiteDatabase) throws -> Int {
        Int(try database.query("SELECT count(*) FROM key_shares WHERE recipient = ? AND sender = ? AND acked IS NULL",
                               [.text(recipient), .text(sender)]).first?.first?.integer ?? 0)
    }

    /// Shares waiting for `recipient` (not yet acknowledged), oldest first.
    public func pendingKeyShares(for recipient: String) throws(MembershipError) -> [KeyShare] {
        var all: [KeyShare] = []
        var after: Int64 = 0
        while true {
            let page = try pendingKeyShares(for: recipient, after: after, limit: 1000)
            all += page.shares
            guard let next = page.next else { return all }
            after = next
        }
    }

    /// One page of the shares waiting for `recipient`, oldest first, after
    /// the cursor `after` (0 for the first page).
    public func pendingKeyShares(for recipient: String, after: Int64, limit: Int) throws(MembershipError) -> KeySharePage {
        let limit = max(1, min(limit, 1000))
        do {
            return try withDatabase { database in
                let rows = try database.query("SELECT id, room, sender, recipient, session_id, sealed, signature, created, rowid, session_signature FROM key_shares "
                                              + "WHERE recipient = ? AND acked IS NULL AND rowid > ? ORDER BY rowid LIMIT ?",
                                              [.text(recipient), .integer(after), .integer(Int64(limit) + 1)])
                let shares = rows.prefix(limit).map { row in
                    KeyShare(id: row[0].text ?? "", room: row[1].text ?? "", sender: row[2].text ?? "", recipient: row[3].text ?? "",
                             sessionID: row[4].text ?? "", sealed: row[5].blob ?? [], signature: row[6].blob ?? [], created: row[7].text ?? "",
                             sessionSignature: row[9].blob ?? [])
                }
                let next = rows.count > limit ? rows[limit - 1][8].integer : nil
                return KeySharePage(shares: Array(shares), next: next)
            }
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Deletes acknowledged shares older than the retention (their sealed
    /// keys were erased at acknowledgement). Returns how many went.
    @discardableResult
    public func pruneAcknowledgedKeyShares(now: Date = Date()) throws(MembershipError) -> Int {
        // The same form as the `acked` times it is compared with as text.
        let horizon = OperationTime.string(now.addingTimeInterval(-Self.acknowledgedShareRetention))
        do {
            return try withDatabase { database in
                let before = try database.query("SELECT count(*) FROM key_shares WHERE acked IS NOT NULL AND acked < ?", [.text(horizon)])
                try database.query("DELETE FROM key_shares WHERE acked IS NOT NULL AND acked < ?", [.text(horizon)])
                return Int(before.first?.first?.integer ?? 0)
            }
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Marks shares as delivered. Each acknowledgement must be signed by the
    /// share's recipient (`KeyShare.ackStatement`), so it can travel to other
    /// nodes and be checked there; the sealed key is erased at once and the
    /// tombstone dated by this node's clock. Returns the acknowledgements
    /// that took effect (to replicate).
    public func acknowledgeKeyShares(_ acks: [SignedAck], by recipient: String, now: Date = Date()) throws(MembershipError) -> [SignedAck] {
        let valid = acks.filter { KeyShare.isAcknowledged(id: $0.id, by: recipient, signature: $0.signature) }
        guard valid.count == acks.count else { throw .badSignature }
        return try markAcknowledged(valid, recipient: recipient, now: now)
    }

    /// Marks the shares of `acks` acknowledged where `recipient` (when given)
    /// is theirs and each signature is the share's recipient's.
    private func markAcknowledged(_ acks: [SignedAck], recipient: String?, now: Date) throws(MembershipError) -> [SignedAck] {
        let timestamp = OperationTime.string(now)
        do {
            return try withDatabase { database in
                try database.transaction {
                    var done: [SignedAck] = []
                    for ack in acks {
                        guard let row = try database.query("SELECT recipient FROM key_shares WHERE id = ? AND acked IS NULL", [.text(ack.id)]).first,
                              let owner = row[0].text, recipient == nil || owner == recipient,
                              KeyShare.isAcknowledged(id: ack.id, by: owner, signature: ack.signature) else { continue }
                        try database.query("UPDATE key_shares SET acked = ?, sealed = x'', ack_signature = ? WHERE id = ?",
                                           [.text(timestamp), .blob(ack.signature), .text(ack.id)])
                        done.append(ack)
                    }
                    return done
                }
            }
        } catch let error as MembershipError {
            throw error
        } catch {
            throw .storage("\(error)")
        }
    }
}

extension MembershipStore {
    /// Stores a pending share another node accepted (its rules were checked
    /// there): its signatures and id are checked here, and its ends must be
    /// users this node knows, the recipient not revoked (this node's copy of
    /// the membership may lag on rooms, not on who exists). Returns whether
    /// it was new.
    public func storeReplicatedKeyShare(_ share: KeyShare) throws(MembershipError) -> Bool {
        if let problem = share.fieldProblem { throw .invalid(problem) }
        guard share.id == KeyShare.identifier(room: share.room, sessionID: share.sessionID, recipient: share.recipient, sealed: share.sealed) else {
            throw .invalid("the share's id does not match its contents")
        }
        guard share.isSignedBySender, share.isOwnedBySender else { throw .badSignature }
        let state = snapshot
        guard state.users[share.sender] != nil, let recipient = state.users[share.recipient] else {
            throw .notFound("the share's sender or recipient is not a user this node knows")
        }
        // Never store a key for a revoked user (its revocation deleted the rest).
        guard recipient.status == .active else { throw .unauthorized("\(share.recipient) is revoked") }
        do {
            return try withDatabase { database in
                try database.transaction {
                    let known = try !database.query("SELECT 1 FROM key_shares WHERE id = ?", [.text(share.id)]).isEmpty
                    guard !known else { return false }
                    let pending = try Self.pendingCount(for: share.recipient, from: share.sender, in: database)
                    if pending >= Self.maximumPendingSharesPerSender {
                        throw MembershipError.conflict("\(share.recipient) has \(Self.maximumPendingSharesPerSender) key shares from \(share.sender) waiting")
                    }
                    try database.query("INSERT INTO key_shares (id, room, sender, recipient, session_id, sealed, signature, created, "
                                       + "session_signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                       [.text(share.id), .text(share.room), .text(share.sender), .text(share.recipient),
                                        .text(share.sessionID), .blob(share.sealed), .blob(share.signature),
                                        .text(share.created), .blob(share.sessionSignature)])
                    return true
                }
            }
        } catch let error as MembershipError {
            throw error
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Acknowledgements from another node: each takes effect only if it is
    /// signed by the share's recipient (a peer cannot erase pending shares).
    /// The tombstone is dated by this node's clock, never the peer's.
    @discardableResult
    public func acknowledgeReplicatedKeyShares(_ acks: [SignedAck], now: Date = Date()) throws(MembershipError) -> Int {
        try markAcknowledged(acks, recipient: nil, now: now).count
    }

    /// Every share not yet acknowledged, and the signed acknowledgements of
    /// acknowledged ones (what a node tells a peer when a link opens).
    public func keySharesForSync() throws(MembershipError) -> (pending: [KeyShare], acknowledged: [SignedAck]) {
        do {
            return try withDatabase { database in
                let pending = try database.query("SELECT id, room, sender, recipient, session_id, sealed, signature, created, session_signature "
                                                 + "FROM key_shares WHERE acked IS NULL ORDER BY rowid").map { row in
                    KeyShare(id: row[0].text ?? "", room: row[1].text ?? "", sender: row[2].text ?? "", recipient: row[3].text ?? "",
                             sessionID: row[4].text ?? "", sealed: row[5].blob ?? [], signature: row[6].blob ?? [], created: row[7].text ?? "",
                             sessionSignature: row[8].blob ?? [])
                }
                let acknowledged = try database.query("SELECT id, ack_signature FROM key_shares WHERE acked IS NOT NULL "
                                                      + "AND length(ack_signature) = 64 ORDER BY rowid").compactMap { row -> SignedAck? in
                    guard let id = row[0].text, let signature = row[1].blob else { return nil }
                    return SignedAck(id: id, signature: signature)
                }
                return (pending, acknowledged)
            }
        } catch {
            throw .storage("\(error)")
        }
    }
}
