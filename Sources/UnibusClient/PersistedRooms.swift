import Foundation
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusPersistence

/// Frames of persisted rooms that were sent and wait for a node to say they
/// are stored, in the order they were first sent (resends keep it), with
/// whoever waits for them. Owned by the client actor.
struct UnacknowledgedFrames {
    struct Entry {
        let room: String
        let subject: String
        let frame: [UInt8]
        var sentAt: ContinuousClock.Instant
        var sends: Int
        /// When it was sealed (ms since the epoch): receivers refuse live
        /// frames older than the room's window, so it cannot wait forever.
        let sealedAt: UInt64
    }

    private(set) var entries: [FrameID: Entry] = [:]
    private var order: [FrameID] = []
    private var waiters: [FrameID: [(token: UInt64, continuation: CheckedContinuation<DurabilityReceipt, any Error>)]] = [:]
    /// Waiters for the set to empty, with how many frames had failed when each began.
    private var drainWaiters: [(token: UInt64, failedBefore: Int, continuation: CheckedContinuation<Void, any Error>)] = []
    private var nextToken: UInt64 = 0
    /// How recent frames ended (bounded), for waiters that come after the receipt.
    private(set) var settled: [FrameID: Result<DurabilityReceipt, ClientError>] = [:]
    private var settledOrder: [FrameID] = []
    static let settledMemory = 200_000
    /// Frames a node refused to store, since the client started.
    private(set) var refusedTotal = 0

    var count: Int { entries.count }
    /// Bytes of the frames held.
    private(set) var bytes = 0

    private mutating func remember(_ id: FrameID, _ outcome: Result<DurabilityReceipt, ClientError>) {
        if settled.updateValue(outcome, forKey: id) == nil { settledOrder.append(id) }
        if settledOrder.count > Self.settledMemory {
            let drop = settledOrder.count - Self.settledMemory / 2
            for old in settledOrder.prefix(drop) { settled[old] = nil }
            settledOrder.removeFirst(drop)
        }
    }

    mutating func add(_ id: FrameID, _ entry: Entry) {
        if let old = entries.updateValue(entry, forKey: id) { bytes -= old.frame.count } else { order.append(id) }
        bytes += entry.frame.count
    }

    /// Unacknowledged frames in first-sent order.
    var inOrder: [(FrameID, Entry)] {
        order.compactMap { id in entries[id].map { (id, $0) } }
    }

    mutating func markSent(_ id: FrameID, at instant: ContinuousClock.Instant) {
        entries[id]?.sentAt = instant
        entries[id]?.sends += 1
    }

    mutating func token() -> UInt64 {
        nextToken &+= 1
        return nextToken
    }

    mutating func wait(for id: FrameID, token: UInt64, _ continuation: CheckedContinuation<DurabilityReceipt, any Error>) {
        waiters[id, default: []].append((token, continuation))
    }

    mutating func waitForAll(token: UInt64, _ continuation: CheckedContinuation<Void, any Error>) {
        if entries.isEmpty { continuation.resume() } else { drainWaiters.append((token, refusedTotal, continuation)) }
    }

    /// `id` is stored: it leaves the set and its waiters get the receipt.
    mutating func acknowledge(_ id: FrameID, receipt: DurabilityReceipt) {
        guard let entry = entries.removeValue(forKey: id) else { return }
        bytes -= entry.frame.count
        // Only this frame's part is remembered (a node's receipt may be large).
        let own = DurabilityReceipt(room: receipt.room, node: String(receipt.node.prefix(64)), durability: receipt.durability,
                                    peer: receipt.peer.map { String($0.prefix(64)) }, stored: [DurabilityReceipt.Entry(id)], refused: [])
        remember(id, .success(own))
        for waiter in waiters.removeValue(forKey: id) ?? [] { waiter.continuation.resume(returning: receipt) }
        finishIfDrained()
    }

    /// A node refused `id`: it leaves the set (sending it again would be refused again).
    mutating func refuse(_ id: FrameID, error: ClientError) {
        guard let entry = entries.removeValue(forKey: id) else { return }
        bytes -= entry.frame.count
        remember(id, .failure(error))
        refusedTotal += 1
        for waiter in waiters.removeValue(forKey: id) ?? [] { waiter.continuation.resume(throwing: error) }
        finishIfDrained()
    }

