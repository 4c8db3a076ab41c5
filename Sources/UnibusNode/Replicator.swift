import Foundation
import NIOConcurrencyHelpers
import NIOCore
import UnibusBroker
import UnibusCrypto
import UnibusMembership

/// Replication of the membership log and key shares over the route links,
/// as `RDATA` frames (JSON objects with a type `t`):
///
/// - `op`: one signed operation with its log position. Pushed by the node
///   that accepted it to every peer, and relayed once by each node that did
///   not hold it yet (so it also crosses a link that is down between two
///   nodes that both reach a third).
/// - `sync` / `have`: anti-entropy when a link opens. Each side sends its
///   log's size and digest; on a mismatch each sends the positions it holds
///   (`have`, in chunks), and each then sends the operations the other lacks
///   or holds at a later position. Both ends end with the union.
/// - `shares` / `acks`: key shares (sealed, sender-signed) and their
///   acknowledgements, pushed when they happen and exchanged in full when a
///   link opens, so a member fetches its shares from whichever node it uses.
///
/// Nothing here decides who may do what: every node applies the same rules
/// to the same log (`MembershipStore.merge`).
final class Replicator: ClusterDelegate, @unchecked Sendable {
    // @unchecked: `incoming` is guarded by `lock`; the rest is immutable.
    private let lock = NIOLock()
    private weak var _node: Node?
    private var node: Node? { lock.withLock { _node } }
    /// Positions a peer announced in `have` chunks, until its last chunk.
    private var incoming: [String: [String: LogPosition]] = [:]
    static let haveChunk = 4000
    /// Most positions held for one peer's `have` before its last chunk (a
    /// peer that never finishes cannot grow this node's memory without bound).
    static let maximumAnnounced = 4_000_000

    init() {}

    func attach(_ node: Node) {
        lock.withLock { _node = node }
    }

    // MARK: frames

