import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import UnibusCrypto
import UnibusControlClient
import UnibusWire

/// One message as the data plane delivers it.
public struct NATSMessage: Sendable {
    public let subject: String
    public let reply: String?
    public let payload: [UInt8]
    /// Which connection to a node delivered it (1 for the first, then one
    /// more per attachment): a change marks exactly where a subscription's
    /// stream crossed a reconnect, whatever order other events arrive in.
    public let attachment: Int
    /// When it arrived (ms since the epoch, this machine's clock): a
    /// resuming subscriber asks the store from the arrival of the last frame
    /// it delivered, however far behind its consumer ran.
    public let receivedAt: UInt64
    /// How many of this subscription's messages were dropped (its consumer
    /// fell behind) before this one, since it began: a change marks a gap.
    public let droppedBefore: Int

    public init(subject: String, reply: String?, payload: [UInt8], attachment: Int = 0, receivedAt: UInt64 = 0, droppedBefore: Int = 0) {
        self.subject = subject
        self.reply = reply
        self.payload = payload
        self.attachment = attachment
        self.receivedAt = receivedAt
        self.droppedBefore = droppedBefore
    }
}

/// What happened to the connection, for status lines and tests.
public enum ConnectionEvent: Sendable, Equatable {
    case connected(Endpoint, serverID: String)
    case disconnected(Endpoint, reason: String)
}

/// A NATS-protocol connection to one node at a time, authenticated with the
/// identity's nkey, that fails over across its seed list (and the
/// `connect_urls` nodes announce) with backoff and jitter, resubscribes on
/// every reconnect, and buffers publishes made while disconnected up to a
/// bound (beyond it `publish` throws; nothing is dropped silently).
///
/// Thread-safe; all mutable state is behind one lock. Messages are handed to
/// each subscription's `AsyncStream` from the event loop.
public final class NATSConnection: @unchecked Sendable {
    public struct Options: Sendable {
        public var seeds: [Endpoint]
        public var identity: Identity
        /// PEM CA that node certificates must chain to (pinned; no system roots).
        public var caPath: String?
        /// A client certificate for nodes that require one (`--tls-client-ca`).
        public var clientCertificate: ClientCertificate?
        public var name = "unibus-swift"
        /// Where the connection reports connects, failovers and refusals.
        /// The library never prints: the host application bootstraps
        /// swift-log with the handler it wants (the default logger goes to
        /// whatever `LoggingSystem` was bootstrapped with).
        public var logger = Logger(label: "unibus.client")
        public var maxBufferedMessages = 10_000
        public var maxBufferedBytes = 8 * 1024 * 1024
        public var connectTimeout: TimeAmount = .seconds(2)
        /// Backoff after a full round of the seed list failed: doubling from
        /// `minimumBackoff` up to `maximumBackoff`, plus up to 50 % jitter.
        public var minimumBackoff: TimeAmount = .milliseconds(50)
        public var maximumBackoff: TimeAmount = .seconds(2)
        /// Rounds of the seed list `connect` tries before giving up.
        public var initialRounds = 3
        /// Buffered messages per subscription before the oldest arrivals are
        /// kept and newer ones counted as dropped (a slow consumer).
        public var subscriptionBuffer = 65_536

        public init(seeds: [Endpoint], identity: Identity, caPath: String? = nil) {
            self.seeds = seeds
            self.identity = identity
            self.caPath = caPath
        }
    }

    private struct SubscriptionEntry {
        let subject: String
        let queue: String?
        let continuation: AsyncStream<NATSMessage>.Continuation
        /// Messages dropped because the consumer fell behind (the stream was full).
        var dropped = 0
    }

