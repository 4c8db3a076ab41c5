import Foundation
import NIOConcurrencyHelpers
import NIOCore
import UnibusBroker
import UnibusCrypto
import UnibusFleet
import UnibusMembership
import UnibusMembershipStore
import UnibusPersistence

/// Replication of the membership log and key shares over the route links,
/// as `RDATA` frames (JSON objects with a type `t`):
///
/// - `op`: one signed operation. Pushed by the node that accepted it to
///   every peer, and relayed once by each node that did not hold it yet (so
///   it also crosses a link that is down between two nodes that both reach a
///   third). Its place in the log is what its actor signed (`parents`).
/// - `sync` / `have`: anti-entropy when a link opens. Each side sends its
///   log's size and digest (base and heads); on a mismatch each sends the
///   ids it holds (`have`, in chunks), and each then sends the operations
///   the other lacks, predecessors first. Both ends end with the union.
/// - `shares` / `acks`: key shares (sealed, sender-signed) and their
///   acknowledgements (each signed by the share's recipient), pushed when
///   they happen and exchanged in full when a
///   link opens, so a member fetches its shares from whichever node it uses.
///
/// Nothing here decides who may do what: every node applies the same rules
/// to the same log (`MembershipStore.merge`).
final class Replicator: ClusterDelegate, @unchecked Sendable {
    // @unchecked: `incoming`, `answeredSync` and `answeredHave` are guarded by `lock`; the rest is immutable.
    private let lock = NIOLock()
    private weak var _node: Node?
    private var node: Node? { lock.withLock { _node } }
    /// Ids a peer announced in `have` chunks, until its last chunk.
    private var incoming: [String: Set<String>] = [:]
    /// A peer's `sync` (or final `have`) is answered once per link, so a
    /// peer cannot make this node send its whole log again and again.
    private var answeredSync = OncePerLink()
    private var answeredHave = OncePerLink()
    static let haveChunk = 4000
    /// Most positions held for one peer's `have` before its last chunk (a
    /// peer that never finishes cannot grow this node's memory without bound).
    static let maximumAnnounced = 4_000_000

    init() {}

    func attach(_ node: Node) {
        lock.withLock { _node = node }
    }

    // MARK: frames

    static func operationFrame(_ operation: SignedOperation) -> [UInt8] {
        ReplicationFrame.operation(operation).encoded
    }

    static func sharesFrame(_ shares: [KeyShare]) -> [UInt8] {
        ReplicationFrame.shares(shares).encoded
    }

    static func acksFrame(_ acks: [SignedAck]) -> [UInt8] {
        ReplicationFrame.acks(acks).encoded
    }

    // MARK: ClusterDelegate

    func routeActivated(_ link: RouteLink) async {
        guard let node else { return }
        node.persister?.routeActivated(link)
        let store = node.membership
        link.send(ReplicationFrame.sync(count: store.operationCount, digest: store.logDigest).encoded)
        try? store.pruneAcknowledgedKeyShares()
        guard let (pending, acknowledged) = try? store.keySharesForSync() else { return }
        for start in stride(from: 0, to: pending.count, by: ReplicationFrame.maximumShares) {
            link.send(Self.sharesFrame(Array(pending[start..<min(start + ReplicationFrame.maximumShares, pending.count)])))
        }
        for start in stride(from: 0, to: acknowledged.count, by: ReplicationFrame.maximumIDs) {
            link.send(Self.acksFrame(Array(acknowledged[start..<min(start + ReplicationFrame.maximumIDs, acknowledged.count)])))
        }
    }

    func routeClosed(_ peer: RouteInfo) async {
        // Closes and activations arrive in order, but after the fact, while
        // frames arrive on their links directly: if the peer is linked again
        // by now, its state may already hold the new link's frames and stays.
        guard let node, node.broker.cluster?.hasActiveLink(to: peer.serverID) != true else { return }
        node.persister?.routeClosed(peer.serverID)
        node.operations?.routeClosed(peer.serverID)
        lock.withLock {
            _ = incoming.removeValue(forKey: peer.serverID)
            answeredSync.forget(peer: peer.serverID)
            answeredHave.forget(peer: peer.serverID)
        }
    }

