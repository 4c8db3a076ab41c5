import Foundation
import UnibusCrypto

/// One replication frame between nodes (the payload of a route's `RDATA`):
/// typed, bounded and validated here, in a pure module, so that what a route
/// peer sends is checked in one place and can be fuzzed without sockets.
///
/// The JSON shape (`{"t": "op", …}`) is the one nodes have spoken since
/// replication began; see `Replicator` in UnibusNode for what each does.
public enum ReplicationFrame: Equatable, Sendable {
    /// The sender's log size and digest (base and heads), when a link opens.
    case sync(count: Int, digest: String)
    /// One chunk of the operation ids the sender holds; `last` ends the list.
    case have(ids: [String], last: Bool)
    /// One signed operation (signature verified). Its place in the log
    /// follows from what it signs; nothing about it is the sender's to say.
    case operation(SignedOperation)
    /// Pending key shares (sealed, sender-signed, session-owner-signed).
    case shares([KeyShare])
    /// Acknowledgements, each signed by the share's recipient (a peer cannot
    /// erase a member's pending share without it).
    case acks([SignedAck])

    /// Ids in one `have` chunk, shares in one `shares` frame, ids in
    /// one `acks` frame: senders split longer lists.
    public static let maximumPositions = 4000
    public static let maximumShares = 500
    public static let maximumIDs = 5000

    /// Decodes and validates `bytes`; the error names what is wrong.
    public init(decoding bytes: some Collection<UInt8>) throws(ReplicationFrameError) {
        let wire: Wire
        do { wire = try JSONDecoder().decode(Wire.self, from: Data(bytes)) } catch { throw .malformed("not a replication frame document") }
        switch wire.t {
        case "sync":
            guard let count = wire.count, count >= 0, let digest = wire.digest, Self.isHex(digest, count: 64) else {
                throw .malformed("sync needs a count and a SHA-256 digest")
            }
            self = .sync(count: count, digest: digest)
        case "have":
            guard let items = wire.entries, items.count <= Self.maximumPositions else {
                throw .malformed("have needs at most \(Self.maximumPositions) entries")
            }
            guard items.allSatisfy({ SignedOperation.isOperationID($0) }) else {
                throw .malformed("a have entry must be an operation id (64 lowercase hex)")
            }
            self = .have(ids: items, last: wire.last ?? false)
        case "op":
            guard let bytesText = wire.bytes, let signatureText = wire.signature,
                  let operationBytes = try? Base64.decode(bytesText), let signature = try? Base64.decode(signatureText) else {
                throw .malformed("op needs bytes and signature (base64)")
            }
            do { self = .operation(try SignedOperation(bytes: operationBytes, signature: signature)) } catch { throw .refused(error) }
        case "shares":
            guard let items = wire.shares, items.count <= Self.maximumShares else {
                throw .malformed("shares needs at most \(Self.maximumShares) shares")
            }
            var shares: [KeyShare] = []
            for item in items {
                guard let sealed = try? Base64.decode(item.sealed), let signature = try? Base64.decode(item.signature),
                      let sessionSignature = try? Base64.decode(item.session_signature ?? ""), Self.isHex(item.id, count: 64) else {
                    throw .malformed("a share needs a hex id and base64 sealed, signature and session_signature")
                }
                let share = KeyShare(id: item.id, room: item.room, sender: item.sender, recipient: item.recipient,
                                     sessionID: item.session_id, sealed: sealed, signature: signature, created: item.created ?? "",
                                     sessionSignature: sessionSignature)
                if let problem = share.fieldProblem { throw .malformed(problem) }
                shares.append(share)
            }
            self = .shares(shares)
        case "acks":
            guard let items = wire.acks, items.count <= Self.maximumIDs else {
                throw .malformed("acks needs at most \(Self.maximumIDs) acknowledgements")
            }
            var acks: [SignedAck] = []
            acks.reserveCapacity(items.count)
            for item in items {
                guard Self.isHex(item.id, count: 64), let signature = try? Base64.decode(item.sig), signature.count == 64 else {
                    throw .malformed("an acknowledgement needs a hex share id and a 64-byte signature")
                }
                acks.append(SignedAck(id: item.id, signature: signature))
            }
            self = .acks(acks)
        default:
            throw .unknownType(String(wire.t.prefix(32)))
        }
    }

    /// The frame as JSON (sorted keys, as nodes have always sent it).
    public var encoded: [UInt8] {
        var wire = Wire(t: "")
        switch self {
        case .sync(let count, let digest):
            wire.t = "sync"; wire.count = count; wire.digest = digest
        case .have(let ids, let last):
            wire.t = "have"; wire.last = last
            wire.entries = ids
        case .operation(let operation):
            wire.t = "op"; wire.bytes = Base64.encode(operation.bytes); wire.signature = Base64.encode(operation.signature)
        case .shares(let shares):
            wire.t = "shares"
            wire.shares = shares.map { share in
                WireShare(id: share.id, room: share.room, sender: share.sender, recipient: share.recipient,
                          session_id: share.sessionID, sealed: Base64.encode(share.sealed),
                          signature: Base64.encode(share.signature), created: share.created,
                          session_signature: Base64.encode(share.sessionSignature))
            }
        case .acks(let acks):
            wire.t = "acks"
            wire.acks = acks.map { WireAck(id: $0.id, sig: Base64.encode($0.signature)) }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Strings, numbers and arrays of them always encode.
        return (try? [UInt8](encoder.encode(wire))) ?? []
    }

    private static func isHex(_ text: some StringProtocol, count: Int) -> Bool {
        text.utf8.count == count && text.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// The JSON document: one flat object whose `t` says which fields matter.
    private struct Wire: Codable {
        var t: String
        var count: Int?
        var digest: String?
        var entries: [String]?
        var last: Bool?
        var bytes: String?
        var signature: String?
        var shares: [WireShare]?
        var acks: [WireAck]?
    }

    private struct WireAck: Codable {
        var id: String
        var sig: String
    }

    private struct WireShare: Codable {
        var id: String
        var room: String
        var sender: String
        var recipient: String
        var session_id: String
        var sealed: String
        var signature: String
        var created: String?
        var session_signature: String?
    }
}

/// Why a replication frame was refused.
public enum ReplicationFrameError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unknownType(String)
    /// The operation inside does not decode or verify.
    case refused(MembershipError)

    public var description: String {
        switch self {
        case .malformed(let why): return "malformed replication frame: \(why)"
        case .unknownType(let type): return "unknown replication frame type \(type)"
        case .refused(let error): return "replicated operation refused: \(error)"
        }
    }
}