    public let options: Options
    private let group: EventLoopGroup
    private let tls: NIOSSLContext?
    private let lock = NIOLock()
    // Everything below is guarded by `lock`.
    private var channel: Channel?
    private var endpoint: Endpoint?
    private var serverID = ""
    private var maxPayload = 1024 * 1024
    private var subscriptions: [UInt64: SubscriptionEntry] = [:]
    private var nextSID: UInt64 = 1
    private var buffered: [ByteBuffer] = []
    private var bufferedBytes = 0
    private var discovered: [Endpoint] = []
    private var closed = false
    private var flushScheduled = false
    /// Writes waiting for the event loop (see `writeLocked`).
    private var outgoing: [ByteBuffer] = []
    private var pongWaiters: [CheckedContinuation<Void, Error>] = []
    private var eventContinuations: [UUID: AsyncStream<ConnectionEvent>.Continuation] = [:]
    private var runner: Task<Void, Never>?
    private var droppedBySlowConsumer = 0
    private var reconnects = 0
    /// Attachments made so far (each connection's handler takes the next number).
    private var attachments = 0
    /// When the latest attachment completed, and when its first message came in.
    private var attachedAt: Date?
    private var firstMessageAt: Date?

    public init(options: Options, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws(ClientError) {
        guard !options.seeds.isEmpty else { throw .noSeeds }
        self.options = options
        self.group = group
        if let caPath = options.caPath {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .file(caPath)
            configuration.minimumTLSVersion = .tlsv12
            do { try options.clientCertificate?.apply(to: &configuration) } catch { throw .invalid("\(error)") }
            do { tls = try NIOSSLContext(configuration: configuration) } catch {
                throw .invalid("cannot load the CA certificate \(caPath): \(error)")
            }
        } else {
            tls = nil
        }
    }

    // MARK: lifecycle

    /// Connects to the first reachable seed, then keeps the connection up in
    /// the background until `close()`.
    public func connect() async throws(ClientError) {
        var failures: [String] = []
        // Each reason once, however many rounds repeated it.
        func note(_ failure: String) { if !failures.contains(failure) { failures.append(failure) } }
        for round in 0..<max(1, options.initialRounds) {
            for endpoint in candidates() {
                do {
                    try await attach(to: endpoint)
                    startRunner()
                    return
                } catch let error as ClientError {
                    if case .authenticationFailed = error { throw error }
                    if case .tlsRequiredWithoutCA = error { throw error }
                    if case .plaintextRefused = error { throw error }
                    note(ConnectionDiagnosis.describe(error, address: endpoint.description, plane: "NATS port", caPath: options.caPath))
                } catch {
                    note(ConnectionDiagnosis.describe(error, address: endpoint.description, plane: "NATS port", caPath: options.caPath))
                }
            }
            if round + 1 < options.initialRounds { try? await Task.sleep(nanoseconds: UInt64(backoff(round: round).nanoseconds)) }
        }
        throw .unreachable(failures)
    }

    /// Closes the connection; subscriptions end, buffered publishes are discarded
    /// (their `publish` calls already returned, so this is reported by `close`).
    @discardableResult
    public func close() async -> Int {
        let (channel, runner, subscriptions, waiters, events, lost) = lock.withLock {
            closed = true
            let result = (self.channel, self.runner, self.subscriptions, pongWaiters, eventContinuations, buffered.count)
            self.subscriptions = [:]
            pongWaiters = []
            eventContinuations = [:]
            buffered = []
            bufferedBytes = 0
            return result
        }
        runner?.cancel()
        for entry in subscriptions.values { entry.continuation.finish() }
        for waiter in waiters { waiter.resume(throwing: ClientError.closed) }
        for event in events.values { event.finish() }
        try? await channel?.close()
        // The reconnect loop may be mid-dial: wait for it, so nothing of this
        // connection is still running when the caller (or the process) goes on.
        await runner?.value
        return lost
    }

    /// The node the connection is attached to now, if any.
    public var currentEndpoint: Endpoint? { lock.withLock { channel == nil ? nil : endpoint } }
    public var currentServerID: String? { lock.withLock { channel == nil ? nil : serverID } }
    public var isConnected: Bool { lock.withLock { channel != nil } }
    public var reconnectCount: Int { lock.withLock { reconnects } }
    /// When the first message arrived on the current attachment (before any
    /// decoding by the caller): how long a failover kept messages away.
    public var firstMessageOnCurrentAttachment: Date? { lock.withLock { firstMessageAt } }
    /// Messages dropped because a subscription's consumer fell behind.
    public var slowConsumerDrops: Int { lock.withLock { droppedBySlowConsumer } }

    /// Connection events from now on.
    public func events() -> AsyncStream<ConnectionEvent> {
        let (stream, continuation) = AsyncStream<ConnectionEvent>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let id = UUID()
        lock.withLock { eventContinuations[id] = continuation }
        continuation.onTermination = { [weak self] _ in self?.lock.withLock { _ = self?.eventContinuations.removeValue(forKey: id) } }
        return stream
    }

    // MARK: publish / subscribe

    /// Publishes `payload` on `subject`. While disconnected the message is
    /// buffered (sent in order after reconnecting) up to the configured bound.
    public func publish(_ subject: String, payload: [UInt8], reply: String? = nil) throws(ClientError) {
        guard Subject.isValidLiteral(subject) else { throw .invalid("\(subject) is not a valid subject to publish to") }
        var buffer = ByteBufferAllocator().buffer(capacity: subject.utf8.count + payload.count + 32)
        buffer.writeStaticString("PUB ")
        buffer.writeString(subject)
        if let reply { buffer.writeString(" " + reply) }
        buffer.writeString(" \(payload.count)\r\n")
        buffer.writeBytes(payload)
        buffer.writeStaticString("\r\n")
        let result: ClientError? = lock.withLock {
            if closed { return .closed }
            if payload.count > maxPayload { return .payloadTooLarge(payload.count, limit: maxPayload) }
            if let channel {
                writeLocked(buffer, to: channel)
                return nil
            }
            guard buffered.count < options.maxBufferedMessages, bufferedBytes + buffer.readableBytes <= options.maxBufferedBytes else {
                return .publishBufferFull(messages: buffered.count, bytes: bufferedBytes)
            }
            buffered.append(buffer)
            bufferedBytes += buffer.readableBytes
            return nil
        }
        if let result { throw result }
    }

    /// Subscribes to `subject`; the stream ends when the connection is
    /// closed, and ending it (cancelling the consuming task) unsubscribes.
    public func subscribe(_ subject: String, queue: String? = nil) throws(ClientError) -> AsyncStream<NATSMessage> {
        guard Subject.isValidFilter(subject) else { throw .invalid("\(subject) is not a valid subject to subscribe to") }
        let (stream, continuation) = AsyncStream<NATSMessage>.makeStream(bufferingPolicy: .bufferingOldest(options.subscriptionBuffer))
        let sid: UInt64? = lock.withLock {
            guard !closed else { return nil }
            let sid = nextSID
            nextSID += 1
            subscriptions[sid] = SubscriptionEntry(subject: subject, queue: queue, continuation: continuation)
            if let channel { writeLocked(Self.subCommand(subject: subject, queue: queue, sid: sid), to: channel) }
            return sid
        }
        guard let sid else { throw .closed }
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(sid) }
        return stream
    }