    /// A waiter gave up (its frame stays, and is sent again).
    mutating func expire(_ id: FrameID?, token: UInt64, error: any Error) {
        if let id {
            guard let index = waiters[id]?.firstIndex(where: { $0.token == token }), let waiter = waiters[id]?.remove(at: index) else { return }
            if waiters[id]?.isEmpty == true { waiters[id] = nil }
            waiter.continuation.resume(throwing: error)
        } else if let index = drainWaiters.firstIndex(where: { $0.token == token }) {
            drainWaiters.remove(at: index).continuation.resume(throwing: error)
        }
    }

    mutating func failAll(_ error: any Error) {
        for (_, list) in waiters { for waiter in list { waiter.continuation.resume(throwing: error) } }
        waiters = [:]
        for waiter in drainWaiters { waiter.continuation.resume(throwing: error) }
        drainWaiters = []
    }

    private mutating func finishIfDrained() {
        if order.count > 2 * entries.count + 1024 { order = order.filter { entries[$0] != nil } }
        guard entries.isEmpty else { return }
        order = []
        for waiter in drainWaiters {
            // Empty is not stored: frames refused or given up meanwhile are an error.
            let failed = refusedTotal - waiter.failedBefore
            if failed > 0 {
                waiter.continuation.resume(throwing: ClientError.notStored(room: "*", reason: "\(failed) frame(s) were refused or given up while waiting"))
            } else {
                waiter.continuation.resume()
            }
        }
        drainWaiters = []
    }
}

/// One message read back from a persisted room's history.
public struct HistoryMessage: Sendable {
    public let frame: OpenedFrame
    /// When the first node stored it (ms since the epoch).
    public let firstStored: UInt64
}

/// A page of history as the client could read it.
public struct History: Sendable {
    /// Decrypted and verified, oldest first.
    public var messages: [HistoryMessage]
    /// Frames that could not be read, by reason (most often `unknownSession`:
    /// the key was never shared with this member, e.g. sent before it joined
    /// a `joined`-history room, or its sender has not shared it yet).
    public var unreadable: [FrameRejection: Int]
}

extension UnibusClient {
    // MARK: acknowledged publishing

