import Atomics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import UnibusBroker
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusPersistence
import UnibusSQLite

/// How a node keeps persisted rooms (see docs/persistence.md).
public struct PersistenceConfiguration: Sendable {
    /// Frames one member may have stored in one room per `quotaWindow`
    /// (a steady 20,000 a second).
    public var senderMessagesPerWindow = 1_200_000
    /// Bytes of frames one member may have stored in one room per `quotaWindow`.
    public var senderBytesPerWindow = 1024 * 1024 * 1024
    public var quotaWindow: TimeInterval = 60
    /// How long a batch waits for a peer's confirmation before its receipts
    /// are dropped (the publisher then sends the frames again).
    public var peerConfirmationTimeout: TimeInterval = 5
    /// Frames, and bytes of them, waiting to be stored; beyond either,
    /// client publishes and peers' batches are not stored (and not
    /// acknowledged or confirmed: publishers resend, peers' publishers too).
    public var maximumQueuedFrames = 50_000
    public var maximumQueuedBytes = 64 * 1024 * 1024
    /// How often retention runs over every persisted room.
    public var retentionInterval: TimeInterval = 30

    public init() {}
}

/// What the persister did, for tests, `/metrics` and logs.
public final class PersistenceStatistics: Sendable {
    public let stored = ManagedAtomic<Int>(0)
    public let duplicates = ManagedAtomic<Int>(0)
    public let refused = ManagedAtomic<Int>(0)
    public let replicatedIn = ManagedAtomic<Int>(0)
    public let caughtUp = ManagedAtomic<Int>(0)
    public let droppedQueueFull = ManagedAtomic<Int>(0)
    public let expired = ManagedAtomic<Int>(0)
    public let commits = ManagedAtomic<Int>(0)
    public let receiptsUnconfirmed = ManagedAtomic<Int>(0)
    init() {}
}

