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
    /// The Megolm session's own Ed25519 signature over `ownerStatement`:
    /// proof that the sender created the session (only its creator holds
    /// the session's signing key), so nobody can share another member's
    /// session under their own name and relabel that member's frames.
    public var sessionSignature: [UInt8]

    public init(id: String, room: String, sender: String, recipient: String, sessionID: String,
                sealed: [UInt8], signature: [UInt8], created: String, sessionSignature: [UInt8]) {
        self.sessionSignature = sessionSignature
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

    /// Why this share's fields are out of bounds, or nil. One rule for the
    /// control plane and for replication: a share one node accepts is never
    /// one its peers refuse (a refused share used to take its whole
    /// replication frame, and the good shares in it, down with it).
    public var fieldProblem: String? {
        guard (1...64).contains(sessionID.utf8.count), sessionID.utf8.allSatisfy(Self.isSessionIDByte) else {
            return "session_id must be 1 to 64 bytes of base64"
        }
        guard (1...64).contains(room.utf8.count) else { return "room must be 1 to 64 bytes" }
        guard (try? NKey.decodePublicKey(sender, expecting: .user)) != nil,
              (try? NKey.decodePublicKey(recipient, expecting: .user)) != nil else { return "sender and recipient must be user nkeys" }
        guard sealed.count > SealedBox.overhead, sealed.count <= 4096 else { return "a sealed share must be 49 to 4096 bytes" }
        guard signature.count == 64 else { return "a share signature is 64 bytes" }
        guard sessionSignature.count == 64 else { return "a session signature is 64 bytes" }
        guard created.utf8.count <= 64 else { return "created is at most 64 bytes" }
        return nil
    }

    static func isSessionIDByte(_ byte: UInt8) -> Bool {
        (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122) || (byte >= 48 && byte <= 57)
            || byte == UInt8(ascii: "+") || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
            || byte == UInt8(ascii: "=")
    }

    /// What a session's own key signs to bind it to its creator in a room.
    /// Distinct from anything Megolm signs (messages start 0x03, session keys 0x02).
    public static func ownerStatement(room: String, sessionID: String, owner: String) -> [UInt8] {
        Array("UNIBUS-SESSION-OWNER-1\n\(room)\n\(sessionID)\n\(owner)".utf8)
    }

    /// Whether the session named by `sessionID` (its public signing key)
    /// signed that `sender` owns it in `room`.
    public var isOwnedBySender: Bool {
        guard let keyBytes = try? Base64.decode(sessionID), let key = Ed25519PublicKey(bytes: keyBytes) else { return false }
        return key.verify(signature: sessionSignature, message: Self.ownerStatement(room: room, sessionID: sessionID, owner: sender))
    }

    /// What a recipient signs to acknowledge one share: nobody else (no node,
    /// no route peer) can mark a member's share delivered and erase it.
    public static func ackStatement(id: String, recipient: String) -> [UInt8] {
        Array("UNIBUS-KEY-ACK-1\n\(id)\n\(recipient)".utf8)
    }

    /// Whether `signature` is `recipient`'s acknowledgement of share `id`.
    public static func isAcknowledged(id: String, by recipient: String, signature: [UInt8]) -> Bool {
        guard signature.count == 64, let (_, key) = try? NKey.decodePublicKey(recipient, expecting: .user) else { return false }
        return key.verify(signature: signature, message: ackStatement(id: id, recipient: recipient))
    }

    /// Whether `signature` is the sender's over this share.
    public var isSignedBySender: Bool {
        guard let (_, key) = try? NKey.decodePublicKey(sender, expecting: .user) else { return false }
        return key.verify(signature: signature, message: Self.signedBytes(room: room, sessionID: sessionID, recipient: recipient, sealed: sealed))
    }
}

extension KeyShare {
    /// A share's id: the same on every node for the same sealed key.
    public static func identifier(room: String, sessionID: String, recipient: String, sealed: [UInt8]) -> String {
        Hex.encode(Digest.sha256(Array("\(room)|\(sessionID)|\(recipient)|".utf8) + sealed))
    }
}

/// A recipient's signed acknowledgement of one key share.
public struct SignedAck: Equatable, Sendable {
    public var id: String
    public var signature: [UInt8]

    public init(id: String, signature: [UInt8]) {
        self.id = id
        self.signature = signature
    }
}