    func received(_ data: ByteBuffer, from link: RouteLink) async {
        guard let node else { return }
        if FrameReplication.isFrameReplication(data.readableBytesView) {
            if let persister = node.persister { await persister.received(data.readableBytesView, from: link) } else {
                node.refusedReplicationFrames.wrappingIncrement(ordering: .relaxed)
            }
            return
        }
        if FleetFrame.isFleetFrame(data.readableBytesView) {
            guard let frame = try? FleetFrame(decoding: data.readableBytesView), let operations = node.operations else {
                node.refusedReplicationFrames.wrappingIncrement(ordering: .relaxed)
                return
            }
            await operations.received(frame, from: link.peer.serverID)
            return
        }
        let frame: ReplicationFrame
        do {
            frame = try ReplicationFrame(decoding: data.readableBytesView)
        } catch {
            node.refusedReplicationFrames.wrappingIncrement(ordering: .relaxed)
            node.log("replication frame refused", ["peer": link.peer.serverID, "error": "\(error)"])
            return
        }
        // Anti-entropy (sync, have) belongs to the peer's active link: a
        // replaced link's late frames would mix into, or answer for, the new one.
        switch frame {
        case .sync(let count, let digest):
            guard link.isActive else { return }
            let store = node.membership
            guard count != store.operationCount || digest != store.logDigest else { return }
            guard lock.withLock({ answeredSync.claim(peer: link.peer.serverID, link: link.linkID) }) else {
                node.refusedReplicationFrames.wrappingIncrement(ordering: .relaxed)
                return
            }
            let ids = store.operations().map(\.id)
            var start = 0
            repeat {
                let end = min(start + ReplicationFrame.maximumPositions, ids.count)
                link.send(ReplicationFrame.have(ids: Array(ids[start..<end]), last: end == ids.count).encoded)
                start = end
            } while start < ids.count
        case .have(let ids, let last):
            guard link.isActive else { return }
            let complete: Set<String>? = lock.withLock {
                var held = incoming[link.peer.serverID, default: []]
                held.formUnion(ids)
                if held.count > Self.maximumAnnounced {
                    incoming[link.peer.serverID] = nil
                    return nil
                }
                incoming[link.peer.serverID] = held
                guard last else { return nil }
                guard answeredHave.claim(peer: link.peer.serverID, link: link.linkID) else {
                    incoming[link.peer.serverID] = nil
                    return nil
                }
                return incoming.removeValue(forKey: link.peer.serverID)
            }
            guard let theirs = complete else { return }
            // Send what the peer lacks, predecessors first (fold order is causal).
            for operation in node.membership.operations() where !theirs.contains(operation.id) {
                link.send(Self.operationFrame(operation))
            }
        case .operation(let operation):
            for stored in await node.merge(operation) {
                // Relay once: a node that reaches a peer this link's node cannot.
                node.broker.cluster?.broadcast(Self.operationFrame(stored), except: link)
            }
        case .shares(let shares):
            for share in shares {
                do {
                    if try node.membership.storeReplicatedKeyShare(share) {
                        node.notifyKeyShares([share])
                    }
                } catch {
                    node.refusedReplicationFrames.wrappingIncrement(ordering: .relaxed)
                    node.log("replicated key share refused", ["peer": link.peer.serverID, "error": "\(error)"])
                }
            }
        case .acks(let acks):
            // Only acknowledgements signed by each share's recipient take effect.
            let done = (try? node.membership.acknowledgeReplicatedKeyShares(acks)) ?? 0
            if done < acks.count { node.log("replicated acknowledgements ignored (unknown share, or not the recipient's)",
                                            ["peer": link.peer.serverID, "ignored": String(acks.count - done)]) }
        }
    }
}

/// Requests a peer may have answered once per link (its `sync`, its last
/// `have`): one entry per peer, holding the link it was answered on.
///
/// Keyed by link, not by peer alone: a preferred duplicate can replace a
/// peer's link while the peer stays (no `routeClosed`), and the exchange on
/// the new link must be answered, or a node that joined with an empty log
/// may never receive it (seen in CI as a node that never became ready).
struct OncePerLink {
    private var answeredOn: [String: UInt64] = [:]

    /// True the first time `peer` asks on `link`; false for a repeat on the
    /// same link. A new link of the peer is answered again.
    mutating func claim(peer: String, link: UInt64) -> Bool {
        answeredOn.updateValue(link, forKey: peer) != link
    }

    /// The peer's links are gone: whatever it asks next is answered.
    mutating func forget(peer: String) {
        answeredOn[peer] = nil
    }
}