    private func unsubscribe(_ sid: UInt64) {
        lock.withLock {
            refusedAttempts[sid] = nil
            retryPending.remove(sid)
            guard subscriptions.removeValue(forKey: sid) != nil, let channel else { return }
            var buffer = channel.allocator.buffer(capacity: 24)
            buffer.writeString("UNSUB \(sid)\r\n")
            writeLocked(buffer, to: channel)
        }
    }

    /// Round trip to the node: every publish before it has been processed.
    public func flush(timeout: TimeAmount = .seconds(5)) async throws(ClientError) {
        let result: Result<Void, ClientError> = await withTaskGroup(of: Result<Void, ClientError>.self) { group in
            group.addTask {
                do {
                    try await withCheckedThrowingContinuation { (waiter: CheckedContinuation<Void, Error>) in
                        let failure: ClientError? = self.lock.withLock {
                            guard !self.closed else { return .closed }
                            guard let channel = self.channel else { return .timeout("not connected") }
                            self.pongWaiters.append(waiter)
                            var ping = channel.allocator.buffer(capacity: 6)
                            ping.writeStaticString("PING\r\n")
                            self.writeLocked(ping, to: channel)
                            return nil
                        }
                        if let failure { waiter.resume(throwing: failure) }
                    }
                    return .success(())
                } catch {
                    return .failure(error as? ClientError ?? .timeout("flush: \(error)"))
                }
            }
            group.addTask {
                try? await Task.sleep(nanoseconds: UInt64(timeout.nanoseconds))
                return .failure(.timeout("no PONG from the node within \(timeout.nanoseconds / 1_000_000) ms"))
            }
            let first = await group.next() ?? .failure(.closed)
            group.cancelAll()
            return first
        }
        try result.get()
    }