    static func frame(_ object: [String: Any]) -> [UInt8] {
        (try? [UInt8](JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))) ?? []
    }

    static func operationFrame(_ operation: SignedOperation, at position: LogPosition) -> [UInt8] {
        frame(["t": "op", "bytes": Base64.encode(operation.bytes), "signature": Base64.encode(operation.signature),
               "clock": String(position.clock), "origin": position.origin])
    }

    static func sharesFrame(_ shares: [KeyShare], acked: String? = nil) -> [UInt8] {
        frame(["t": "shares", "shares": shares.map { share in
            var object: [String: Any] = ["id": share.id, "room": share.room, "sender": share.sender, "recipient": share.recipient,
                                         "session_id": share.sessionID, "sealed": Base64.encode(share.sealed),
                                         "signature": Base64.encode(share.signature), "created": share.created]
            if let acked { object["acked"] = acked }
            return object
        }])
    }

    static func acksFrame(_ ids: [String], at timestamp: String) -> [UInt8] {
        frame(["t": "acks", "ids": ids, "at": timestamp])
    }

    // MARK: ClusterDelegate

    func routeActivated(_ link: RouteLink) async {
        guard let node else { return }
        let store = node.membership
        link.send(Self.frame(["t": "sync", "count": store.operationCount, "digest": store.logDigest]))
        guard let (pending, acknowledged) = try? store.keySharesForSync() else { return }
        var start = 0
        while start < pending.count {
            let end = min(start + 500, pending.count)
            link.send(Self.sharesFrame(Array(pending[start..<end])))
            start = end
        }
        if !acknowledged.isEmpty { link.send(Self.acksFrame(acknowledged, at: ControlTime.now())) }
    }

    func routeClosed(_ peer: RouteInfo) async {
        lock.withLock { _ = incoming.removeValue(forKey: peer.serverID) }
    }

    func received(_ data: ByteBuffer, from link: RouteLink) async {
        guard let node, let object = try? JSONSerialization.jsonObject(with: Data(data.readableBytesView)) as? [String: Any],
              let type = object["t"] as? String else {
            node?.log("replication frame not understood", ["peer": link.peer.serverID])
            return
        }
        switch type {
        case "sync":
            let count = (object["count"] as? NSNumber)?.intValue ?? -1
            let digest = object["digest"] as? String ?? ""
            let store = node.membership
            guard count != store.operationCount || digest != store.logDigest else { return }
            let entries = store.logEntries()
            var start = 0
            repeat {
                let end = min(start + Self.haveChunk, entries.count)
                let items = entries[start..<end].map { "\($0.position.id) \($0.position.clock) \($0.position.origin)" }
                link.send(Self.frame(["t": "have", "entries": items, "last": end == entries.count]))
                start = end
            } while start < entries.count
        case "have":
            var announced: [String: LogPosition] = [:]
            for item in object["entries"] as? [String] ?? [] {
                let parts = item.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 3, let clock = UInt64(parts[1]) else { continue }
                announced[String(parts[0])] = LogPosition(clock: clock, origin: String(parts[2]), id: String(parts[0]))
            }
            let complete: [String: LogPosition]? = lock.withLock {
                incoming[link.peer.serverID, default: [:]].merge(announced) { $1 }
                if incoming[link.peer.serverID, default: [:]].count > Self.maximumAnnounced {
                    incoming[link.peer.serverID] = nil
                    return nil
                }
                guard object["last"] as? Bool == true else { return nil }
                return incoming.removeValue(forKey: link.peer.serverID)
            }
            guard let theirs = complete else { return }
            // Send what the peer lacks, or holds at a later position, in log order.
            for entry in node.membership.logEntries() {
                if let held = theirs[entry.position.id], held <= entry.position { continue }
                link.send(Self.operationFrame(entry.operation, at: entry.position))
            }
        case "op":
            guard let bytes = (object["bytes"] as? String).flatMap({ try? Base64.decode($0) }),
                  let signature = (object["signature"] as? String).flatMap({ try? Base64.decode($0) }),
                  let clock = (object["clock"] as? String).flatMap({ UInt64($0) }),
                  let origin = object["origin"] as? String else {
                node.log("replicated operation not understood", ["peer": link.peer.serverID])
                return
            }
            do {
                let operation = try SignedOperation(bytes: bytes, signature: signature)
                let position = LogPosition(clock: clock, origin: origin, id: operation.id)
                if await node.merge(operation, at: position) {
                    // Relay once: a node that reaches a peer this link's node cannot.
                    node.broker.cluster?.broadcast(Self.operationFrame(operation, at: position), except: link)
                }
            } catch {
                node.log("replicated operation refused", ["peer": link.peer.serverID, "error": "\(error)"])
            }
        case "shares":
            for object in object["shares"] as? [[String: Any]] ?? [] {
                guard let id = object["id"] as? String, let room = object["room"] as? String, let sender = object["sender"] as? String,
                      let recipient = object["recipient"] as? String, let session = object["session_id"] as? String,
                      let sealed = (object["sealed"] as? String).flatMap({ try? Base64.decode($0) }),
                      let signature = (object["signature"] as? String).flatMap({ try? Base64.decode($0) }) else { continue }
                let share = KeyShare(id: id, room: room, sender: sender, recipient: recipient, sessionID: session, sealed: sealed,
                                     signature: signature, created: object["created"] as? String ?? "")
                do {
                    if try node.membership.storeReplicatedKeyShare(share, acked: object["acked"] as? String), object["acked"] == nil {
                        node.notifyKeyShares([share])
                    }
                } catch {
                    node.log("replicated key share refused", ["peer": link.peer.serverID, "error": "\(error)"])
                }
            }
        case "acks":
            let ids = object["ids"] as? [String] ?? []
            try? node.membership.acknowledgeReplicatedKeyShares(ids, at: object["at"] as? String ?? ControlTime.now())
        default:
            node.log("unknown replication frame", ["peer": link.peer.serverID, "type": type])
        }
    }
}

/// Timestamps as the control plane and key shares write them.
public enum ControlTime {
    public static func now() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }
}
