import Atomics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import UnibusCrypto
import UnibusWire

/// Options a client sets in CONNECT. Before CONNECT nats-server behaves as if
/// verbose and pedantic were on; CONNECT's absent fields keep these defaults.
struct ClientOptions {
    var verbose = true
    var pedantic = true
    var echo = true
    var headers = false
    var noResponders = false
    var name: String?
    /// CONNECT's `protocol`: 1 and up take asynchronous INFO updates.
    var protocolVersion = 0
}

/// One client connection: its protocol state machine (driven by parsed ops on
/// its event loop); its outbound queue and delivery come from `QueuedConnection`.
final class BrokerConnection: QueuedConnection, ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: fields under "loop-confined" are touched only on `eventLoop`;
    // fields under "shared" only with `sharedLock` held.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let requiresAuthentication: Bool

    // MARK: loop-confined
    private var parser: ClientProtocolParser
    private var options = ClientOptions()
    private var connected = false
    private var nonce: String?
    private var permissions = Permissions.everything {
        didSet {
            publishUnrestricted = permissions.publish == .everything
            subscribeUnrestricted = permissions.subscribe == .everything
            lastAllowedReplyFilter = nil
        }
    }
    private var publishUnrestricted = true
    private var subscribeUnrestricted = true
    /// The last reply subject found allowed: clients reuse one inbox
    /// subscription for many requests, whose replies share a prefix.
    private var lastAllowedReplyFilter: String?
    // Unchecked: read on every publish of a restricted user, loop-confined, never accessed re-entrantly.
    @exclusivity(unchecked) private var publishAllowed: [String: Bool] = [:]
    private var subscriptions: [String: Subscription] = [:]
    private var pingsOutstanding = 0
    private var timer: RepeatedTask?
    private var authTimer: Scheduled<Void>?
    private var lastPingSent = NIODeadline.now()
    private var registered = false
    /// The authenticated user, on the loop: subscriptions count against it.
    private var subscriber: String?
    private var tornDown = false
    private var context: ChannelHandlerContext?

    // MARK: shared
    private var user: String?

    init(id: UInt64, broker: Broker, channel: Channel) {
        self.requiresAuthentication = broker.configuration.authorizer != nil
        self.parser = ClientProtocolParser(maxControlLine: broker.configuration.maxControlLine,
                                           maxPayload: broker.limits.maxPayload.load(ordering: .relaxed))
        super.init(id: id, broker: broker, channel: channel, isRoute: false, maxPendingBytes: broker.configuration.maxPendingBytes)
    }

    /// The user nkey this connection authenticated as, if any.
    var authenticatedUser: String? { sharedLock.withLock { user } }

    // MARK: lifecycle

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        stats.connectionsAccepted.wrappingIncrement(ordering: .relaxed)
        let accepted = broker.register(self)
        registered = accepted
        if broker.configuration.authorizer != nil {
            nonce = Base64.encode(Sodium.randomNonce(count: 11), alphabet: .url)
        }
        enqueueInfo(context: context)
        if accepted, let tls = broker.tls.current {
            // INFO goes out in plaintext; the client then starts TLS, as in
            // nats-server's default (non handshake-first) mode.
            flushNow()
            do {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context), position: .first)
            } catch {
                closeNow()
                return
            }
        }
        guard accepted else {
            closeWithError("maximum connections exceeded")
            return
        }
        stats.currentConnections.wrappingIncrement(ordering: .relaxed)
        if broker.configuration.authorizer != nil {
            authTimer = eventLoop.scheduleTask(in: broker.configuration.authTimeout) { [self] in
                if !connected {
                    stats.countAuthorizationFailure(.timeout)
                    closeWithError("Authentication Timeout")
                }
            }
        }
        let tick = min(TimeAmount.seconds(1), broker.configuration.pingInterval, broker.configuration.writeDeadline)
        timer = eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { [weak self] _ in self?.onTick() }
        flushNow()
    }

    func channelInactive(context: ChannelHandlerContext) {
        tearDown()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Resets and broken pipes: the client went away.
        context.close(promise: nil)
    }

    /// Removes subscriptions and registration; idempotent.
    private func tearDown() {
        closing = true
        guard !tornDown else { return }
        tornDown = true
        timer?.cancel()
        timer = nil
        authTimer?.cancel()
        for subscription in subscriptions.values {
            subscription.removed.store(true, ordering: .relaxed)
            broker.index.remove(subscription)
            broker.localInterestRemoved(subject: subscription.subject, queue: subscription.queue)
        }
        if let key = subscriber { broker.releaseSubscriptions(of: key, count: subscriptions.count) }
        subscriptions.removeAll()
        setResponsePolicy(nil)
        closeForWrites()
        // The context holds this handler and this handler held the context:
        // without this the pair (and the channel) outlived every close.
        context = nil
        if registered {
            broker.unregister(self)
            stats.currentConnections.wrappingDecrement(ordering: .relaxed)
        }
    }

    // MARK: reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if closing { return }
        accumulate(&incoming)
        if let violation = parseBuffered(parser, while: { !closing }, handle) {
            stats.protocolViolations.wrappingIncrement(ordering: .relaxed)
            if let message = violation.errorMessage {
                closeWithError(message)
            } else {
                closeNow()
            }
            return
        }
        // Until CONNECT is accepted, a connection may hold only a little
        // (what CONNECT needs), never a max_payload PUB.
        if requiresAuthentication && !connected && !closing && bufferedBytes > broker.configuration.maxPreAuthBytes {
            closeForAuthorizationViolation(.noCredentials)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        finishReadBatch()
    }

    // MARK: operations

    private func handle(_ op: ClientOp) {
        if requiresAuthentication && !connected {
            switch op {
            case .connect: break
            default:
                closeForAuthorizationViolation(.noCredentials)
                return
            }
        }
        switch op {
        case .connect(let json):
            if requiresAuthentication && connected {
                // Never an identity switch on an authenticated connection.
                stats.protocolViolations.wrappingIncrement(ordering: .relaxed)
                closeWithError("Authorization Violation")
                return
            }
            handleConnect(json)
        case .ping:
            enqueueSelf { $0.writeStaticString("PONG\r\n") }
        case .pong:
            pingsOutstanding = 0
        case .sub(let subject, let queue, let sid):
            handleSub(subject: subject, queue: queue, sid: sid)
        case .unsub(let sid, let max):
            handleUnsub(sid: sid, max: max)
        case .pub(let subject, let reply, let payload):
            handlePublish(subject: subject, reply: reply, headerLength: nil, message: payload)
        case .hpub(let subject, let reply, let headerLength, let message):
            guard options.headers else {
                // nats-server closes a client that sends HPUB without negotiating headers.
                closeNow()
                return
            }
            handlePublish(subject: subject, reply: reply, headerLength: headerLength, message: message)
        case .ok, .info:
            break
        case .err:
            closeNow()
        }
    }

    private func acknowledge() {
        if options.verbose { enqueueSelf { $0.writeStaticString("+OK\r\n") } }
    }

    private func handleConnect(_ json: ByteBuffer) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.readableBytesView)) as? [String: Any] else {
            closeNow()
            return
        }
        var updated = options
        if let value = object["verbose"] as? Bool { updated.verbose = value }
        if let value = object["pedantic"] as? Bool { updated.pedantic = value }
        if let value = object["echo"] as? Bool { updated.echo = value }
        if let value = object["headers"] as? Bool { updated.headers = value }
        if let value = object["no_responders"] as? Bool { updated.noResponders = value }
        updated.name = object["name"] as? String
        updated.protocolVersion = (object["protocol"] as? NSNumber)?.intValue ?? 0
        if updated.noResponders && !updated.headers {
            closeWithError("no responders requires headers support")
            return
        }
        if let authorizer = broker.configuration.authorizer {
            guard let nonce, let nkey = object["nkey"] as? String, let signatureText = object["sig"] as? String else {
                closeForAuthorizationViolation(.noCredentials)
                return
            }
            guard let (_, key) = try? NKey.decodePublicKey(nkey, expecting: .user),
                  let signature = Self.decodeSignature(signatureText),
                  key.verify(signature: signature, message: Array(nonce.utf8)) else {
                closeForAuthorizationViolation(.badSignature)
                return
            }
            guard let granted = authorizer.permissions(forUser: nkey) else {
                closeForAuthorizationViolation(.notAllowed)
                return
            }
            // A killswitch refuses new connections (existing ones are closed by the node).
            guard authorizer.admits(newConnectionOf: nkey) else {
                closeForAuthorizationViolation(.killswitch)
                return
            }
            permissions = granted
            publishAllowed.removeAll()
            setResponsePolicy(granted.responses)
            sharedLock.withLock { user = nkey }
            subscriber = nkey
            authTimer?.cancel()
            authTimer = nil
        }
        options = updated
        connected = true
        acknowledge()
    }

    /// nats.go sends base64url without padding; nats-py sends padded standard base64.
    static func decodeSignature(_ text: String) -> [UInt8]? {
        if let raw = try? Base64.decode(text, alphabet: .url), raw.count == 64 { return raw }
        if let data = Data(base64Encoded: text), data.count == 64 { return [UInt8](data) }
        if let raw = try? Base64.decode(text), raw.count == 64 { return raw }
        return nil
    }

    private func handleSub(subject: String, queue: String?, sid: String) {
        guard Subject.isValidFilter(subject), queue.map(Self.isValidQueueName) ?? true else {
            enqueueError("Invalid Subject")
            return
        }
        guard permissions.subscribe.permits(filter: subject) else {
            stats.permissionViolations.wrappingIncrement(ordering: .relaxed)
            enqueueError("Permissions Violation for Subscription to \"\(subject)\"")
            return
        }
        if subscriptions[sid] != nil {
            acknowledge()
            return
        }
        let limit = broker.limits.maxSubscriptions.load(ordering: .relaxed)
        if limit > 0 && subscriptions.count >= limit {
            enqueueError("maximum subscriptions exceeded")
            return
        }
        // One user's subscriptions over all its connections are bounded too:
        // each distinct one becomes interest on every route peer.
        if let key = subscriber, !broker.reserveSubscription(for: key) {
            enqueueError("maximum subscriptions exceeded")
            return
        }
        let subscription = Subscription(connection: self, subject: subject, queue: queue, sid: sid,
                                        deny: permissions.subscribe.denied(within: subject))
        subscriptions[sid] = subscription
        broker.index.insert(subscription)
        broker.localInterestAdded(subject: subject, queue: queue)
        acknowledge()
    }

    static func isValidQueueName(_ name: String) -> Bool {
        !name.isEmpty && !name.utf8.contains { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }
    }

    private func handleUnsub(sid: String, max: Int?) {
        defer { acknowledge() }
        guard let subscription = subscriptions[sid] else { return }
        if let max, max > 0 {
            let delivered = subscription.delivered.load(ordering: .relaxed)
            if delivered < max {
                subscription.remaining.store(max - delivered, ordering: .relaxed)
                subscription.limited.store(true, ordering: .relaxed)
                return
            }
        }
        removeSubscription(subscription)
    }

    override func removeSubscriptionOnLoop(_ subscription: Subscription) {
        removeSubscription(subscription)
    }

    private func removeSubscription(_ subscription: Subscription) {
        guard !subscription.removed.exchange(true, ordering: .relaxed) else { return }
        if subscriptions[subscription.sid] === subscription {
            subscriptions[subscription.sid] = nil
            if let key = subscriber { broker.releaseSubscriptions(of: key, count: 1) }
        }
        broker.index.remove(subscription)
        broker.localInterestRemoved(subject: subscription.subject, queue: subscription.queue)
    }

    private func handlePublish(subject: String, reply: String?, headerLength: Int?, message: ByteBuffer) {
        if options.pedantic && !Subject.isValidLiteral(subject) {
            // nats-server reports it and still processes the message.
            enqueueError("Invalid Publish Subject")
        }
        if !isPublishAllowed(subject) {
            stats.permissionViolations.wrappingIncrement(ordering: .relaxed)
            enqueueError("Permissions Violation for Publish to \"\(subject)\"")
            return
        }
        // A reply subject becomes a one-time publish permit for whoever
        // answers (allow_responses), so it must be somewhere this publisher
        // can receive: its own inbox, not a room, inbox or key subject of
        // someone else. Checked here, where the publisher is known; routes
        // carry only replies that passed this check on their node.
        if let reply, !subscribeUnrestricted, !isReplyAllowed(reply) {
            stats.permissionViolations.wrappingIncrement(ordering: .relaxed)
            enqueueError("Permissions Violation for Publish to \"\(subject)\" with reply \"\(reply)\"")
            return
        }
        stats.messagesIn.wrappingIncrement(ordering: .relaxed)
        if let tap = broker.tap(for: subject) { tap.published(subject: subject, payload: message, publisher: authenticatedUser) }
        // nats-server acknowledges before it delivers (the +OK precedes an echoed MSG).
        acknowledge()
        let result = index.match(subject)
        if result.isEmpty {
            if let reply, options.noResponders {
                sendNoResponders(reply: reply)
            }
            return
        }
        let routed = deliverLocally(result, subject: subject, reply: reply, headerLength: headerLength, message: message,
                                    skip: options.echo ? nil : self, onlyQueues: nil, routesMayTakeQueues: true)
        if result.routes.isEmpty && routed.isEmpty { return }
        // One RMSG per route with interest, naming the queue groups it was chosen for.
        for route in result.routes {
            let queues = routed.isEmpty ? [] : routed.compactMap { $0.0 === route ? $0.1 : nil }
            forward(to: route, subject: subject, reply: reply, queues: queues, headerLength: headerLength, message: message)
        }
        var done: [RouteConnection] = []
        for (route, _) in routed where !result.routes.contains(where: { $0 === route }) && !done.contains(where: { $0 === route }) {
            done.append(route)
            let queues = routed.compactMap { $0.0 === route ? $0.1 : nil }
            forward(to: route, subject: subject, reply: reply, queues: queues, headerLength: headerLength, message: message)
        }
    }

    private func isPublishAllowed(_ subject: String) -> Bool {
        if publishUnrestricted { return true }
        if let known = publishAllowed[subject], known { return true }
        let allowed = permissions.publish.permits(subject: subject)
        if publishAllowed.count > 1024 { publishAllowed.removeAll() }
        publishAllowed[subject] = allowed
        // A reply to a request delivered here (allow_responses), once.
        return allowed || (permissions.responses != nil && consumeResponsePermit(subject))
    }

    /// Whether this connection may subscribe to `reply` (so may receive the
    /// answer there). Typical clients send every request with a reply under
    /// one inbox subscription, so the subscription that covers the last
    /// allowed reply is tried first, without splitting the subject.
    private func isReplyAllowed(_ reply: String) -> Bool {
        if let filter = lastAllowedReplyFilter, Subject.matches(filter: filter, subject: reply) { return true }
        guard Subject.isValidLiteral(reply), permissions.subscribe.permits(filter: reply),
              permissions.subscribe.denied(within: reply).isEmpty else { return false }
        // Only cached where no deny rule could carve an exception out of it.
        if permissions.subscribe.deny.isEmpty {
            lastAllowedReplyFilter = permissions.subscribe.allow.first { SubjectPermission.filter($0, covers: reply) }
        }
        return true
    }

    /// A 503 status to the publisher's own subscription for `reply`, as nats-server sends.
    private func sendNoResponders(reply: String) {
        guard let subscription = subscriptions.values.first(where: { Subject.matches(filter: $0.subject, subject: reply) }) else { return }
        enqueueSelf { buffer in
            buffer.writeStaticString("HMSG ")
            buffer.writeString(reply)
            buffer.writeInteger(UInt8(ascii: " "))
            buffer.writeString(subscription.sid)
            buffer.writeStaticString(" 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
        }
    }

    // MARK: outbound

    private func enqueueError(_ message: String) {
        enqueueSelf { buffer in
            buffer.writeStaticString("-ERR '")
            buffer.writeString(message)
            buffer.writeStaticString("'\r\n")
        }
    }

    /// Tells a connected client the cluster's current URLs (INFO after
    /// CONNECT, which clients that declared protocol 1 understand).
    func sendAsyncInfo() {
        eventLoop.execute { [self] in
            guard connected, !closing, options.protocolVersion >= 1, let context else { return }
            enqueueInfo(context: context)
            flushTouched()
        }
    }

    private func enqueueInfo(context: ChannelHandlerContext) {
        let configuration = broker.configuration
        var info: [String: Any] = [
            "server_id": broker.serverID,
            "server_name": configuration.serverName,
            "version": "2.9.10-unibus-\(UnibusVersion.current)",
            "proto": 1,
            "go": "swift",
            "host": configuration.host,
            "port": broker.port ?? configuration.port,
            "headers": true,
            "max_payload": parser.maxPayload,
            "client_id": Int(id),
        ]
        if let ip = context.remoteAddress?.ipAddress { info["client_ip"] = ip }
        if let tls = broker.tls.current {
            info["tls_required"] = true
            info["tls_available"] = true
            if tls.verifiesClients { info["tls_verify"] = true }
        }
        if configuration.authorizer != nil {
            info["auth_required"] = true
            info["nonce"] = nonce ?? ""
        }
        let connectURLs = broker.connectURLs
        if !connectURLs.isEmpty { info["connect_urls"] = connectURLs }
        // Lame duck: stock clients (nats.go, nats-py) report it and move on
        // their next reconnect; the node closes them gradually.
        if broker.isLameDuck { info["ldm"] = true }
        let json = (try? JSONSerialization.data(withJSONObject: info, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        enqueueSelf { buffer in
            buffer.writeStaticString("INFO ")
            buffer.writeBytes(json)
            buffer.writeStaticString(" \r\n")
        }
    }

    // MARK: timers

    private func onTick() {
        guard !closing else { return }
        pruneResponsePermits()
        let configuration = broker.configuration
        let now = NIODeadline.now()
        if let stuck = unwrittenFor, stuck > configuration.writeDeadline {
            stats.slowConsumers.wrappingIncrement(ordering: .relaxed)
            closeSlowConsumer()
            return
        }
        if now - lastPingSent >= configuration.pingInterval {
            if pingsOutstanding >= configuration.maxPingsOutstanding {
                stats.staleConnections.wrappingIncrement(ordering: .relaxed)
                closeWithError("Stale Connection")
                return
            }
            pingsOutstanding += 1
            lastPingSent = now
            enqueueSelf { $0.writeStaticString("PING\r\n") }
            flushTouched()
        }
    }

    // MARK: closing

    private func closeForAuthorizationViolation(_ reason: AuthFailureReason) {
        stats.countAuthorizationFailure(reason)
        closeWithError("Authorization Violation")
    }

    /// Sends `-ERR 'message'`, flushes, then closes.
    private func closeWithError(_ message: String) {
        guard !closing else { return }
        enqueueError(message)
        closeAfterFlush()
    }

    /// Flushes, then closes once the last write reached the socket (or after
    /// a short grace period, so a stuck peer cannot hold the connection).
    private func closeAfterFlush() {
        flushTouched()
        tearDown()
        closeWhenWritten()
    }

    /// Closes after writing what is already queued, adding nothing (how
    /// nats-server ends a connection for malformed input).
    func closeNow() {
        guard !closing else { return }
        closeAfterFlush()
    }

    /// A slow consumer is cut off at once: its queued bytes are dropped, and
    /// nothing waits for writes it is not draining.
    override func closeSlowConsumer() {
        guard !closing else { return }
        tearDown()
        channel.close(mode: .all, promise: nil)
    }

    /// Flushes what is queued and closes (graceful shutdown).
    func closeGracefully() async {
        let done = eventLoop.makePromise(of: Void.self)
        eventLoop.execute { [self] in
            if !closing {
                flushNow()
                tearDown()
            }
            closeWhenWritten()
            channel.closeFuture.cascade(to: done)
        }
        try? await done.futureResult.get()
    }

    func closeForAuthorization(reason: AuthFailureReason = .revoked) async {
        try? await eventLoop.submit { [self] in closeForAuthorizationViolation(reason) }.get()
    }

    /// Re-reads this connection's permissions from the authorizer.
    func reauthorize() async {
        try? await eventLoop.submit { [self] in
            guard !closing, let authorizer = broker.configuration.authorizer, let user = authenticatedUser else { return }
            guard let granted = authorizer.permissions(forUser: user) else {
                closeForAuthorizationViolation(.revoked)
                return
            }
            guard granted != permissions else { return }
            permissions = granted
            publishAllowed.removeAll()
            setResponsePolicy(granted.responses)
            // Subscriptions the new permissions no longer allow are dropped, as nats-server does on reload.
            for subscription in subscriptions.values {
                if !granted.subscribe.permits(filter: subscription.subject) {
                    removeSubscription(subscription)
                    enqueueError("Permissions Violation for Subscription to \"\(subscription.subject)\"")
                    continue
                }
                // New deny rules that part of it overlaps: replace it with one that filters them.
                let deny = granted.subscribe.denied(within: subscription.subject)
                guard deny != subscription.deny else { continue }
                removeSubscription(subscription)
                let replacement = Subscription(connection: self, subject: subscription.subject, queue: subscription.queue,
                                               sid: subscription.sid, deny: deny)
                // Keep an UNSUB maximum: the replacement is the same subscription.
                replacement.delivered.store(subscription.delivered.load(ordering: .relaxed), ordering: .relaxed)
                replacement.remaining.store(subscription.remaining.load(ordering: .relaxed), ordering: .relaxed)
                replacement.limited.store(subscription.limited.load(ordering: .relaxed), ordering: .relaxed)
                subscriptions[subscription.sid] = replacement
                if let key = subscriber { _ = broker.reserveSubscription(for: key, enforcingLimit: false) }
                broker.index.insert(replacement)
                broker.localInterestAdded(subject: replacement.subject, queue: replacement.queue)
            }
            flushTouched()
        }.get()
    }
}

extension ByteBuffer {
    /// Writes a non-negative integer in decimal without allocating.
    @inline(__always)
    mutating func writeDecimal(_ value: Int) {
        if value < 10 {
            writeInteger(UInt8(truncatingIfNeeded: value) &+ UInt8(ascii: "0"))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var remaining = value
        withUnsafeMutableBytes(of: &digits) { raw in
            while remaining > 0 {
                raw[19 - count] = UInt8(truncatingIfNeeded: remaining % 10) &+ UInt8(ascii: "0")
                remaining /= 10
                count += 1
            }
            writeBytes(UnsafeRawBufferPointer(rebasing: raw[(20 - count)...]))
        }
    }
}
