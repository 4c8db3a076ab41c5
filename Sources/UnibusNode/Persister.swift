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
    /// Frames one member may have stored in one room per `quotaWindow`.
    public var senderMessagesPerWindow = 200_000
    /// Bytes of frames one member may have stored in one room per `quotaWindow`.
    public var senderBytesPerWindow = 256 * 1024 * 1024
    public var quotaWindow: TimeInterval = 60
    /// How long a batch waits for a peer's confirmation before its receipts
    /// are dropped (the publisher then sends the frames again).
    public var peerConfirmationTimeout: TimeInterval = 5
    /// Frames waiting to be stored; beyond it, client publishes are not
    /// stored (and not acknowledged: the publisher resends) and peers wait.
    public var maximumQueuedFrames = 50_000
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
    private var queuedFrames = 0
    private var scheduled = false
    /// Persisted rooms by subject (what the broker taps).
    private var roomsBySubject: [String: String] = [:]
    /// Batches sent to peers, waiting for the first confirmation.
    private var awaiting: [UInt64: Awaiting] = [:]
    private var nextBatch: UInt64 = 1

    // Confined to `queue`.
    private var quotas: [QuotaKey: QuotaWindow] = [:]
    private var lastRetention = Date.distantPast

    private struct Awaiting {
        let deadline: Date
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
        nextBatch = UInt64.random(in: 1...(1 << 48))
    }

    func attach(_ node: Node) { nodeBox.withLockedValue { $0.node = node } }

    // MARK: rooms

    /// Follows the membership state: taps the subjects of persisted open rooms.
    func refresh(_ state: MembershipState) {
        guard let node = currentNode else { return }
        var bySubject: [String: String] = [:]
        for room in state.rooms.values where room.policy.persist && room.archived == nil {
            bySubject[room.subject] = room.id
        }
        let changed = lock.withLock { () -> Bool in
            guard roomsBySubject != bySubject else { return false }
            roomsBySubject = bySubject
            return true
        }
        if changed { node.broker.setTap(bySubject.isEmpty ? nil : self, subjects: Set(bySubject.keys)) }
    }

    // MARK: intake

    /// A client published on a persisted room's subject (event loop: copy and go).
    func published(subject: String, payload: ByteBuffer, publisher: String?) {
        guard let publisher else { return }
        let bytes = Array(payload.readableBytesView)
        let accepted = lock.withLock { () -> Bool in
            guard let room = roomsBySubject[subject] else { return false }
            guard queuedFrames < configuration.maximumQueuedFrames else { return false }
            intake.append(.local(room: room, bytes: bytes, publisher: publisher))
            queuedFrames += 1
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
            // Peers wait (this link reads nothing more) while the queue is full.
            var waited = 0
            while lock.withLock({ queuedFrames >= configuration.maximumQueuedFrames }) && waited < 2000 {
                try? await Task.sleep(for: .milliseconds(5))
                waited += 1
            }
            lock.withLock {
                intake.append(.replicated(room: room, frames: frames, batch: batch, link: link))
                queuedFrames += frames.count
            }
            schedule()
        case .stored(let batch, _):
            confirm(batch: batch, by: link.peer.serverID)
        case .inventory(let room, let horizon, let streams):
            queue.async { self.answerInventory(room: room, horizon: horizon, streams: streams, link: link) }
        }
    }

    /// A link opened: tell the peer what this node holds of each persisted
    /// room, so it sends what is missing here (and it does the same).
    func routeActivated(_ link: RouteLink) {
        queue.async {
            guard let node = self.currentNode else { return }
            let state = node.membership.snapshot
            let now = Self.nowMillis()
            for room in state.rooms.values where room.policy.persist && room.archived == nil {
                guard let horizon = try? self.store.horizon(room: room.id, policy: room.policy, now: now),
                      let chunks = try? self.store.inventory(room: room.id, horizon: horizon) else { continue }
                for chunk in chunks {
                    link.send(FrameReplication.inventory(room: room.id, horizon: horizon, streams: chunk).encoded)
                }
            }
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
                queuedFrames = 0
                if taken.isEmpty { scheduled = false }
                return taken
            }
            guard !batch.isEmpty else { break }
            process(batch)
        }
        sweepAwaiting()
        if Date().timeIntervalSince(lastRetention) >= configuration.retentionInterval { applyRetention() }
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
        var confirmations: [(link: RouteLink, batch: UInt64, count: Int)] = []

        // Verification is the expensive part (an Ed25519 check per frame): spread it over the cores.
        struct Job { let room: String; let bytes: [UInt8]; let publisher: String?; let firstStored: UInt64 }
        var jobs: [Job] = []
        for item in batch {
            switch item {
            case .local(let room, let bytes, let publisher):
                jobs.append(Job(room: room, bytes: bytes, publisher: publisher, firstStored: now))
            case .replicated(let room, let frames, let batch, let link):
                guard let policy = state.rooms[room]?.policy,
                      let horizon = try? store.horizon(room: room, policy: policy, now: now) else {
                    if let link, batch != 0 { confirmations.append((link, batch, 0)) }
                    continue
                }
                for frame in frames {
                    // Catch-up never brings back what retention removed; a
                    // peer's clock cannot make a frame outlive retention either.
                    let first = min(frame.firstStored, now)
                    guard first >= horizon else {
                        statistics.expired.wrappingIncrement(ordering: .relaxed)
                        continue
                    }
                    jobs.append(Job(room: room, bytes: frame.bytes, publisher: nil, firstStored: first))
                }
                if let link, batch != 0 { confirmations.append((link, batch, frames.count)) }
                statistics.replicatedIn.wrappingIncrement(by: frames.count, ordering: .relaxed)
            }
        }
        var verdicts = [Result<VerifiedFrame, FrameStorageError>?](repeating: nil, count: jobs.count)
        let work = jobs
        @Sendable func verify(_ index: Int) -> Result<VerifiedFrame, FrameStorageError> {
            let job = work[index]
            do throws(FrameStorageError) {
                return .success(try FrameVerifier.verify(job.bytes, room: job.room, in: state, publisher: job.publisher))
            } catch {
                return .failure(error)
            }
        }
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
            for index in jobs.indices { verdicts[index] = verify(index) }
        }

        for (index, job) in jobs.enumerated() {
            guard let verdict = verdicts[index] else { continue }
            switch verdict {
            case .success(let frame):
                if let publisher = job.publisher, let problem = chargeQuota(room: job.room, sender: publisher, bytes: frame.bytes.count, at: clock) {
                    statistics.refused.wrappingIncrement(ordering: .relaxed)
                    refusals[publisher, default: [:]][job.room, default: []].append(DurabilityReceipt.Refusal(frame.id, error: problem))
                    continue
                }
                accepted.append(Accepted(insert: FrameStore.Insert(room: job.room, frame: frame, firstStored: job.firstStored),
                                         publisher: job.publisher))
            case .failure(let error):
                statistics.refused.wrappingIncrement(ordering: .relaxed)
                if let publisher = job.publisher, let frame = try? FrameVerifier.verify(job.bytes, policy: state.rooms[job.room]?.policy ?? RoomPolicy()) {
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
        for new in results {
            if new { statistics.stored.wrappingIncrement(ordering: .relaxed) } else { statistics.duplicates.wrappingIncrement(ordering: .relaxed) }
        }
        for (link, batch, count) in confirmations {
            link.send(FrameReplication.stored(batch: batch, count: count).encoded)
        }
        for (publisher, rooms) in refusals {
            for (room, refused) in rooms {
                publishReceipt(DurabilityReceipt(room: room, node: node.broker.serverID, durability: .local, peer: nil, stored: [], refused: refused),
                               to: publisher)
            }
        }
        replicateAndAcknowledge(accepted.filter { $0.publisher != nil })
        let touched = Set(accepted.map(\.insert.room))
        for room in touched {
            guard let policy = state.rooms[room]?.policy else { continue }
            let held = store.usage(of: room)
            if held.count > policy.retainMessages || held.bytes > policy.retainBytes {
                statistics.expired.wrappingIncrement(by: (try? store.applyRetention(room: room, policy: policy, now: now)) ?? 0, ordering: .relaxed)
            }
        }
    }

    /// Sends this node's new frames to every linked peer and tells each
    /// publisher once they are durable: at the first peer's confirmation, or
    /// now when no peer is linked.
    private func replicateAndAcknowledge(_ accepted: [Accepted]) {
        guard let node = currentNode else { return }
        guard !accepted.isEmpty else { return }
        var byRoom: [String: [Accepted]] = [:]
        for item in accepted { byRoom[item.insert.room, default: []].append(item) }
        let peers = node.broker.cluster?.peers.count ?? 0
        for (room, items) in byRoom {
            var perPublisher: [String: [DurabilityReceipt.Entry]] = [:]
            for item in items { if let publisher = item.publisher { perPublisher[publisher, default: []].append(DurabilityReceipt.Entry(item.insert.frame.id)) } }
            guard peers > 0, let cluster = node.broker.cluster else {
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
                      bytes + items[end].insert.frame.bytes.count <= FrameReplication.maximumBatchBytes / 2 || end == start {
                    bytes += items[end].insert.frame.bytes.count
                    end += 1
                }
                let slice = items[start..<end]
                let batch = lock.withLock { () -> UInt64 in
                    nextBatch &+= 1
                    if nextBatch == 0 { nextBatch = 1 }
                    return nextBatch
                }
                var receipts: [String: [DurabilityReceipt.Entry]] = [:]
                for item in slice { if let publisher = item.publisher { receipts[publisher, default: []].append(DurabilityReceipt.Entry(item.insert.frame.id)) } }
                lock.withLock {
                    awaiting[batch] = Awaiting(deadline: Date().addingTimeInterval(configuration.peerConfirmationTimeout),
                                               receipts: receipts.map { ($0.key, DurabilityReceipt(room: room, node: node.broker.serverID,
                                                                                                   durability: .peer, peer: nil, stored: $0.value, refused: [])) })
                }
                let message = FrameReplication.frames(batch: batch, room: room, frames: slice.map {
                    FrameReplication.CarriedFrame(firstStored: $0.insert.firstStored, bytes: $0.insert.frame.bytes)
                })
                cluster.broadcast(message.encoded)
                start = end
            }
        }
    }

    private func confirm(batch: UInt64, by peer: String) {
        guard let waiting = lock.withLock({ awaiting.removeValue(forKey: batch) }) else { return }
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

    private func publishReceipt(_ receipt: DurabilityReceipt, to publisher: String) {
        guard let node = currentNode else { return }
        node.broker.publish(subject: ReservedNamespace.receiptSubject(for: publisher), payload: receipt.encoded)
    }

    /// Charges one frame to its sender's quota in `room`; the problem when over it.
    private func chargeQuota(room: String, sender: String, bytes: Int, at now: Date) -> FrameStorageError? {
        let key = QuotaKey(room: room, sender: sender)
        var window = quotas[key] ?? QuotaWindow(start: now, messages: 0, bytes: 0)
        if now.timeIntervalSince(window.start) >= configuration.quotaWindow { window = QuotaWindow(start: now, messages: 0, bytes: 0) }
        guard window.messages < configuration.senderMessagesPerWindow else {
            return .overQuota("\(configuration.senderMessagesPerWindow) frames per \(Int(configuration.quotaWindow)) s")
        }
        guard window.bytes + bytes <= configuration.senderBytesPerWindow else {
            return .overQuota("\(configuration.senderBytesPerWindow) bytes per \(Int(configuration.quotaWindow)) s")
        }
        window.messages += 1
        window.bytes += bytes
        quotas[key] = window
        if quotas.count > 100_000 { quotas = quotas.filter { now.timeIntervalSince($0.value.start) < configuration.quotaWindow } }
        return nil
    }

    // MARK: anti-entropy (on `queue`)

    private func answerInventory(room: String, horizon: UInt64, streams: [FrameReplication.StreamRanges], link: RouteLink) {
        guard let node = currentNode else { return }
        guard let policy = node.membership.snapshot.rooms[room]?.policy, policy.persist else { return }
        var held: [[UInt8]: FrameReplication.StreamRanges] = [:]
        for stream in streams {
            if let known = held[stream.stream] {
                held[stream.stream] = FrameReplication.StreamRanges(stream: stream.stream, ranges: known.ranges + stream.ranges)
            } else {
                held[stream.stream] = stream
            }
        }
        // Never below the receiver's horizon, nor below this node's own.
        let own = (try? store.horizon(room: room, policy: policy, now: Self.nowMillis())) ?? horizon
        var after: Int64 = 0
        var sent = 0
        while true {
            guard let (frames, last) = try? store.missing(room: room, held: held, horizon: max(horizon, own), after: after, limit: 500),
                  let last else { break }
            if !frames.isEmpty {
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
