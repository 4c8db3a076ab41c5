import Atomics
import NIOConcurrencyHelpers
import NIOCore
import UnibusWire

/// What a client connection and a route link share: an outbound queue that
/// any event loop may append to (flushed on the connection's own loop), the
/// slow-consumer and publisher-stall rules, and the delivery of one inbound
/// message to local subscriptions. `BrokerConnection` (a client) and
/// `RouteConnection` (another node) are the two kinds.
///
/// Methods on the delivery path are `final` so that they are called
/// directly, not through the class's vtable.
class QueuedConnection: @unchecked Sendable {
    // @unchecked: fields under "loop-confined" are touched only on `eventLoop`;
    // fields under "shared" only with `sharedLock` held.
    let id: UInt64
    let eventLoop: EventLoop
    let channel: Channel
    // Strong: the broker outlives its connections, and an unowned reference
    // costs an atomic retain on every access on the publish path.
    let broker: Broker
    let index: SubjectIndex
    let stats: BrokerStatistics
    /// Whether this is a route link: subscriptions it holds stand for the
    /// far node's interest, and messages to it are forwarded, not delivered.
    let isRoute: Bool
    let maxPendingBytes: Int
    /// Above this many queued bytes, publishers into this connection stop
    /// reading until it drains below half of it (nats-server stalls fast
    /// producers the same way, so a fast publisher does not turn a healthy
    /// subscriber into a slow consumer).
    let stallThreshold: Int

    // MARK: loop-confined
    // Unchecked (these three): used per message, only on this loop, never re-entrantly. With `outbound` and
    // SubjectIndex.cache, their dynamic exclusivity checks were ~13 % of broker instructions (callgrind).
    /// Bytes read and not parsed yet.
    @exclusivity(unchecked) private final var cumulation: ByteBuffer?
    /// Connections this batch of reads wrote to; flushed once per batch.
    @exclusivity(unchecked) final var touched: [QueuedConnection] = []
    /// Connections this batch filled past the stall threshold.
    @exclusivity(unchecked) final var congested: [QueuedConnection] = []
    final var readingPaused = false
    final var closing = false
    /// The most recent write, so a close can wait for what precedes it.
    final var lastWrite: EventLoopFuture<Void>?

    // MARK: shared
    final let sharedLock = NIOLock()
    // Unchecked: written once per delivered message, only by `enqueue`/`flushNow` under `sharedLock` (not re-entrant).
    @exclusivity(unchecked) private final var outbound: ByteBuffer
    private final var flushScheduled = false
    private final var queuedBytes = 0
    private final var unwrittenSince: NIODeadline?
    private final var slow = false
    private final var closedForWrites = false
    /// Publishers paused until this connection's queue drains.
    private final var drainWaiters: [@Sendable () -> Void] = []
    /// Reply subjects of requests delivered here that this connection may
    /// publish to once (allow_responses): uses left and expiry.
    private final var responsePermits: [String: (left: Int, expires: NIODeadline)] = [:]
    /// Grants in arrival order (equal lifetimes: also expiry order), so the
    /// oldest is dropped in O(1) when the table is full or expired.
    private final var responseOrder: [(reply: String, expires: NIODeadline)] = []
    private final var responseHead = 0
    private final var responsePolicy: ResponsePermission?
    /// Whether deliveries must record reply permits (read on every request
    /// delivered here, so an atomic rather than the lock).
    final let tracksResponses = ManagedAtomic<Bool>(false)
    /// Most reply permits one connection holds; past it the oldest goes.
    static let maximumResponsePermits = 10_000
    /// Longest reply subject a permit is kept for (inboxes are short).
    static let maximumReplyLength = 256

    init(id: UInt64, broker: Broker, channel: Channel, isRoute: Bool, maxPendingBytes: Int) {
        self.id = id
        self.broker = broker
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.stats = broker.statistics
        self.index = broker.index
        self.isRoute = isRoute
        self.maxPendingBytes = maxPendingBytes
        self.stallThreshold = max(maxPendingBytes / 8, 64 * 1024)
        self.outbound = channel.allocator.buffer(capacity: 4096)
        stats.liveConnectionObjects.wrappingIncrement(ordering: .relaxed)
    }

    deinit {
        stats.liveConnectionObjects.wrappingDecrement(ordering: .relaxed)
    }

    // MARK: hooks for the two kinds

    /// Called on the loop when the queue overflowed `maxPendingBytes`.
    func closeSlowConsumer() {}

    /// Removes a subscription of this connection (an UNSUB with a maximum
    /// reached by a delivery from another connection). On the loop.
    func removeSubscriptionOnLoop(_ subscription: Subscription) {}

