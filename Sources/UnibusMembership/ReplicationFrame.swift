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
    /// Key shares, each possibly already acknowledged (`acked`).
    case shares([ReplicatedShare])
    /// Acknowledged share ids, and when.
    case acks(ids: [String], at: String)

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
            var shares: [ReplicatedShare] = []
            for item in items {
                guard let sealed = try? Base64.decode(item.sealed), let signature = try? Base64.decode(item.signature),
                      Self.isHex(item.id, count: 64), (item.acked ?? "").utf8.count <= 64 else {
                    throw .malformed("a share needs a hex id, base64 sealed and signature, and a short acked time")
                }
                guard let sessionSignature = try? Base64.decode(item.session_signature ?? "") else {
                    throw .malformed("a share's session_signature must be base64")
                }
                let share = KeyShare(id: item.id, room: item.room, sender: item.sender, recipient: item.recipient,
                                     sessionID: item.session_id, sealed: sealed, signature: signature, created: item.created ?? "",
                                     sessionSignature: sessionSignature)
                // An acknowledged share travels without its sealed key.
                if item.acked == nil || !sealed.isEmpty, let problem = share.fieldProblem { throw .malformed(problem) }
                shares.append(ReplicatedShare(share: share, acked: item.acked))
            }
            self = .shares(shares)
        case "acks":
            guard let ids = wire.ids, ids.count <= Self.maximumIDs, ids.allSatisfy({ $0.utf8.count <= 128 }) else {
                throw .malformed("acks needs at most \(Self.maximumIDs) ids")
            }
            let at = wire.at ?? ""
            guard at.utf8.count <= 64 else { throw .malformed("acks has an overlong timestamp") }
            self = .acks(ids: ids, at: at)
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
            wire.shares = shares.map { item in
                WireShare(id: item.share.id, room: item.share.room, sender: item.share.sender, recipient: item.share.recipient,
                          session_id: item.share.sessionID, sealed: Base64.encode(item.share.sealed),
                          signature: Base64.encode(item.share.signature), created: item.share.created, acked: item.acked,
                          session_signature: Base64.encode(item.share.sessionSignature))
            }
        case .acks(let ids, let at):
            wire.t = "acks"; wire.ids = ids; wire.at = at
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
        var ids: [String]?
        var at: String?
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
        var acked: String?
        var session_signature: String?
    }
}

/// A key share as replicated, with its acknowledgement if any.
public struct ReplicatedShare: Equatable, Sendable {
    public var share: KeyShare
    public var acked: String?

    public init(share: KeyShare, acked: String?) {
        self.share = share
        self.acked = acked
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