    // MARK: internals

    private static func subCommand(subject: String, queue: String?, sid: UInt64) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: subject.utf8.count + 32)
        buffer.writeString("SUB \(subject)\(queue.map { " " + $0 } ?? "") \(sid)\r\n")
        return buffer
    }

    /// Queues `buffer` for `channel` (called under the lock). Writes are
    /// handed to the event loop in batches: the first queued write schedules
    /// one task that writes everything queued by then and flushes once (the
    /// NATS clients' coalescing). Writing and flushing in the same task keeps
    /// every write covered by a flush and in publish order.
    private func writeLocked(_ buffer: ByteBuffer, to channel: Channel) {
        outgoing.append(buffer)
        guard !flushScheduled else { return }
        flushScheduled = true
        channel.eventLoop.execute {
            let batch: [ByteBuffer] = self.lock.withLock {
                self.flushScheduled = false
                // A batch for a channel that died is kept for the next one.
                guard self.channel === channel else { return [] }
                defer { self.outgoing.removeAll(keepingCapacity: true) }
                return self.outgoing
            }
            for buffer in batch { channel.write(buffer, promise: nil) }
            channel.flush()
        }
    }

    /// Seeds first (in order), then nodes learned from `connect_urls`,
    /// starting after the one just lost so a dead node is tried last.
    private func candidates(after lost: Endpoint? = nil) -> [Endpoint] {
        var all = options.seeds
        for endpoint in lock.withLock({ discovered }) where !all.contains(where: { $0.host == endpoint.host && $0.port == endpoint.port }) {
            all.append(endpoint)
        }
        if let lost, let index = all.firstIndex(where: { $0.host == lost.host && $0.port == lost.port }) {
            all = Array(all[(index + 1)...] + all[...index])
        }
        return all
    }

    private func backoff(round: Int) -> TimeAmount {
        let base = min(options.maximumBackoff.nanoseconds, options.minimumBackoff.nanoseconds << min(round, 20))
        return .nanoseconds(base + Int64.random(in: 0...max(1, base / 2)))
    }

    private func emit(_ event: ConnectionEvent) {
        switch event {
        case .connected(let endpoint, let serverID):
            options.logger.info("connected", metadata: ["node": "\(endpoint)", "server_id": "\(serverID)"])
        case .disconnected(let endpoint, let reason):
            options.logger.notice("disconnected; failing over", metadata: ["node": "\(endpoint)", "reason": "\(reason)"])
        }
        let continuations = lock.withLock { Array(eventContinuations.values) }
        for continuation in continuations { continuation.yield(event) }
    }

    private func startRunner() {
        let task = Task { [weak self] in _ = await self?.keepConnected() }
        lock.withLock { runner = task }
    }

    /// Waits for the current channel to close, then reattaches: at once to
    /// the next candidate, then with backoff after each full failed round.
    private func keepConnected() async {
        while !Task.isCancelled {
            guard let (channel, lost) = lock.withLock({ self.channel.map { ($0, self.endpoint) } }) else { return }
            try? await channel.closeFuture.get()
            var reason = "connection closed"
            let stop: Bool = lock.withLock {
                if self.channel === channel { self.channel = nil }
                // Publishes accepted but not yet handed to the socket go out
                // after the reconnect (subscriptions are redone separately).
                let unsent = outgoing.filter { $0.readableBytesView.starts(with: "PUB ".utf8) }
                buffered.insert(contentsOf: unsent, at: 0)
                bufferedBytes += unsent.reduce(0) { $0 + $1.readableBytes }
                outgoing = []
                flushScheduled = false
                for waiter in pongWaiters { waiter.resume(throwing: ClientError.timeout("disconnected before PONG")) }
                pongWaiters = []
                if let error = lastError { reason = error }
                lastError = nil
                return closed
            }
            if stop { return }
            if let lost { emit(.disconnected(lost, reason: reason)) }
            var round = 0
            reattach: while !Task.isCancelled {
                for endpoint in candidates(after: lost) {
                    if lock.withLock({ closed }) { return }
                    do {
                        try await attach(to: endpoint)
                        lock.withLock { reconnects += 1 }
                        break reattach
                    } catch {
                        continue
                    }
                }
                try? await Task.sleep(nanoseconds: UInt64(backoff(round: round).nanoseconds))
                round += 1
            }
        }
    }

    private var lastError: String?
    private var subscriptionRefusals = 0
    /// Refusals and resent SUBs per subject (bounded), for `confirmSubscription`.
    private var refusalsBySubject: [String: Int] = [:]
    private var resentBySubject: [String: Int] = [:]
    /// Re-SUB attempts per subscription after refusals.
    private var refusedAttempts: [UInt64: Int] = [:]
    private var retryPending: Set<UInt64> = []
    /// Whether the current attachment negotiated TLS: addresses it teaches
    /// (connect_urls) are then dialed with TLS too, whatever the seed said.
    private var negotiatedTLS = false

    /// Connects, authenticates, resubscribes and drains the buffer, all
    /// before any new publish can reach the channel.
    private func attach(to endpoint: Endpoint) async throws {
        let handshake = group.next().makePromise(of: ServerInfo.self)
        let attachment = lock.withLock { () -> Int in
            attachments += 1
            return attachments
        }
        let handler = NATSClientHandler(connection: self, endpoint: endpoint, identity: options.identity, name: options.name,
                                        tls: tls, handshake: handshake, attachment: attachment)
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(options.connectTimeout)
                .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
                }
                .connect(host: endpoint.host, port: endpoint.port).get()
        } catch {
            handshake.fail(error)
            throw ClientError.timeout("cannot connect: \(error)")
        }
        let timeout = channel.eventLoop.scheduleTask(in: options.connectTimeout) {
            handshake.fail(ClientError.timeout("no handshake from \(endpoint) within the connect timeout"))
            channel.close(promise: nil)
        }
        let info: ServerInfo
        do {
            info = try await handshake.futureResult.get()
            timeout.cancel()
        } catch {
            timeout.cancel()
            try? await channel.close()
            throw error
        }
        // Resubscribe and drain on the event loop, under the lock, so nothing
        // published concurrently can overtake the buffered messages.
        try await channel.eventLoop.submit {
            self.lock.withLock {
                guard !self.closed else { return }
                for (sid, entry) in self.subscriptions.sorted(by: { $0.key < $1.key }) {
                    channel.write(Self.subCommand(subject: entry.subject, queue: entry.queue, sid: sid), promise: nil)
                }
                for buffer in self.buffered { channel.write(buffer, promise: nil) }
                self.buffered = []
                self.bufferedBytes = 0
                channel.flush()
                self.channel = channel
                self.endpoint = endpoint
                self.attachedAt = Date()
                self.refusedAttempts = [:]   // a new node: refusals start over
                self.retryPending = []
                self.firstMessageAt = nil
                self.serverID = info.serverID
                self.maxPayload = info.maxPayload
                self.negotiatedTLS = info.tlsRequired || endpoint.requiresTLS
                for url in info.connectURLs {
                    if let learned = Self.endpoint(learned: url, from: endpoint, tls: self.negotiatedTLS), !self.discovered.contains(learned) {
                        self.discovered.append(learned)
                    }
                }
            }
        }.get()
        if lock.withLock({ closed }) {
            try? await channel.close()
            throw ClientError.closed
        }
        emit(.connected(endpoint, serverID: info.serverID))
    }

    // Called by the handler on its event loop.

    fileprivate func deliver(sid: Substring, message: NATSMessage) {
        guard let number = UInt64(sid) else { return }
        let entry = lock.withLock { () -> (AsyncStream<NATSMessage>.Continuation, Int)? in
            if firstMessageAt == nil { firstMessageAt = Date() }
            return subscriptions[number].map { ($0.continuation, $0.dropped) }
        }
        guard let (continuation, dropped) = entry else { return }
        // Each message says how many of its subscription's messages were
        // dropped before it, so a reader can tell where a gap is.
        let stamped = NATSMessage(subject: message.subject, reply: message.reply, payload: message.payload, attachment: message.attachment,
                                  receivedAt: message.receivedAt, droppedBefore: dropped)
        if case .dropped = continuation.yield(stamped) {
            lock.withLock {
                droppedBySlowConsumer += 1
                subscriptions[number]?.dropped += 1
            }
        }
    }

    /// Adds nodes a server announced (connect_urls) to the failover candidates.
    fileprivate func learn(_ urls: [String]) {
        lock.withLock {
            for url in urls {
                if let learned = Self.endpoint(learned: url, from: endpoint, tls: negotiatedTLS), !discovered.contains(learned) {
                    discovered.append(learned)
                }
            }
        }
    }

    /// An address from `connect_urls`: nodes send `host:port` (as
    /// nats-server does), so the scheme, and with it TLS, is the current
    /// node's; a learned address never downgrades to plaintext.
    static func endpoint(learned url: String, from current: Endpoint?, tls negotiated: Bool) -> Endpoint? {
        guard let parsed = try? Endpoint(parsing: url) else { return nil }
        return Endpoint(host: parsed.host, port: parsed.port,
                        requiresTLS: parsed.requiresTLS || negotiated || (current?.requiresTLS ?? true))
    }

    /// Nodes learned from the servers' connect_urls.
    public var discoveredEndpoints: [Endpoint] { lock.withLock { discovered } }

    fileprivate func pong() {
        let waiter: CheckedContinuation<Void, Error>? = lock.withLock { pongWaiters.isEmpty ? nil : pongWaiters.removeFirst() }
        waiter?.resume()
    }

    fileprivate func serverError(_ text: String) {
        lock.withLock { lastError = text }
        if case .subscriptionRefused(let subject) = ServerError(text: text) { retryRefused(subject) }
    }

    /// A node refused a SUB: typically the membership change that allows it
    /// (an add-member on another node) has not reached this node yet. The
    /// subscription is sent again with backoff (0.1 s doubling to 5 s, for
    /// about a minute), so it takes effect once the node catches up.
    private func retryRefused(_ subject: String) {
        let retries: [(UInt64, Int, Channel)] = lock.withLock {
            subscriptionRefusals += 1
            if let count = refusalsBySubject[subject] { refusalsBySubject[subject] = count &+ 1 }
            else if refusalsBySubject.count < 10_000 { refusalsBySubject[subject] = 1 }
            guard let channel else { return [] }
            return subscriptions.compactMap { sid, entry in
                // One retry in flight per subscription (k subscriptions on a
                // subject must not make k² SUBs).
                guard entry.subject == subject, !retryPending.contains(sid) else { return nil }
                let attempt = refusedAttempts[sid, default: 0]
                guard attempt < 16 else { return nil }
                refusedAttempts[sid] = attempt + 1
                retryPending.insert(sid)
                return (sid, attempt, channel)
            }
        }
        for (sid, attempt, channel) in retries {
            let delay = TimeAmount.milliseconds(min(5000, 100 << min(attempt, 6)))
            channel.eventLoop.scheduleTask(in: delay) { [weak self] in
                guard let self else { return }
                self.lock.withLock {
                    self.retryPending.remove(sid)
                    // Still wanted, and still on the same attachment.
                    guard let entry = self.subscriptions[sid], self.channel === channel else { return }
                    if let count = self.resentBySubject[entry.subject] { self.resentBySubject[entry.subject] = count &+ 1 }
                    else if self.resentBySubject.count < 10_000 { self.resentBySubject[entry.subject] = 1 }
                    self.writeLocked(Self.subCommand(subject: entry.subject, queue: entry.queue, sid: sid), to: channel)
                }
            }
        }
    }

    /// How many SUBs nodes refused (each refusal is retried; a count that
    /// keeps growing means the node does not know this user's membership).
    public var refusedSubscriptions: Int { lock.withLock { subscriptionRefusals } }

    /// Subscribes to `subject`, waits until the node accepts it
    /// (`confirmSubscription`), and unsubscribes: proof that the node holds
    /// the permission, for a client that will only publish there.
    public func confirmPermission(_ subject: String, timeout: Duration = .seconds(15)) async throws(ClientError) {
        let sid: UInt64? = lock.withLock {
            guard !closed else { return nil }
            let sid = nextSID
            nextSID += 1
            let (_, continuation) = AsyncStream<NATSMessage>.makeStream(bufferingPolicy: .bufferingNewest(1))
            subscriptions[sid] = SubscriptionEntry(subject: subject, queue: nil, continuation: continuation)
            if let channel { writeLocked(Self.subCommand(subject: subject, queue: nil, sid: sid), to: channel) }
            return sid
        }
        guard let sid else { throw .closed }
        defer { unsubscribe(sid) }
        try await confirmSubscription(subject, timeout: timeout)
    }

    /// Waits until the attached node has accepted the subscriptions on
    /// `subject`: a round trip during which no SUB on it was refused, with
    /// none waiting to be sent again. A node that does not yet hold the
    /// membership change allowing it (made through another node a moment
    /// ago) refuses, and the refusal is retried; publishing before it
    /// catches up would be refused too, silently. Throws after `timeout`.
    public func confirmSubscription(_ subject: String, timeout: Duration = .seconds(15)) async throws(ClientError) {
        let deadline = ContinuousClock.now + timeout
        while true {
            let before = lock.withLock { (refusalsBySubject[subject, default: 0], resentBySubject[subject, default: 0]) }
            try await flush()
            let (after, pending, known) = lock.withLock {
                ((refusalsBySubject[subject, default: 0], resentBySubject[subject, default: 0]),
                 subscriptions.contains { retryPending.contains($0.key) && $0.value.subject == subject },
                 subscriptions.contains { $0.value.subject == subject })
            }
            guard known else { throw .invalid("no subscription on \(subject) to confirm") }
            // No refusal during the round trip, none waiting to be resent, and
            // no SUB resent meanwhile (its answer may come after the PONG).
            if after == before && !pending { return }
            guard ContinuousClock.now < deadline else {
                throw .timeout("the node (\(currentEndpoint?.description ?? "?")) still refuses \(subject): it does not yet hold "
                               + "the membership that allows it")
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// The fields of INFO the client uses.
struct ServerInfo: Sendable {
    var serverID = ""
    var nonce: String?
    var tlsRequired = false
    var maxPayload = 1024 * 1024
    var connectURLs: [String] = []

    init(json: ByteBuffer) throws(ClientError) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.readableBytesView)) as? [String: Any] else {
            throw .invalid("the node sent an INFO that is not a JSON object")
        }
        serverID = object["server_id"] as? String ?? ""
        nonce = object["nonce"] as? String
        tlsRequired = object["tls_required"] as? Bool ?? false
        maxPayload = (object["max_payload"] as? NSNumber)?.intValue ?? maxPayload
        connectURLs = object["connect_urls"] as? [String] ?? []
    }
}