    // MARK: outbound (any thread)

    /// Appends to the outbound queue. Returns true when the caller must make
    /// sure a flush happens (the first write since the last flush).
    // Always inlined, so a delivery's write closure is too (a call retained and released its captures).
    @inline(__always)
    final func enqueue(_ write: (inout ByteBuffer) -> Void) -> Bool {
        var becameSlow = false
        let needsFlush = sharedLock.withLock { () -> Bool in
            if closedForWrites || slow { return false }
            let before = outbound.writerIndex
            write(&outbound)
            let added = outbound.writerIndex - before
            if queuedBytes == 0 { unwrittenSince = .now() }
            queuedBytes += added
            if queuedBytes > maxPendingBytes {
                slow = true
                becameSlow = true
                outbound.clear()
                return false
            }
            if flushScheduled { return false }
            flushScheduled = true
            return true
        }
        if becameSlow {
            stats.slowConsumers.wrappingIncrement(ordering: .relaxed)
            eventLoop.execute { self.closeSlowConsumer() }
        }
        return needsFlush
    }

    /// Queues bytes for this connection from its own loop.
    final func enqueueSelf(_ write: (inout ByteBuffer) -> Void) {
        if enqueue(write) { touched.append(self) }
    }

    /// Queues bytes from any thread and makes sure they are flushed.
    final func send(_ write: (inout ByteBuffer) -> Void) {
        guard enqueue(write) else { return }
        if eventLoop.inEventLoop {
            flushNow()
        } else {
            eventLoop.execute { self.flushNow() }
        }
    }

    /// Runs `callback` (on any thread) once the queue is below half the
    /// stall threshold or the connection is closed.
    final func whenDrained(_ callback: @escaping @Sendable () -> Void) {
        let runNow = sharedLock.withLock { () -> Bool in
            if closedForWrites || slow || queuedBytes < stallThreshold / 2 { return true }
            drainWaiters.append(callback)
            return false
        }
        if runNow { callback() }
    }

    /// Whether this connection's queue is past the stall threshold.
    final func isCongested() -> Bool {
        sharedLock.withLock { queuedBytes >= stallThreshold }
    }

    /// How long the oldest queued bytes have waited, if any are queued.
    final var unwrittenFor: TimeAmount? {
        sharedLock.withLock { unwrittenSince.map { NIODeadline.now() - $0 } }
    }

    /// Writes whatever is queued (on this connection's loop).
    final func flushNow() {
        let buffer = sharedLock.withLock { () -> ByteBuffer? in
            flushScheduled = false
            guard outbound.readableBytes > 0, !closedForWrites || closing else { return nil }
            let pending = outbound
            outbound = channel.allocator.buffer(capacity: max(4096, min(pending.readableBytes, 1 << 20)))
            return pending
        }
        guard let buffer else { return }
        let count = buffer.readableBytes
        stats.bytesOut.wrappingIncrement(by: count, ordering: .relaxed)
        let written = channel.writeAndFlush(buffer)
        lastWrite = written
        written.whenComplete { [self] _ in
            let waiters = sharedLock.withLock { () -> [@Sendable () -> Void] in
                queuedBytes -= count
                unwrittenSince = queuedBytes > 0 ? .now() : nil
                guard !drainWaiters.isEmpty, queuedBytes < stallThreshold / 2 else { return [] }
                defer { drainWaiters.removeAll() }
                return drainWaiters
            }
            for waiter in waiters { waiter() }
        }
    }

    /// Stops accepting writes and releases publishers waiting on this queue.
    final func closeForWrites() {
        let waiters = sharedLock.withLock { () -> [@Sendable () -> Void] in
            closedForWrites = true
            defer { drainWaiters.removeAll() }
            return drainWaiters
        }
        for waiter in waiters { waiter() }
    }

    // MARK: reply permissions (any thread)

    /// Sets or clears allow_responses for this connection.
    final func setResponsePolicy(_ policy: ResponsePermission?) {
        sharedLock.withLock {
            responsePolicy = policy
            if policy == nil {
                responsePermits.removeAll()
                responseOrder.removeAll()
                responseHead = 0
            }
        }
        tracksResponses.store(policy != nil, ordering: .relaxed)
    }