    /// Subscribes to this client's durability receipts and starts resending
    /// unacknowledged frames after reconnects and timeouts; after each
    /// reconnect it also fetches the key shares that waited meanwhile.
    func startReceipts() throws {
        let receipts = try connection.subscribe(ReservedNamespace.receiptSubject(for: userNKey))
        receiptTask = Task { [weak self] in
            for await receipt in receipts { await self?.handleReceipt(receipt.payload) }
        }
        let events = connection.events(), reconnects = connection.events()
        let interval = configuration.acknowledgementTimeout
        resendTask = Task { [weak self] in
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await event in events {
                        if case .connected = event { await self?.resendUnacknowledged(olderThan: nil) }
                    }
                }
                group.addTask {
                    // Key notices sent while this client was away are not sent
                    // again: shares posted then are fetched now, not at the next
                    // frame whose session happens to be unknown. Apart from the
                    // resends, which a slow control plane must not hold back.
                    for await event in reconnects {
                        if case .connected = event { await self?.fetchKeyShares() }
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .milliseconds(500))
                        await self?.resendUnacknowledged(olderThan: interval)
                    }
                }
            }
        }
    }

    /// Sends a sealed frame of a persisted room and keeps it until a node acknowledges it.
    func track(_ frame: [UInt8], room: String, subject: String) throws -> FrameID {
        // This client sealed it a moment ago: its identity is read, not verified again.
        guard let id = FrameVerifier.identify(frame)?.id else {
            throw ClientError.invalid("a sealed frame has no identity; this is a bug in the client library")
        }
        unacknowledged.add(id, UnacknowledgedFrames.Entry(room: room, subject: subject, frame: frame, sentAt: .now, sends: 1,
                                                          sealedAt: Self.nowMillis()))
        do {
            try connection.publish(subject, payload: frame)
        } catch .publishBufferFull {
            // Kept: sent again after the reconnect (the frame is already sealed; never re-encrypted).
            unacknowledged.markSent(id, at: ContinuousClock.now - configuration.acknowledgementTimeout)
        } catch {
            unacknowledged.refuse(id, error: error)
            throw error
        }
        return id
    }

    /// Waits until a node acknowledges frame `id` of `room` as stored (or
    /// refuses it). The frame stays tracked when this times out.
    @discardableResult
    public func waitForStorage(_ id: FrameID, in room: String, timeout: Duration = .seconds(30)) async throws -> DurabilityReceipt {
        guard unacknowledged.entries[id] != nil else {
            // Settled already (a receipt can beat the waiter).
            if let outcome = unacknowledged.settled[id] { return try outcome.get() }
            throw ClientError.invalid("frame \(id) was not sent by this client, or settled too long ago to remember")
        }
        let token = unacknowledged.token()
        let expiry = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            await self?.expireWaiter(id, token: token, after: timeout)
        }
        defer { expiry.cancel() }
        return try await withCheckedThrowingContinuation { continuation in
            unacknowledged.wait(for: id, token: token, continuation)
        }
    }

    /// Waits until every frame sent so far to persisted rooms is acknowledged.
    public func waitForAllStored(timeout: Duration = .seconds(30)) async throws {
        let token = unacknowledged.token()
        let expiry = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            await self?.expireWaiter(nil, token: token, after: timeout)
        }
        defer { expiry.cancel() }
        try await withCheckedThrowingContinuation { continuation in
            unacknowledged.waitForAll(token: token, continuation)
        }
    }

    /// Frames of persisted rooms sent and not yet acknowledged.
    public var unacknowledgedCount: Int { unacknowledged.count }
    /// Frames of persisted rooms a node refused to store since the client started.
    public var refusedFrameCount: Int { unacknowledged.refusedTotal }

    private func expireWaiter(_ id: FrameID?, token: UInt64, after: Duration) {
        unacknowledged.expire(id, token: token, error: ClientError.notAcknowledged(count: unacknowledged.count, after: after))
    }

    func handleReceipt(_ payload: [UInt8]) {
        guard let receipt = DurabilityReceipt(decoding: payload) else { return }
        guard receipt.durability == .local || receipt.peer != nil else { return }
        lastReceiptAt = .now
        for entry in receipt.stored {
            guard let id = entry.frameID, unacknowledged.entries[id]?.room == receipt.room else { continue }
            unacknowledged.acknowledge(id, receipt: receipt)
        }
        for refusal in receipt.refused {
            guard let id = refusal.frameID, unacknowledged.entries[id]?.room == receipt.room else { continue }
            if refusal.code == FrameStorageError.overQuota("").code {
                // A quota passes: the frame is kept and sent again after the acknowledgement timeout.
                unacknowledged.markSent(id, at: .now)
                warnOnce("room \(receipt.room): \(refusal.reason); holding frames and sending them again")
                continue
            }
            unacknowledged.refuse(id, error: ClientError.notStored(room: receipt.room, reason: refusal.reason))
        }
    }

    /// Sends again, in first-sent order, every unacknowledged frame (after a
    /// reconnect) or those sent longer than `age` ago: the same bytes, never
    /// re-encrypted, so nodes and receivers recognise them.
    func resendUnacknowledged(olderThan age: Duration?) {
        guard !closed, unacknowledged.count > 0, connection.isConnected else { return }
        let now = ContinuousClock.now
        // While receipts keep coming, the node is working through a backlog:
        // sending its queue again would only lengthen it. Then only frames
        // four times past the timeout (perhaps dropped by a full node) go again.
        var age = age
        if let given = age, let last = lastReceiptAt, now - last < given { age = min(given * 4, .seconds(15)) }
        let wall = Self.nowMillis()
        var expired = 0
        for (id, entry) in unacknowledged.inOrder {
            // Receivers refuse live frames older than the room's window: past
            // it (less a margin for the trip: a quarter of it, at most 10 s),
            // a frame is given up, loudly. Judged only once the room's policy
            // is known (at start, spooled frames wait for the room to be joined).
            if let seconds = keyring.rooms[entry.room]?.policy.frameWindowSeconds {
                let window = RoomKeyring.milliseconds(seconds)
                let margin = min(10_000, window / 4)
                if wall > entry.sealedAt, wall - entry.sealedAt + margin > window {
                    unacknowledged.refuse(id, error: ClientError.spoolExpired(room: entry.room, ageSeconds: Int((wall - entry.sealedAt) / 1000)))
                    expired += 1
                    continue
                }
            }
            if let age, now - entry.sentAt < age { continue }
            do { try connection.publish(entry.subject, payload: entry.frame) } catch { break }
            unacknowledged.markSent(id, at: now)
        }
        if expired > 0 {
            configuration.warn?("\(expired) unacknowledged frame(s) of persisted rooms waited longer than their room's window and were given up "
                                + "(receivers would refuse them live; no node had acknowledged them)")
        }
    }

    // MARK: resuming

    /// Where to read the store from for a gap the live stream left in one of
    /// `room`'s sessions (a frame skipped without a reconnect: a node died
    /// with it in its buffers, say), once the gap is a second old: two seconds
    /// before the frame that opened it arrived. Gaps older than 30 s are left
    /// (their frames were never stored, or the store was asked already).
    func gapOrigin(_ room: String) -> UInt64? {
        let now = Self.nowMillis()
        guard let since = keyring.oldestGap(in: room, openedBefore: now > 1000 ? now - 1000 : 0,
                                            openedAfter: now > 30_000 ? now - 30_000 : 0) else { return nil }
        return since > 2000 ? since - 2000 : 0
    }

    /// After a gap check read the store to its ceiling: gaps opened before it
    /// began were not filled by it, so their frames were never stored.
    func retireGaps(_ room: String, openedBefore before: UInt64) {
        keyring.retireGaps(in: room, openedBefore: before)
    }

    /// Keeps `room`'s cursor where it is until the next resume (the
    /// connection broke: what follows must be asked from the store).
    func freezeCursor(_ room: String) {
        // Counted even when frozen already: a resume that began before this
        // must not unfreeze (what was skipped now may lie past its ceiling).
        freezes[room, default: 0] += 1
        guard let cursor = resumeCursor[room], !frozenCursors.contains(room) else { return }
        frozenCursors.insert(room)
        // The resumes after this reconnect (the first and the stragglers') all
        // cover the gap from here: a frame a peer replicated late carries its
        // early first-stored time.
        resumeOrigin[room] = cursor
    }

    /// What a resume handed back, and whether it reached the end of the gap.
    struct ResumeOutcome {
        var frames: [OpenedFrame]
        /// False when a page could not be read or the byte bound was reached:
        /// the cursor stays frozen and the caller asks again.
        var complete: Bool
    }

    /// Bytes of opened frames one resume hands back (the rest on the next).
    static let resumeByteBound = 64 * 1024 * 1024

    /// What the node stored in `room` from shortly before this client's last
    /// delivery on, opened as stored frames (what was delivered already is
    /// dropped by the replay windows), in the node's order.
    ///
    /// A frame is taken only if its sender dated it after the gap began (less
    /// the margin and the room's window): a node cannot pass an old frame off
    /// as new by lying about when it was stored. The cursor moves only when
    /// the whole gap was read.
    func resume(_ room: String, from origin: UInt64? = nil) async -> ResumeOutcome {
        guard let cursor = origin ?? resumeOrigin[room] ?? resumeCursor[room], !closed else { return ResumeOutcome(frames: [], complete: true) }
        let startedAt = Self.nowMillis()
        let freezesAtStart = freezes[room, default: 0]
        let margin = UInt64(max(0, configuration.resumeMargin.components.seconds)) * 1000
            + UInt64(max(0, configuration.resumeMargin.components.attoseconds / 1_000_000_000_000_000))
        let window = RoomKeyring.milliseconds(keyring.rooms[room]?.policy.frameWindowSeconds ?? RoomPolicy.defaultFrameWindowSeconds)
        let notBefore = cursor > margin + window ? cursor - margin - window : 0
        let within = (startedAt > cursor ? startedAt - cursor : 0) + margin
        var opened: [OpenedFrame] = []
        var openedBytes = 0
        var after: Int64?
        var node: String?
        /// The answering node's clock at the first page: frames stored after
        /// it come live (held meanwhile), so paging stops there and never
        /// chases the head. Pages run in the order frames reached this node and
        /// a frame's first-stored time is never later than that, so every
        /// frame that reached it before the ceiling comes before the first one
        /// past it; one a peer replicated later is for the next resume (each
        /// after a reconnect covers the gap again).
        var ceiling: UInt64?
        var complete = false
        // What this client has of each session active around the gap (at most
        // 300, well inside a request's 64 KiB): the node leaves those out. A
        // session not named only costs frames the replay windows then drop.
        let activeSince = notBefore > 60_000 ? notBefore - 60_000 : 0
        let known = keyring.deliveredBelow(in: room, activeSince: activeSince, limit: 300).map {
            ControlAPI.HistoryRequest.Known(sender: Base64.encode($0.sender), stream: Base64.encode($0.session), below: $0.below)
        }
        /// From the first page on, an absolute time (the node's clock less
        /// `within`): later pages must not move it forward as time passes.
        var since: UInt64?
        pages: for _ in 0..<10_000 {
            let request = ControlAPI.HistoryRequest(order: .oldest, after: after, since: since, within: since == nil ? within : nil, until: ceiling,
                                                    known: known.isEmpty ? nil : known, limit: ControlAPI.HistoryRequest.maximumFrames)
            let page: ControlAPI.HistoryPage
            do {
                page = try await call("POST", "/v1/rooms/\(room)/history", body: ControlAPI.encode(request), expecting: ControlAPI.HistoryPage.self)
            } catch {
                warnOnce("room \(room): reading what was missed failed (\(error)); trying again")
                break
            }
            // Page tokens are the node's own: another node's page starts over.
            if let node, node != page.node { after = nil }
            node = page.node
            if ceiling == nil { ceiling = page.now ?? startedAt }
            if since == nil, let now = page.now { since = now > within ? now - within : 0 }
            // The first page comes without a ceiling: frames past it are left for later pages' filter.
            var reachedCeiling = false
            for stored in page.frames {
                if let ceiling, stored.firstStored > ceiling &+ 2000 { reachedCeiling = true }
                if let ceiling, stored.firstStored > ceiling { continue }
                guard let bytes = try? Base64.decode(stored.frame) else { continue }
                // Dated at the gap's start: a hole it opens belongs to that time.
                if case .success(let frame) = await receive(bytes, room: room,
                                                            arrival: .stored(firstStored: stored.firstStored, notBefore: notBefore), arrivedAt: cursor) {
                    opened.append(frame)
                    openedBytes += frame.body.count
                }
            }
            if closed { break }
            guard let next = page.next, !reachedCeiling else {
                complete = true
                break pages
            }
            if openedBytes > Self.resumeByteBound { break }
            after = next
        }
        // A gap check (`origin` given) leaves the cursor alone. Otherwise,
        // when the whole gap was read and nothing was skipped meanwhile, live
        // deliveries move the cursor again.
        if complete, origin == nil, freezes[room, default: 0] == freezesAtStart {
            frozenCursors.remove(room)
            if let current = resumeCursor[room], startedAt > current {
                resumeCursor[room] = startedAt
                if keyStore != nil { cursorsChanged.insert(room) }
            }
        }
        return ResumeOutcome(frames: opened, complete: complete)
    }

    // MARK: history

    /// Reads `room`'s retained history, decrypted and verified like live
    /// frames (without the time window: it is old by design): the `last`
    /// frames, or everything first stored from `since` on (at most `limit`).
    /// Frames this member holds no key for are counted in `unreadable`.
    public func history(room: String, last: Int? = nil, since: Date? = nil, limit: Int = 10_000) async throws -> History {
        try await refreshRoom(room)
        guard keyring.rooms[room]?.policy.persist == true else {
            throw ClientError.invalid("room \(room) is not persisted: it keeps no history")
        }
        await fetchKeySharesForHistory()
        let wanted = max(1, min(last ?? limit, limit))
        var collected: [ControlAPI.StoredFrameView] = []
        var token: Int64?
        var node: String?
        let newest = since == nil
        let sinceMillis = since.map { UInt64(max(0, $0.timeIntervalSince1970 * 1000)) }
        while collected.count < wanted {
            let request = newest
                ? ControlAPI.HistoryRequest(order: .newest, before: token, limit: min(wanted - collected.count, ControlAPI.HistoryRequest.maximumFrames))
                : ControlAPI.HistoryRequest(order: .oldest, after: token, since: sinceMillis,
                                            limit: min(wanted - collected.count, ControlAPI.HistoryRequest.maximumFrames))
            let page = try await call("POST", "/v1/rooms/\(room)/history", body: ControlAPI.encode(request), expecting: ControlAPI.HistoryPage.self)
            if let node, node != page.node {
                throw ClientError.controlPlane("the control-plane node changed while paging history; ask again")
            }
            node = page.node
            collected += page.frames
            guard let next = page.next, !page.frames.isEmpty else { break }
            token = next
        }
        if newest { collected.reverse() }
        var result = History(messages: [], unreadable: [:])
        var seen: Set<[UInt8]> = []
        for stored in collected.prefix(wanted) {
            guard let bytes = try? Base64.decode(stored.frame) else {
                result.unreadable[.malformed, default: 0] += 1
                continue
            }
            // A node that repeats a frame (across pages, say) does not make it appear twice.
            if let id = FrameVerifier.identify(bytes),
               !seen.insert(id.sender + id.id.stream + withUnsafeBytes(of: id.id.index.bigEndian, Array.init)).inserted {
                continue
            }
            switch keyring.open(bytes, room: room, now: Self.nowMillis(), arrival: .history) {
            case .success(let frame): result.messages.append(HistoryMessage(frame: frame, firstStored: stored.firstStored))
            case .failure(let reason): result.unreadable[reason, default: 0] += 1
            }
        }
        return result
    }
}