/// The protocol state machine of one connection attempt: INFO, optional
/// TLS upgrade, CONNECT signed with the nkey, PING/PONG, then messages.
private final class NATSClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State { case awaitingInfo, awaitingPong, connected, failed }

    private let connection: NATSConnection
    private let endpoint: Endpoint
    private let identity: Identity
    private let name: String
    private let tls: NIOSSLContext?
    private let handshake: EventLoopPromise<ServerInfo>
    private var state = State.awaitingInfo
    private var info: ServerInfo?
    private var pending: ByteBuffer?
    private var parser = ServerProtocolParser()
    private let attachment: Int

    init(connection: NATSConnection, endpoint: Endpoint, identity: Identity, name: String, tls: NIOSSLContext?,
         handshake: EventLoopPromise<ServerInfo>, attachment: Int) {
        self.attachment = attachment
        self.connection = connection
        self.endpoint = endpoint
        self.identity = identity
        self.name = name
        self.tls = tls
        self.handshake = handshake
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if pending == nil || pending?.readableBytes == 0 {
            pending = incoming
        } else {
            pending?.writeBuffer(&incoming)
        }
        guard var buffer = pending else { return }
        defer { pending = buffer.readableBytes > 0 ? buffer : nil }
        while state != .failed {
            let op: ServerOp?
            do { op = try parser.next(&buffer) } catch {
                fail(context, ClientError.invalid("protocol error from \(endpoint): \(error)"))
                return
            }
            guard let op else { return }
            handle(op, context: context)
        }
    }

    private func handle(_ op: ServerOp, context: ChannelHandlerContext) {
        switch (state, op) {
        case (.awaitingInfo, .info(let json)):
            do {
                let info = try ServerInfo(json: json)
                self.info = info
                parser.maxPayload = max(info.maxPayload, 1024)
                try startSession(info, context: context)
            } catch {
                fail(context, error)
            }
        case (.awaitingPong, .pong):
            state = .connected
            if let info { handshake.succeed(info) }
        case (.awaitingPong, .err(let text)), (.awaitingInfo, .err(let text)):
            let lower = text.lowercased()
            fail(context, lower.contains("authorization") || lower.contains("authentication") ? ClientError.authenticationFailed(text) : ClientError.invalid("the node said: \(text)"))
        case (.connected, .msg(let subject, let sid, let reply, let headerLength, var message)):
            if let headerLength { message.moveReaderIndex(forwardBy: headerLength) }   // headers are not used by frames
            connection.deliver(sid: Substring(sid), message: NATSMessage(subject: subject, reply: reply,
                                                                          payload: message.readBytes(length: message.readableBytes) ?? [],
                                                                          attachment: attachment,
                                                                          receivedAt: UInt64(max(0, Date().timeIntervalSince1970 * 1000))))
        case (_, .ping):
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "PONG\r\n")), promise: nil)
        case (.connected, .pong):
            connection.pong()
        case (.connected, .err(let text)):
            connection.serverError(text)
        case (.connected, .info(let json)):
            // Asynchronous INFO: the cluster's client URLs changed.
            if let info = try? ServerInfo(json: json) { connection.learn(info.connectURLs) }
        case (_, .ok):
            break
        default:
            fail(context, ClientError.invalid("unexpected \(op) from \(endpoint) during the handshake"))
        }
    }

    private func startSession(_ info: ServerInfo, context: ChannelHandlerContext) throws {
        if info.tlsRequired {
            guard let tls else { throw ClientError.tlsRequiredWithoutCA(endpoint.description) }
            let hostname = endpoint.host.first?.isNumber == true || endpoint.host.contains(":") ? nil : endpoint.host
            try context.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: hostname), position: .first)
        } else if endpoint.requiresTLS || (tls != nil && !endpoint.isLoopback) || !endpoint.isLoopback {
            // Never downgrade: a tls:// seed, or any remote node, must offer TLS.
            throw ClientError.plaintextRefused(endpoint.description)
        }
        var connect: [String: Any] = ["verbose": false, "pedantic": false, "name": name, "lang": "swift",
                                      "version": UnibusVersion.current, "protocol": 1, "echo": true, "headers": false,
                                      "tls_required": info.tlsRequired]
        if let nonce = info.nonce {
            connect["nkey"] = identity.userNKey
            connect["sig"] = Base64.encode(identity.sign(Array(nonce.utf8)), alphabet: .url)
        }
        let json = (try? JSONSerialization.data(withJSONObject: connect, options: [.sortedKeys])) ?? Data("{}".utf8)
        var buffer = context.channel.allocator.buffer(capacity: json.count + 20)
        buffer.writeStaticString("CONNECT ")
        buffer.writeBytes(json)
        buffer.writeStaticString("\r\nPING\r\n")
        state = .awaitingPong
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    private func fail(_ context: ChannelHandlerContext, _ error: Error) {
        state = .failed
        handshake.fail(error)
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if state != .connected { handshake.fail(ClientError.invalid("\(endpoint): \(error)")) }
        connection.serverError("\(error)")
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if state != .connected && state != .failed {
            handshake.fail(ClientError.invalid("\(endpoint) closed the connection during the handshake"))
        }
        context.fireChannelInactive()
    }
}