    /// Records that a request with `reply` was delivered here.
    final func grantResponse(to reply: String) {
        guard reply.utf8.count <= Self.maximumReplyLength else { return }
        sharedLock.withLock {
            guard let policy = responsePolicy else { return }
            let now = NIODeadline.now()
            dropResponsePermits(expiredBy: now, keepingAtMost: Self.maximumResponsePermits - 1)
            let expires = now + policy.expiry
            responsePermits[reply] = (policy.maximum, expires)
            responseOrder.append((reply, expires))
            // Answered permits leave the table at once but stay queued until
            // they expire; a busy responder would queue minutes of them.
            // Rebuilding from the live ones is O(n) per n grants.
            if responseOrder.count - responseHead > 2 * Self.maximumResponsePermits {
                responseOrder = responseOrder[responseHead...].filter { responsePermits[$0.reply]?.expires == $0.expires }
                responseHead = 0
            }
        }
    }

    /// Drops expired permits, then the oldest while more than `limit` are
    /// held; O(1) amortised. Under `sharedLock`.
    private final func dropResponsePermits(expiredBy now: NIODeadline, keepingAtMost limit: Int) {
        while responseHead < responseOrder.count,
              responseOrder[responseHead].expires <= now || responsePermits.count > limit {
            let entry = responseOrder[responseHead]
            // Only if this entry is still the live grant for that reply (a
            // later grant for the same reply replaced it).
            if responsePermits[entry.reply]?.expires == entry.expires { responsePermits[entry.reply] = nil }
            responseHead += 1
        }
        if responseHead > 1024 && responseHead * 2 > responseOrder.count {
            responseOrder.removeFirst(responseHead)
            responseHead = 0
        }
    }

    /// Drops expired reply permits (the connection's timer calls it, so an
    /// idle connection does not keep them).
    final func pruneResponsePermits() {
        guard tracksResponses.load(ordering: .relaxed) else { return }
        sharedLock.withLock { dropResponsePermits(expiredBy: .now(), keepingAtMost: Self.maximumResponsePermits) }
    }

    /// Uses one reply permit for `subject`; false when none is held.
    final func consumeResponsePermit(_ subject: String) -> Bool {
        sharedLock.withLock {
            guard let permit = responsePermits[subject] else { return false }
            guard permit.expires > .now() else {
                responsePermits[subject] = nil
                return false
            }
            if permit.left <= 1 {
                responsePermits[subject] = nil
            } else {
                responsePermits[subject] = (permit.left - 1, permit.expires)
            }
            return true
        }
    }

    // MARK: reading side (loop-confined)

    /// Bytes received and not parsed yet.
    final var bufferedBytes: Int { cumulation?.readableBytes ?? 0 }

    /// Adds one read to the bytes not parsed yet (and counts it).
    @inline(__always)
    final func accumulate(_ incoming: inout ByteBuffer) {
        stats.bytesIn.wrappingIncrement(by: incoming.readableBytes, ordering: .relaxed)
        if cumulation == nil {
            cumulation = incoming
        } else {
            cumulation!.writeBuffer(&incoming)
        }
    }

    /// Parses and handles buffered operations while `proceed()` holds;
    /// returns the violation that stopped parsing, if any. Consumed bytes
    /// are dropped (the buffer is compacted past 64 KiB of them).
    @inline(__always)
    final func parseBuffered<Parser: ProtocolParser>(_ parser: Parser, while proceed: () -> Bool,
                                                      _ handle: (Parser.Operation) -> Void) -> ProtocolViolation? {
        guard cumulation != nil else { return nil }
        do {
            while proceed(), let op = try parser.next(&cumulation!) {
                handle(op)
            }
        } catch {
            return error
        }
        if let buffer = cumulation {
            if buffer.readableBytes == 0 {
                cumulation = nil
            } else if buffer.readerIndex > 64 * 1024 {
                cumulation!.discardReadBytes()
            }
        }
        return nil
    }

    /// Flushes every connection this batch of reads wrote to.
    final func flushTouched() {
        let pending = touched
        touched.removeAll(keepingCapacity: true)
        for connection in pending {
            if connection === self || connection.eventLoop === eventLoop {
                connection.flushNow()
            } else {
                connection.eventLoop.execute { connection.flushNow() }
            }
        }
    }

    /// After a batch of reads: flush, and pause reading (autoRead off) until
    /// every target this batch congested has drained; each calls back once.
    /// Reading normally stays on autoRead, which avoids an epoll update per read.
    final func finishReadBatch() {
        flushTouched()
        guard !closing, !congested.isEmpty else { return }
        let targets = congested
        congested.removeAll(keepingCapacity: true)
        readingPaused = true
        channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        let remaining = ManagedAtomic<Int>(targets.count)
        for target in targets {
            target.whenDrained { [self] in
                if remaining.wrappingDecrementThenLoad(ordering: .acquiringAndReleasing) == 0 {
                    eventLoop.execute { self.resumeReading() }
                }
            }
        }
    }

