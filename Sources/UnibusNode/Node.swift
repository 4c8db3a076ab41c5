import Atomics
import Foundation
import Logging
import NIOConcurrencyHelpers
import UnibusBroker
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusPersistence

/// A node: the broker and the membership store it authorizes from. Every
/// accepted membership operation, whether accepted here or replicated from
/// a peer, is applied to the open connections before `apply`/`merge`
/// returns: permissions follow room membership live, and a revoked user's
/// connections are closed.
public final class Node: Sendable {
    public let broker: Broker
    public let membership: MembershipStore
    /// Replication frames (and key shares in them) refused from route peers.
    public let refusedReplicationFrames = ManagedAtomic<Int>(0)
    private let lastPrune = NIOLockedValueBox(Date.distantPast)
    private let replicator: Replicator?
    /// The node's log (membership, replication, persistence, operations).
    public let logger: Logger
    /// Persisted rooms: the frame store and what stores into it (nil when the
    /// node was made without a frame store).
    let persister: Persister?
    private let _operations = NIOLockedValueBox<NodeOperations?>(nil)
    /// Workload logins whose expiry this node has enforced ("key expiresAt").
    private let enforcedExpiries = NIOLockedValueBox<Set<String>>([])
    /// Logins that ended before this node started are not enforced again:
    /// nobody is connected as them, and their rooms were told by the nodes
    /// that saw them end (a restart must not flood every room).
    private let startedAt = Int64(Date().timeIntervalSince1970)
    private let expiryTask = NIOLockedValueBox<Task<Void, Never>?>(nil)

    /// Beats, the fleet and cluster commands (nil until attached).
    public var operations: NodeOperations? { _operations.withLockedValue { $0 } }

    /// Attaches the node's operations (before its broker starts serving).
    public func attach(_ operations: NodeOperations) { _operations.withLockedValue { $0 = operations } }

    /// The frames of persisted rooms this node holds.
    public var frames: FrameStore? { persister?.store }
    /// What the persister did (stored, refused, replicated, expired…).
    public var persistenceStatistics: PersistenceStatistics? { persister?.statistics }

