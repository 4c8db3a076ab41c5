import Foundation
import UnibusCrypto

/// A sender's Megolm session key for one room, sealed to one member's X25519
/// key (libsodium sealed box) and signed by the sender. The service stores
/// and delivers it; it cannot open it.
public struct KeyShare: Equatable, Sendable {
    public var id: String
    public var room: String
    public var sender: String
    public var recipient: String
    public var sessionID: String
    public var sealed: [UInt8]
    /// The sender's Ed25519 signature over `KeyShare.signedBytes`.
    public var signature: [UInt8]
    public var created: String

    public init(id: String, room: String, sender: String, recipient: String, sessionID: String,
                sealed: [UInt8], signature: [UInt8], created: String) {
        self.id = id
        self.room = room
        self.sender = sender
        self.recipient = recipient
        self.sessionID = sessionID
        self.sealed = sealed
        self.signature = signature
        self.created = created
    }

    /// What the sender signs: binds the sealed key to room, session and recipient,
    /// so a share cannot be replayed into another room or to another member.
    public static func signedBytes(room: String, sessionID: String, recipient: String, sealed: [UInt8]) -> [UInt8] {
        Array("UNIBUS-KEY-SHARE-1\n\(room)\n\(sessionID)\n\(recipient)\n".utf8) + sealed
    }

    /// Whether `signature` is the sender's over this share.
    public var isSignedBySender: Bool {
        guard let (_, key) = try? NKey.decodePublicKey(sender, expecting: .user) else { return false }
        return key.verify(signature: signature, message: Self.signedBytes(room: room, sessionID: sessionID, recipient: recipient, sealed: sealed))
    }
}

extension MembershipStore {
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
            guard share.sealed.count > SealedBox.overhead, share.sealed.count <= 4096 else { throw .invalid("a sealed share must be 49 to 4096 bytes") }
            guard share.isSignedBySender else { throw .badSignature }
        }
        do {
            try withDatabase { database in
                try database.transaction {
                    for share in shares {
                        try database.query("INSERT INTO key_shares (id, room, sender, recipient, session_id, sealed, signature, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                           [.text(share.id), .text(share.room), .text(share.sender), .text(share.recipient),
                                            .text(share.sessionID), .blob(share.sealed), .blob(share.signature), .text(share.created)])
                    }
                }
            }
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Shares waiting for `recipient` (not yet acknowledged), oldest first.
    public func pendingKeyShares(for recipient: String) throws(MembershipError) -> [KeyShare] {
        do {
            return try withDatabase { database in
                try database.query("SELECT id, room, sender, recipient, session_id, sealed, signature, created FROM key_shares WHERE recipient = ? AND acked IS NULL ORDER BY rowid",
                                   [.text(recipient)]).map { row in
                    KeyShare(id: row[0].text ?? "", room: row[1].text ?? "", sender: row[2].text ?? "", recipient: row[3].text ?? "",
                             sessionID: row[4].text ?? "", sealed: row[5].blob ?? [], signature: row[6].blob ?? [], created: row[7].text ?? "")
                }
            }
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Marks shares as delivered; only the recipient may acknowledge its own.
    public func acknowledgeKeyShares(_ ids: [String], by recipient: String, at timestamp: String) throws(MembershipError) -> Int {
        do {
            return try withDatabase { database in
                try database.transaction {
                    var count = 0
                    for id in ids {
                        let before = try database.query("SELECT count(*) FROM key_shares WHERE id = ? AND recipient = ? AND acked IS NULL", [.text(id), .text(recipient)])
                        try database.query("UPDATE key_shares SET acked = ? WHERE id = ? AND recipient = ?", [.text(timestamp), .text(id), .text(recipient)])
                        count += Int(before.first?.first?.integer ?? 0)
                    }
                    return count
                }
            }
        } catch {
            throw .storage("\(error)")
        }
    }
}

extension MembershipStore {
    /// Stores a share another node accepted (its rules were checked there):
    /// only its sender's signature is checked here, since this node's copy
    /// of the membership may lag. Returns whether it was new. `acked` marks
    /// it delivered (a share the recipient already fetched elsewhere).
    public func storeReplicatedKeyShare(_ share: KeyShare, acked: String?) throws(MembershipError) -> Bool {
        guard share.sealed.count > SealedBox.overhead, share.sealed.count <= 4096 else { throw .invalid("a sealed share must be 49 to 4096 bytes") }
        guard share.id == KeyShare.identifier(room: share.room, sessionID: share.sessionID, recipient: share.recipient, sealed: share.sealed) else {
            throw .invalid("the share's id does not match its contents")
        }
        guard share.isSignedBySender else { throw .badSignature }
        do {
            return try withDatabase { database in
                try database.transaction {
                    let known = try !database.query("SELECT 1 FROM key_shares WHERE id = ?", [.text(share.id)]).isEmpty
                    if !known {
                        try database.query("INSERT INTO key_shares (id, room, sender, recipient, session_id, sealed, signature, created, acked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                           [.text(share.id), .text(share.room), .text(share.sender), .text(share.recipient),
                                            .text(share.sessionID), .blob(share.sealed), .blob(share.signature), .text(share.created),
                                            acked.map { .text($0) } ?? .null])
                    } else if let acked {
                        try database.query("UPDATE key_shares SET acked = ? WHERE id = ? AND acked IS NULL", [.text(acked), .text(share.id)])
                    }
                    return !known
                }
            }
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Marks shares delivered on another node (the recipient acknowledged there).
    public func acknowledgeReplicatedKeyShares(_ ids: [String], at timestamp: String) throws(MembershipError) {
        do {
            try withDatabase { database in
                try database.transaction {
                    for id in ids {
                        try database.query("UPDATE key_shares SET acked = ? WHERE id = ? AND acked IS NULL", [.text(timestamp), .text(id)])
                    }
                }
            }
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Every share not yet acknowledged, and the ids of acknowledged ones
    /// (what a node tells a peer when a link opens).
    public func keySharesForSync() throws(MembershipError) -> (pending: [KeyShare], acknowledged: [String]) {
        do {
            return try withDatabase { database in
                let pending = try database.query("SELECT id, room, sender, recipient, session_id, sealed, signature, created FROM key_shares WHERE acked IS NULL ORDER BY rowid").map { row in
                    KeyShare(id: row[0].text ?? "", room: row[1].text ?? "", sender: row[2].text ?? "", recipient: row[3].text ?? "",
                             sessionID: row[4].text ?? "", sealed: row[5].blob ?? [], signature: row[6].blob ?? [], created: row[7].text ?? "")
                }
                let acknowledged = try database.query("SELECT id FROM key_shares WHERE acked IS NOT NULL ORDER BY rowid").compactMap { $0[0].text }
                return (pending, acknowledged)
            }
        } catch {
            throw .storage("\(error)")
        }
    }
}

extension KeyShare {
    /// A share's id: the same on every node for the same sealed key.
    public static func identifier(room: String, sessionID: String, recipient: String, sealed: [UInt8]) -> String {
        Hex.encode(Digest.sha256(Array("\(room)|\(sessionID)|\(recipient)|".utf8) + sealed))
    }
}