    /// Resumes reading after congestion cleared (subclasses may hold it off).
    func resumeReading() {
        guard readingPaused, !closing else { return }
        readingPaused = false
        channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
    }

    // MARK: delivery (loop-confined, on the publishing connection's loop)

    /// Delivers one message to the local subscriptions `result` holds: every
    /// plain subscription, and one local member of each queue group (only of
    /// the groups named in `onlyQueues` when it is given). `skip` is the
    /// publisher when it asked not to get its own messages. Route entries are
    /// not touched here; see `forward`.
    /// Returns the routes chosen for queue groups, with the group names.
    @inline(__always)
    final func deliverLocally(_ result: MatchResult, subject: String, reply: String?, headerLength: Int?, message: ByteBuffer,
                              skip: QueuedConnection?, onlyQueues: [String]?, routesMayTakeQueues: Bool) -> [(RouteConnection, String)] {
        // The payload's bytes are read once for all deliveries (each ByteBuffer byte access is a dynamic exclusivity check).
        message.withUnsafeReadableBytes { payload in
            for subscription in result.plain {
                if subscription.connection === skip { continue }
                deliver(subscription, subject: subject, reply: reply, headerLength: headerLength, payload: payload)
            }
            var routed: [(RouteConnection, String)] = []
            for group in result.queues {
                if let onlyQueues, !onlyQueues.contains(group.name) { continue }
                let members = group.members
                let start = members.count == 1 ? 0 : Int.random(in: 0..<members.count)
                for offset in 0..<members.count {
                    let candidate = members[(start + offset) % members.count]
                    if candidate.connection === skip { continue }
                    if candidate.connection.isRoute {
                        guard routesMayTakeQueues, let route = candidate.connection as? RouteConnection else { continue }
                        routed.append((route, group.name))
                        break
                    }
                    if deliver(candidate, subject: subject, reply: reply, headerLength: headerLength, payload: payload) { break }
                }
            }
            return routed
        }
    }

    /// Queues one MSG/HMSG for `subscription`; false if it took none.
    @discardableResult
    @inline(__always)
    final func deliver(_ subscription: Subscription, subject: String, reply: String?, headerLength: Int?,
                       payload: UnsafeRawBufferPointer) -> Bool {
        let target = subscription.connection
        guard subscription.admits(subject) else { return false }
        let (deliver, last) = subscription.claimDelivery()
        guard deliver else { return false }
        if let reply, target.tracksResponses.load(ordering: .relaxed) { target.grantResponse(to: reply) }
        subscription.delivered.wrappingIncrement(ordering: .relaxed)
        let needsFlush = target.enqueue { buffer in
            MessageEncoder.writeMessage(into: &buffer, subject: subject, sid: subscription.sidBytes,
                                        reply: reply, headerLength: headerLength, payload: payload)
        }
        noteWrite(to: target, needsFlush: needsFlush)
        stats.messagesOut.wrappingIncrement(ordering: .relaxed)
        if last {
            if target.eventLoop.inEventLoop {
                target.removeSubscriptionOnLoop(subscription)
            } else {
                target.eventLoop.execute { target.removeSubscriptionOnLoop(subscription) }
            }
        }
        return true
    }

    /// Forwards one message over `route` (RMSG), naming the queue groups the
    /// route was chosen for.
    @inline(__always)
    final func forward(to route: RouteConnection, subject: String, reply: String?, queues: [String], headerLength: Int?, message: ByteBuffer) {
        let needsFlush = route.enqueue { buffer in
            RouteEncoder.writeMessage(into: &buffer, subject: subject, reply: reply, queues: queues,
                                      headerLength: headerLength, message: message)
        }
        noteWrite(to: route, needsFlush: needsFlush)
        stats.routedOut.wrappingIncrement(ordering: .relaxed)
    }

    @inline(__always)
    private final func noteWrite(to target: QueuedConnection, needsFlush: Bool) {
        guard needsFlush else { return }
        touched.append(target)
        if target !== self && target.isCongested() && !congested.contains(where: { $0 === target }) {
            congested.append(target)
        }
    }

    // MARK: closing

    /// Closes once the last write reached the socket (or after a short grace
    /// period, so a stuck peer cannot hold the connection).
    final func closeWhenWritten() {
        guard let pending = lastWrite else {
            channel.close(promise: nil)
            return
        }
        let channel = self.channel
        let grace = eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        pending.whenComplete { _ in
            grace.cancel()
            channel.close(promise: nil)
        }
    }
}