/// The node's side of persisted rooms: it stores the frames its clients
/// publish to persisted rooms (verified, within quota), sends them to every
/// linked peer, tells the publisher when they are durable (here and on one
/// peer when one is linked), stores what peers send, catches up with a peer
/// when a link opens (anti-entropy), and applies retention.
///
/// All storage work runs on one serial queue, never on an event loop; the
/// broker's tap only copies the frame and enqueues it. Frames that arrive
/// while a commit runs are stored by the next one (group commit: one fsync
/// for many frames).
final class Persister: PublishTap, @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock` or confined to `queue`.
    let store: FrameStore
    let configuration: PersistenceConfiguration
    /// The quotas, changeable live by a signed `settings` command.
    let senderMessagesPerWindow: ManagedAtomic<Int>
    let senderBytesPerWindow: ManagedAtomic<Int>
    let statistics = PersistenceStatistics()
    private let nodeBox = NIOLockedValueBox<WeakNode>(WeakNode())
    /// The node (set by `attach` right after it is made; the node owns this,
    /// so the reference is weak).
    private var currentNode: Node? { nodeBox.withLockedValue { $0.node } }

    private struct WeakNode {
        weak var node: Node?
    }
    private let queue = DispatchQueue(label: "unibus.persister")
    private let lock = NIOLock()

    private enum Intake {
        case local(room: String, bytes: [UInt8], publisher: String)
        case replicated(room: String, frames: [FrameReplication.CarriedFrame], batch: UInt64, link: RouteLink?)
    }

    // Guarded by `lock`.
    private var intake: [Intake] = []
    /// Frames and bytes taken in and not yet processed (released after processing).
    private var queuedFrames = 0
    private var queuedBytes = 0
    private var scheduled = false
    /// Inventory parts received per peer, and the rooms answered, on the
    /// link they came on (another link's parts start afresh).
    private var inventories: [String: PeerInventory] = [:]
    /// Rooms waiting for an answer to a peer, and whether one is running.
    private var answering: [String: (running: Bool, rooms: [(room: String, horizon: UInt64, held: [[UInt8]: FrameReplication.StreamRanges], link: RouteLink)])] = [:]
    private var retentionTask: Task<Void, Never>?
    /// Persisted rooms by subject (what the broker taps).
    private var roomsBySubject: [String: String] = [:]
    /// Batches sent to peers, waiting for the first confirmation.
    private var awaiting: [UInt64: Awaiting] = [:]
    private var nextBatch: UInt64 = 1

    // Confined to `queue`.
    private var quotas: [QuotaKey: QuotaWindow] = [:]
    /// (room, sender, stream, index) of frames stored lately: a resend of one
    /// is acknowledged without its signature checked again (nothing new is
    /// stored for it, whatever its bytes). Bounded, oldest forgotten first.
    private var recent: [[UInt8]: [UInt8]] = [:]
    private var recentOrder: [[UInt8]] = []
    private var recentStart = 0
    static let recentMemory = 200_000
    private var lastRetention = Date.distantPast

    private struct Awaiting {
        let deadline: Date
        /// Frames in the batch: a peer's confirmation counts only if it holds them all.
        let expected: Int
        let receipts: [(publisher: String, receipt: DurabilityReceipt)]
    }

    private struct QuotaKey: Hashable {
        let room: String
        let sender: String
    }

    private struct QuotaWindow {
        var start: Date
        var messages: Int
        var bytes: Int
    }

    init(store: FrameStore, configuration: PersistenceConfiguration) {
        self.store = store
        self.configuration = configuration
        self.senderMessagesPerWindow = ManagedAtomic(configuration.senderMessagesPerWindow)
        self.senderBytesPerWindow = ManagedAtomic(configuration.senderBytesPerWindow)
        nextBatch = UInt64.random(in: 1...(1 << 48))
    }

    func attach(_ node: Node) {
        nodeBox.withLockedValue { $0.node = node }
        // Retention runs on a timer, so a quiet room expires too.
        let interval = configuration.retentionInterval
        retentionTask = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(interval))
                guard let self else { return }
                self.queue.async { self.applyRetention() }
            }
        }
    }

    deinit { retentionTask?.cancel() }

    // MARK: rooms

    /// Follows the membership state: taps the subjects of persisted open
    /// rooms. Reads the store's current state (effects of concurrent changes
    /// may run in any order; the latest state always wins).
    func refresh() {
        guard let node = currentNode else { return }
        let state = node.membership.snapshot
        var bySubject: [String: String] = [:]
        for room in state.rooms.values where room.policy.persist && room.archived == nil {
            bySubject[room.subject] = room.id
        }
        let changed = lock.withLock { () -> Bool in
            guard roomsBySubject != bySubject else { return false }
            roomsBySubject = bySubject
            return true
        }
        if changed { node.broker.setTap(bySubject.isEmpty ? nil : self, subjects: Set(bySubject.keys), owner: "persist") }
    }

    // MARK: intake

    /// A client published on a persisted room's subject (event loop: copy and go).
    func published(subject: String, payload: ByteBuffer, publisher: String?) {
        guard let publisher else { return }
        let bytes = Array(payload.readableBytesView)
        let accepted = lock.withLock { () -> Bool in
            guard let room = roomsBySubject[subject] else { return false }
            guard queuedFrames < configuration.maximumQueuedFrames, queuedBytes + bytes.count <= configuration.maximumQueuedBytes else { return false }
            intake.append(.local(room: room, bytes: bytes, publisher: publisher))
            queuedFrames += 1
            queuedBytes += bytes.count
            return true
        }
        if accepted { schedule() } else { statistics.droppedQueueFull.wrappingIncrement(ordering: .relaxed) }
    }

    /// A frame replication message from a peer.
    func received(_ bytes: ByteBufferView, from link: RouteLink) async {
        guard let node = currentNode else { return }
        let message: FrameReplication
        do { message = try FrameReplication(decoding: bytes) } catch {
            node.refusedReplicationFrames.wrappingIncrement(ordering: .relaxed)
            node.log("frame replication message refused", ["peer": link.peer.serverID, "error": "\(error)"])
            return
        }
        switch message {
        case .frames(let batch, let room, let frames):
            // Never wait with the link's reads paused (its pings would go
            // unanswered): over the bound, the batch is not taken and not
            // confirmed, and its frames come again (resent by their publisher,
            // or at the next catch-up).
            let size = frames.reduce(0) { $0 + $1.bytes.count }
            let taken = lock.withLock { () -> Bool in
                guard queuedFrames + frames.count <= configuration.maximumQueuedFrames,
                      queuedBytes + size <= configuration.maximumQueuedBytes else { return false }
                intake.append(.replicated(room: room, frames: frames, batch: batch, link: link))
                queuedFrames += frames.count
                queuedBytes += size
                return true
            }
            if taken { schedule() } else { statistics.droppedQueueFull.wrappingIncrement(by: frames.count, ordering: .relaxed) }
        case .stored(let batch, let count):
            confirm(batch: batch, count: count, by: link.peer.serverID)
        case .inventory(let room, let horizon, let last, let streams):
            takeInventory(room: room, horizon: horizon, last: last, streams: streams, from: link)
        }
    }

    /// A link opened: tell the peer what this node holds of each persisted
    /// room, so it sends what is missing here (and it does the same).
    func routeActivated(_ link: RouteLink) {
        // Heard of after the fact: a link replaced meanwhile is not told
        // anything. What the peer announced is kept by link in `takeInventory`
        // (frames come straight from the link and can be here before this).
        guard link.isActive else { return }
        Task {
            guard let node = self.currentNode else { return }
            let state = node.membership.snapshot
            let now = Self.nowMillis()
            for room in state.rooms.values.sorted(by: { $0.id < $1.id }) where room.policy.persist && room.archived == nil {
                guard let horizon = try? self.store.horizon(room: room.id, policy: room.policy, now: now),
                      let parts = try? self.store.inventory(room: room.id, horizon: horizon) else { continue }
                for (index, part) in parts.enumerated() {
                    await link.whenWritable()
                    link.send(FrameReplication.inventory(room: room.id, horizon: horizon, last: index == parts.count - 1, streams: part).encoded)
                }
            }
        }
    }

    /// A link closed: forget what its peer announced.
    func routeClosed(_ peer: String) {
        lock.withLock {
            inventories[peer] = nil
            answering[peer] = nil
        }
    }

    private func schedule() {
        let start = lock.withLock { () -> Bool in
            guard !scheduled else { return false }
            scheduled = true
            return true
        }
        if start { queue.async { self.drain() } }
    }

    // MARK: storing (on `queue`)

    private func drain() {
        while true {
            let batch = lock.withLock { () -> [Intake] in
                let taken = intake
                intake.removeAll(keepingCapacity: true)
                if taken.isEmpty { scheduled = false }
                return taken
            }
            guard !batch.isEmpty else { break }
            process(batch)
            // Released only now: what waits to be stored stays bounded while it is stored.
            var frames = 0, bytes = 0
            for item in batch {
                switch item {
                case .local(_, let payload, _):
                    frames += 1
                    bytes += payload.count
                case .replicated(_, let carried, _, _):
                    frames += carried.count
                    bytes += carried.reduce(0) { $0 + $1.bytes.count }
                }
            }
            lock.withLock {
                queuedFrames -= frames
                queuedBytes -= bytes
            }
        }
        sweepAwaiting()
        if Date().timeIntervalSince(lastRetention) >= configuration.retentionInterval { applyRetention() }
    }

    private enum Verdict: Sendable {
        case verified(VerifiedFrame)
        /// Stored lately under this identity by this sender: nothing to store.
        case held(sender: [UInt8], id: FrameID)
        case refused(FrameStorageError)
    }

    private struct Accepted {
        let insert: FrameStore.Insert
        /// The client that published it here (receipts), or nil for a peer's frame.
        let publisher: String?
    }

    private func process(_ batch: [Intake]) {
        guard let node = currentNode else { return }
        let state = node.membership.snapshot
        let now = Self.nowMillis()
        let clock = Date()
        var accepted: [Accepted] = []
        var refusals: [String: [String: [DurabilityReceipt.Refusal]]] = [:]   // publisher → room → refusals
        /// Peers' batches to confirm, with how many of their frames are held here after this commit.
        var confirmations: [(link: RouteLink, batch: UInt64, held: Int)] = []

        // Verification is the expensive part (an Ed25519 check per frame): spread it over the cores.
        struct Job { let room: String; let bytes: [UInt8]; let publisher: String?; let firstStored: UInt64; let confirmation: Int? }
        var jobs: [Job] = []
        for item in batch {
            switch item {
            case .local(let room, let bytes, let publisher):
                jobs.append(Job(room: room, bytes: bytes, publisher: publisher, firstStored: now, confirmation: nil))
            case .replicated(let room, let frames, let batch, let link):
                statistics.replicatedIn.wrappingIncrement(by: frames.count, ordering: .relaxed)
                var confirmation: Int?
                if let link, batch != 0 {
                    confirmation = confirmations.count
                    confirmations.append((link, batch, 0))
                }
                guard let policy = state.rooms[room]?.policy,
                      let horizon = try? store.horizon(room: room, policy: policy, now: now) else { continue }
                for frame in frames {
                    // Catch-up never brings back what retention removed; a
                    // peer's clock cannot make a frame outlive retention either.
                    let first = min(frame.firstStored, now)
                    guard first >= horizon else {
                        statistics.expired.wrappingIncrement(ordering: .relaxed)
                        continue
                    }
                    jobs.append(Job(room: room, bytes: frame.bytes, publisher: nil, firstStored: first, confirmation: confirmation))
                }
            }
        }
        let verdicts = verifyAll(jobs.map { ($0.room, $0.bytes, $0.publisher) }, state: state)
        // (A function of its own: its copy of the recent set is gone before
        // `remember` changes the set, which would otherwise copy it whole.)

        var acceptedConfirmation: [Int?] = []
        /// Whether each accepted frame was charged to its sender's quota (only those are refunded as duplicates).
        var charged: [Bool] = []
        /// Held already: acknowledged and replicated, not stored again.
        var heldAgain: [(room: String, sender: [UInt8], id: FrameID, bytes: [UInt8], publisher: String?, confirmation: Int?, firstStored: UInt64)] = []
        for (index, job) in jobs.enumerated() {
            guard let verdict = verdicts[index] else { continue }
            switch verdict {
            case .held(let sender, let id):
                statistics.duplicates.wrappingIncrement(ordering: .relaxed)
                heldAgain.append((job.room, sender, id, job.bytes, job.publisher, job.confirmation, job.firstStored))
            case .verified(let frame):
                var wasCharged = false
                if let publisher = job.publisher {
                    if let problem = chargeQuota(room: job.room, sender: publisher, bytes: frame.bytes.count, at: clock) {
                        // A resend of a frame held already is no new storage: it is acknowledged, not refused (nor charged).
                        if (try? store.contains(room: job.room, id: frame.id, sender: frame.sender)) != true {
                            statistics.refused.wrappingIncrement(ordering: .relaxed)
                            refusals[publisher, default: [:]][job.room, default: []].append(DurabilityReceipt.Refusal(frame.id, error: problem))
                            continue
                        }
                    } else {
                        wasCharged = true
                    }
                }
                accepted.append(Accepted(insert: FrameStore.Insert(room: job.room, frame: frame, firstStored: job.firstStored),
                                         publisher: job.publisher))
                acceptedConfirmation.append(job.confirmation)
                charged.append(wasCharged)
            case .refused(let error):
                statistics.refused.wrappingIncrement(ordering: .relaxed)
                if let publisher = job.publisher, let frame = FrameVerifier.identify(job.bytes) {
                    refusals[publisher, default: [:]][job.room, default: []].append(DurabilityReceipt.Refusal(frame.id, error: error))
                } else if job.publisher == nil {
                    node.log("a peer's frame was not stored", ["room": job.room, "error": "\(error)"])
                }
            }
        }

        var results: [Bool] = []
        if !accepted.isEmpty {
            do {
                results = try store.insert(accepted.map(\.insert))
                statistics.commits.wrappingIncrement(ordering: .relaxed)
            } catch {
                // Nothing was stored: no receipt, no confirmation (publishers resend, peers retry at the next link).
                node.log("storing frames failed", ["error": "\(error)", "frames": String(accepted.count)])
                return
            }
        }
        for (index, item) in accepted.enumerated() where index < results.count && results[index] {
            remember(Self.recentKey(room: item.insert.room, sender: item.insert.frame.sender, id: item.insert.frame.id),
                     digest: Self.digest(item.insert.frame.bytes))
        }
        for (index, new) in results.enumerated() {
            if new { statistics.stored.wrappingIncrement(ordering: .relaxed) } else {
                statistics.duplicates.wrappingIncrement(ordering: .relaxed)
                // Duplicates take no storage: what they were charged is given back.
                if charged[index], let publisher = accepted[index].publisher { refundQuota(room: accepted[index].insert.room, sender: publisher,
                                                                           bytes: accepted[index].insert.frame.bytes.count) }
            }
            if let confirmation = acceptedConfirmation[index] { confirmations[confirmation].held += 1 }
        }
        for again in heldAgain { if let confirmation = again.confirmation { confirmations[confirmation].held += 1 } }
        // A peer's batch is confirmed with how many of its frames this node
        // now holds; the sender counts it only if that is all of them.
        for (link, batch, held) in confirmations {
            link.send(FrameReplication.stored(batch: batch, count: held).encoded)
        }
        for (publisher, rooms) in refusals {
            for (room, refused) in rooms {
                publishReceipt(DurabilityReceipt(room: room, node: node.broker.serverID, durability: .local, peer: nil, stored: [], refused: refused),
                               to: publisher)
            }
        }
        replicateAndAcknowledge(accepted.compactMap { item in
            item.publisher.map { Outgoing(room: item.insert.room, id: item.insert.frame.id, bytes: item.insert.frame.bytes,
                                          firstStored: item.insert.firstStored, publisher: $0) }
        } + heldAgain.compactMap { again in
            again.publisher.map { Outgoing(room: again.room, id: again.id, bytes: again.bytes, firstStored: again.firstStored, publisher: $0) }
        })
        let touched = Set(accepted.map(\.insert.room))
        for room in touched {
            guard let policy = state.rooms[room]?.policy else { continue }
            let held = store.usage(of: room)
            if held.count > policy.retainMessages || held.bytes > policy.retainBytes {
                statistics.expired.wrappingIncrement(by: (try? store.applyRetention(room: room, policy: policy, now: now)) ?? 0, ordering: .relaxed)
            }
        }
    }

    /// A frame a client published here, on its way to peers and its receipt.
    private struct Outgoing {
        let room: String
        let id: FrameID
        let bytes: [UInt8]
        let firstStored: UInt64
        let publisher: String
    }

    /// Sends this node's frames from its clients to every linked peer and
    /// tells each publisher once they are durable: at the first peer's
    /// confirmation of a whole batch, or now when no peer is linked.
    private func replicateAndAcknowledge(_ outgoing: [Outgoing]) {
        guard let node = currentNode else { return }
        guard !outgoing.isEmpty else { return }
        var byRoom: [String: [Outgoing]] = [:]
        for item in outgoing { byRoom[item.room, default: []].append(item) }
        let peers = node.broker.cluster?.peers.count ?? 0
        for (room, items) in byRoom {
            guard peers > 0, let cluster = node.broker.cluster else {
                var perPublisher: [String: [DurabilityReceipt.Entry]] = [:]
                for item in items { perPublisher[item.publisher, default: []].append(DurabilityReceipt.Entry(item.id)) }
                for (publisher, entries) in perPublisher {
                    publishReceipt(DurabilityReceipt(room: room, node: node.broker.serverID, durability: .local, peer: nil, stored: entries, refused: []),
                                   to: publisher)
                }
                continue
            }
            var start = 0
            while start < items.count {
                var end = start, bytes = 0
                while end < items.count, end - start < FrameReplication.maximumFrames,
                      bytes + items[end].bytes.count <= FrameReplication.maximumBatchBytes / 2 || end == start {
                    bytes += items[end].bytes.count
                    end += 1
                }
                let slice = items[start..<end]
                let batch = lock.withLock { () -> UInt64 in
                    nextBatch &+= 1
                    if nextBatch == 0 { nextBatch = 1 }
                    return nextBatch
                }
                var receipts: [String: [DurabilityReceipt.Entry]] = [:]
                for item in slice { receipts[item.publisher, default: []].append(DurabilityReceipt.Entry(item.id)) }
                lock.withLock {
                    awaiting[batch] = Awaiting(deadline: Date().addingTimeInterval(configuration.peerConfirmationTimeout), expected: slice.count,
                                               receipts: receipts.map { ($0.key, DurabilityReceipt(room: room, node: node.broker.serverID,
                                                                                                   durability: .peer, peer: nil, stored: $0.value, refused: [])) })
                }
                let message = FrameReplication.frames(batch: batch, room: room, frames: slice.map {
                    FrameReplication.CarriedFrame(firstStored: $0.firstStored, bytes: $0.bytes)
                })
                cluster.broadcast(message.encoded)
                start = end
            }
        }
    }

    /// Batches of this node's client frames sent to peers and not yet
    /// confirmed by any (lame duck waits for none before it stops).
    var unconfirmedBatches: Int { lock.withLock { awaiting.count } }

    private func confirm(batch: UInt64, count: Int, by peer: String) {
        // A peer that holds only part of the batch (it refused some: its
        // membership may lag) confirms nothing; the publisher resends.
        guard let waiting = lock.withLock({ () -> Awaiting? in
            guard let waiting = awaiting[batch], count >= waiting.expected else { return nil }
            awaiting[batch] = nil
            return waiting
        }) else { return }
        for (publisher, receipt) in waiting.receipts {
            var confirmed = receipt
            confirmed.peer = peer
            publishReceipt(confirmed, to: publisher)
        }
    }

    private func sweepAwaiting() {
        let now = Date()
        let expired = lock.withLock { () -> Int in
            let late = awaiting.filter { $0.value.deadline < now }.map(\.key)
            for batch in late { awaiting[batch] = nil }
            return late.count
        }
        if expired > 0 { statistics.receiptsUnconfirmed.wrappingIncrement(by: expired, ordering: .relaxed) }
    }

    /// Sends a receipt in parts small enough for any client (a receipt over
    /// its max payload once cut the publisher's connection, which then sent
    /// everything again): at most 1,000 stored and 100 refused frames each.
    private func publishReceipt(_ receipt: DurabilityReceipt, to publisher: String) {
        guard let node = currentNode else { return }
        let subject = ReservedNamespace.receiptSubject(for: publisher)
        var stored = receipt.stored[...], refused = receipt.refused[...]
        repeat {
            var part = receipt
            part.stored = Array(stored.prefix(1000))
            part.refused = Array(refused.prefix(100))
            stored = stored.dropFirst(part.stored.count)
            refused = refused.dropFirst(part.refused.count)
            node.broker.publish(subject: subject, payload: part.encoded)
        } while !stored.isEmpty || !refused.isEmpty
    }

    /// Verifies frames (spread over the cores for large batches). A frame held
    /// lately (the same identity from the same sender, the same bytes) whose
    /// sender may still publish there is a resend: acknowledged without a
    /// second signature check, and never stored again.
    private func verifyAll(_ work: [(room: String, bytes: [UInt8], publisher: String?)], state: MembershipState) -> [Verdict?] {
        let held = recent
        @Sendable func verify(_ index: Int) -> Verdict {
            let job = work[index]
            if let (sender, id) = FrameVerifier.identify(job.bytes),
               let digest = held[Self.recentKey(room: job.room, sender: sender, id: id)], digest == Self.digest(job.bytes),
               let key = Ed25519PublicKey(bytes: sender), case let nkey = NKey.encodePublicKey(key, type: .user),
               job.publisher == nil || job.publisher == nkey, state.members[job.room]?[nkey] != nil {
                return .held(sender: sender, id: id)
            }
            do throws(FrameStorageError) {
                return .verified(try FrameVerifier.verify(job.bytes, room: job.room, in: state, publisher: job.publisher))
            } catch {
                return .refused(error)
            }
        }
        var verdicts = [Verdict?](repeating: nil, count: work.count)
        if work.count >= 64 {
            let chunk = 32
            let chunks = (work.count + chunk - 1) / chunk
            let results = NIOLockedValueBox(verdicts)
            DispatchQueue.concurrentPerform(iterations: chunks) { part in
                let range = (part * chunk)..<min(work.count, (part + 1) * chunk)
                let local = range.map { verify($0) }
                results.withLockedValue { all in for (offset, verdict) in zip(range, local) { all[offset] = verdict } }
            }
            verdicts = results.withLockedValue { $0 }
        } else {
            for index in work.indices { verdicts[index] = verify(index) }
        }
        return verdicts
    }

    static func digest(_ bytes: [UInt8]) -> [UInt8] { Array(Digest.sha256(bytes).prefix(16)) }

    static func recentKey(room: String, sender: [UInt8], id: FrameID) -> [UInt8] {
        var key = Array(room.utf8) + [0] + sender + id.stream
        withUnsafeBytes(of: id.index.bigEndian) { key.append(contentsOf: $0) }
        return key
    }

    private func remember(_ key: [UInt8], digest: [UInt8]) {
        guard recent.updateValue(digest, forKey: key) == nil else { return }
        recentOrder.append(key)
        if recentOrder.count - recentStart > Self.recentMemory {
            recent.removeValue(forKey: recentOrder[recentStart])
            recentStart += 1
            if recentStart > Self.recentMemory {
                recentOrder.removeFirst(recentStart)
                recentStart = 0
            }
        }
    }

    /// Gives back what a frame that turned out to be a duplicate was charged.
    private func refundQuota(room: String, sender: String, bytes: Int) {
        let key = QuotaKey(room: room, sender: sender)
        guard var window = quotas[key] else { return }
        window.messages = max(0, window.messages - 1)
        window.bytes = max(0, window.bytes - bytes)
        quotas[key] = window
    }

    /// Charges one frame to its sender's quota in `room`; the problem when over it.
    private func chargeQuota(room: String, sender: String, bytes: Int, at now: Date) -> FrameStorageError? {
        let key = QuotaKey(room: room, sender: sender)
        var window = quotas[key] ?? QuotaWindow(start: now, messages: 0, bytes: 0)
        if now.timeIntervalSince(window.start) >= configuration.quotaWindow { window = QuotaWindow(start: now, messages: 0, bytes: 0) }
        let messageQuota = senderMessagesPerWindow.load(ordering: .relaxed)
        let byteQuota = senderBytesPerWindow.load(ordering: .relaxed)
        guard window.messages < messageQuota else {
            return .overQuota("\(messageQuota) frames per \(Int(configuration.quotaWindow)) s")
        }
        guard window.bytes + bytes <= byteQuota else {
            return .overQuota("\(byteQuota) bytes per \(Int(configuration.quotaWindow)) s")
        }
        window.messages += 1
        window.bytes += bytes
        quotas[key] = window
        if quotas.count > 100_000 { quotas = quotas.filter { now.timeIntervalSince($0.value.start) < configuration.quotaWindow } }
        return nil
    }

    // MARK: anti-entropy

    /// One part of a peer's inventory of `room`; after the last part, the
    /// frames it lacks are sent (once per room and link, one room at a time
    /// per peer, paced by the link's outbound queue).
    private func takeInventory(room: String, horizon: UInt64, last: Bool, streams: [FrameReplication.StreamRanges], from link: RouteLink) {
        // A replaced link's late parts would mix into the active link's.
        guard link.isActive else { return }
        let peer = link.peer.serverID
        let complete = lock.withLock { () -> (horizon: UInt64, held: PeerInventory.Held)? in
            // Once per room and link (a replaced link's answers do not count).
            // Taken out while it changes, so the dictionary holds no second copy.
            var inventory = inventories.removeValue(forKey: peer).flatMap { $0.link == link.linkID ? $0 : nil }
                ?? PeerInventory(link: link.linkID)
            let complete = inventory.take(room: room, horizon: horizon, streams: streams, last: last)
            inventories[peer] = inventory
            return complete
        }
        guard let complete else { return }
        let start = lock.withLock { () -> Bool in
            var state = answering[peer] ?? (false, [])
            state.rooms.append((room, complete.horizon, complete.held, link))
            let start = !state.running
            state.running = true
            answering[peer] = state
            return start
        }
        guard start else { return }
        Task { await self.answerInventories(of: peer) }
    }

    private func answerInventories(of peer: String) async {
        while let next = lock.withLock({ () -> (room: String, horizon: UInt64, held: [[UInt8]: FrameReplication.StreamRanges], link: RouteLink)? in
            guard var state = answering[peer], !state.rooms.isEmpty else {
                answering[peer] = nil
                return nil
            }
            let next = state.rooms.removeFirst()
            answering[peer] = state
            return next
        }) {
            await answerInventory(room: next.room, horizon: next.horizon, held: next.held, link: next.link)
        }
    }

    private func answerInventory(room: String, horizon: UInt64, held: [[UInt8]: FrameReplication.StreamRanges], link: RouteLink) async {
        guard let node = currentNode, let policy = node.membership.snapshot.rooms[room]?.policy, policy.persist else { return }
        // Never below the receiver's horizon, nor below this node's own.
        let own = (try? store.horizon(room: room, policy: policy, now: Self.nowMillis())) ?? horizon
        var after: Int64 = 0
        var sent = 0
        // Stops when the link is no longer the peer's (replaced or closed).
        while link.isActive, lock.withLock({ answering[link.peer.serverID] != nil }) {
            guard let (frames, last) = try? store.missing(room: room, held: held, horizon: max(horizon, own), after: after, limit: 500),
                  let last else { break }
            if !frames.isEmpty {
                await link.whenWritable()
                link.send(FrameReplication.frames(batch: 0, room: room, frames: frames.map {
                    FrameReplication.CarriedFrame(firstStored: $0.firstStored, bytes: $0.bytes)
                }).encoded)
                sent += frames.count
            }
            after = last
        }
        if sent > 0 {
            statistics.caughtUp.wrappingIncrement(by: sent, ordering: .relaxed)
            node.log("sent a peer the frames it lacked", ["peer": link.peer.serverID, "room": room, "frames": String(sent)])
        }
    }

    // MARK: retention (on `queue`)

    private func applyRetention() {
        guard let node = currentNode else { return }
        lastRetention = Date()
        let state = node.membership.snapshot
        let now = Self.nowMillis()
        var persisted: Set<String> = []
        for room in state.rooms.values where room.policy.persist && room.archived == nil {
            persisted.insert(room.id)
            if let removed = try? store.applyRetention(room: room.id, policy: room.policy, now: now), removed > 0 {
                statistics.expired.wrappingIncrement(by: removed, ordering: .relaxed)
            }
        }
        // Archived rooms and rooms no longer persisted keep nothing.
        for room in store.rooms where !persisted.contains(room) {
            try? store.drop(room: room)
        }
    }

    /// Runs retention now (tests, and `unibusd` at start).
    func applyRetentionNow() {
        queue.sync { applyRetention() }
    }

    /// Waits until everything queued so far is stored (tests).
    func settle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.drain()
                continuation.resume()
            }
        }
    }

    static func nowMillis() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1000)) }
}