    /// Set the node up before `broker.start()`: with a cluster, the node
    /// replicates its membership log and key shares over the route links.
    /// Whether unencrypted rooms may be created is not a node's choice: it
    /// is the cluster-wide, admin-signed `ClusterSettings` in the log, which
    /// every node folds alike (a per-node flag was bypassed by replication).
    public init(broker: Broker, membership: MembershipStore, frames: FrameStore? = nil,
                persistence: PersistenceConfiguration = PersistenceConfiguration(),
                logger: Logger = Logger(label: "unibus.node")) {
        self.broker = broker
        self.membership = membership
        self.logger = logger
        let persister = frames.map { Persister(store: $0, configuration: persistence) }
        self.persister = persister
        if let cluster = broker.cluster {
            let replicator = Replicator()
            self.replicator = replicator
            replicator.attach(self)
            cluster.delegate = replicator
        } else {
            replicator = nil
        }
        persister?.attach(self)
        persister?.refresh()
        // Workload logins end by the clock, not by an operation: each second
        // this node closes the connections of those that expired.
        expiryTask.withLockedValue { task in
            task = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    guard let self else { return }
                    await self.enforceExpiries(now: Int64(Date().timeIntervalSince1970))
                }
            }
        }
    }

    deinit { expiryTask.withLockedValue { $0?.cancel() } }

    /// Closes every connection of each workload whose login expired by
    /// `now`, and tells the members of its rooms (their clients stop sharing
    /// keys with it and rotate, within their rotation interval). Each
    /// expiry is enforced once; a renewed login (a later expiry) is new.
    public func enforceExpiries(now: Int64) async {
        let state = membership.snapshot
        let due = state.workloads.values.filter { $0.expiresAt <= now && state.users[$0.key]?.status == .active }
        let fresh: [Workload] = enforcedExpiries.withLockedValue { enforced in
            let marks = Set(due.map { "\($0.key) \($0.expiresAt)" })
            let fresh = due.filter { $0.expiresAt >= startedAt && !enforced.contains("\($0.key) \($0.expiresAt)") }
            // Only what is still due is remembered: the set stays as small as the expired logins the log holds.
            enforced = marks
            return fresh
        }
        guard !fresh.isEmpty else { return }
        var rooms: Set<String> = []
        for workload in fresh.sorted(by: { $0.key < $1.key }) {
            log("workload login expired", ["key": workload.key, "role": workload.role, "expired": String(workload.expiresAt)])
            await broker.disconnect(userNKey: workload.key)
            rooms.formUnion(state.rooms(of: workload.key).map(\.id))
        }
        // One notice per room and live member, however many expired at once.
        for room in rooms.sorted() {
            let notice = MembershipNotice(event: MembershipNotice.membersEvent, kind: "workload.expire", room: room).encoded
            for recipient in (state.members[room] ?? [:]).keys.sorted() where state.isLive(recipient, now: now) {
                broker.publish(subject: ReservedNamespace.keyDeliverySubject(for: recipient), payload: notice)
            }
        }
    }

    /// Builds the broker configuration's authorizer for `store`.
    public static func authorizer(for store: MembershipStore, switches: NodeSwitches? = nil) -> any Authorizer {
        MembershipAuthorizer(store: store, switches: switches)
    }

    /// A record with string fields; refusals and failures say `.warning`.
    public func log(_ message: String, _ fields: [String: String], level: Logger.Level = .info) {
        logger.log(level: level, "\(message)", metadata: fields.mapValues { .string($0) })
    }

    /// Waits until every frame handed to the persister so far is stored
    /// (tests and orderly shutdown).
    public func settlePersistence() async { await persister?.settle() }

    /// Batches of this node's client frames no peer confirmed yet (lame
    /// duck keeps the routes up until none is left, within a bound).
    public var unconfirmedPersistedBatches: Int { persister?.unconfirmedBatches ?? 0 }

    /// Applies every persisted room's retention now.
    public func applyRetentionNow() { persister?.applyRetentionNow() }

    /// Verifies, applies and persists `operation` (accepted by this node's
    /// control plane at `arrival`, which bounds its signed time; nil for
    /// operations the node's own tools append), pushes it to the cluster,
    /// then brings open connections in line.
    @discardableResult
    public func apply(_ operation: SignedOperation, arrival: Date? = nil) async throws(MembershipError) -> MembershipState {
        let before = membership.snapshot
        let state = try membership.append(operation, arrival: arrival)
        broker.cluster?.broadcast(Replicator.operationFrame(operation))
        await applyEffects(before: before, after: state, kind: operation.envelope.operation.kind)
        return state
    }

    /// Merges an operation a peer holds. Returns the operations now stored
    /// (it and any that waited for it), which are worth relaying.
    func merge(_ operation: SignedOperation) async -> [SignedOperation] {
        let before = membership.snapshot
        let outcome: MergeOutcome
        do {
            outcome = try membership.merge(operation)
        } catch {
            refusedReplicationFrames.wrappingIncrement(ordering: .relaxed)
            log("replicated operation refused", ["id": operation.id, "error": "\(error)"])
            return []
        }
        let stored: [SignedOperation]
        switch outcome {
        case .known, .waiting:
            return []
        case .adopted(let replaced):
            log("adopted a checkpoint", ["id": operation.id, "replaced": String(replaced)])
            stored = [operation]
        case .stored(let refused, let also):
            if let refused {
                log("replicated operation refused by the rules at its place in the log",
                    ["id": operation.id, "kind": operation.envelope.operation.kind, "reason": "\(refused)"])
            }
            stored = [operation] + also
        }
        let after = membership.snapshot
        if after != before { await applyEffects(before: before, after: after, kind: operation.envelope.operation.kind) }
        return stored
    }

    /// Closes the connections of users who lost access, re-authorizes every
    /// open connection, and tells the members of changed rooms.
    private func applyEffects(before: MembershipState, after: MembershipState, kind: String) async {
        persister?.refresh()
        for (key, user) in before.users where user.status == .active && after.users[key]?.status != .active {
            await broker.disconnect(userNKey: key)
        }
        // Agents whose key was revoked (or is no longer an agent) are forgotten.
        operations?.agents.forget { key in key.map { after.users[$0]?.status != .active || after.users[$0]?.role != .agent } ?? false }
        await broker.reauthorize()
        announceMembershipChange(kind: kind, before: before, after: after)
    }

    /// Tells the members of every room whose members or state changed (before
    /// and after) on their key-delivery subject, so their clients refresh the
    /// member list, share keys with newcomers and rotate after a departure.
    func announceMembershipChange(kind: String, before: MembershipState, after: MembershipState) {
        let rooms = Set(before.rooms.keys).union(after.rooms.keys).filter { id in
            before.rooms[id] != after.rooms[id] || before.members[id] != after.members[id]
        }
        for room in rooms.sorted() where before.rooms[room] != nil {
            let recipients = Set(before.members[room].map { Array($0.keys) } ?? []).union(after.members[room].map { Array($0.keys) } ?? [])
            let notice = MembershipNotice(event: MembershipNotice.membersEvent, kind: kind, room: room).encoded
            for recipient in recipients.sorted() {
                broker.publish(subject: ReservedNamespace.keyDeliverySubject(for: recipient), payload: notice)
            }
        }
    }

    // MARK: key shares

    /// Stores shares accepted through this node's control plane, tells the
    /// local recipients, and pushes them to the cluster.
    public func storeKeyShares(_ shares: [KeyShare]) throws(MembershipError) {
        try membership.storeKeyShares(shares)
        notifyKeyShares(shares)
        broker.cluster?.broadcast(Replicator.sharesFrame(shares))
    }

    /// Acknowledges shares fetched through this node (each acknowledgement
    /// signed by the recipient) and tells the cluster. Returns how many took effect.
    public func acknowledgeKeyShares(_ acks: [SignedAck], by recipient: String) throws(MembershipError) -> Int {
        let done = try membership.acknowledgeKeyShares(acks, by: recipient)
        // Tombstones go after their retention even on a node with no peers.
        let now = Date()
        if lastPrune.withLockedValue({ last in
            guard now.timeIntervalSince(last) > 3600 else { return false }
            last = now
            return true
        }) {
            try? membership.pruneAcknowledgedKeyShares(now: now)
        }
        if !done.isEmpty { broker.cluster?.broadcast(Replicator.acksFrame(done)) }
        return done.count
    }

    /// Tells each recipient connected here that a share is waiting (no key material).
    func notifyKeyShares(_ shares: [KeyShare]) {
        for share in shares {
            let notice = KeyShareNotice(room: share.room, sessionID: share.sessionID, sender: share.sender).encoded
            broker.publish(subject: ReservedNamespace.keyDeliverySubject(for: share.recipient), payload: notice)
        }
    }
}

/// What a recipient is told on its key-delivery subject when a share waits
/// for it (no key material).
struct KeyShareNotice: Codable {
    var room: String
    var sessionID: String
    var sender: String

    enum CodingKeys: String, CodingKey {
        case room, sender
        case sessionID = "session_id"
    }

    var encoded: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? [UInt8](encoder.encode(self))) ?? []
    }
}
