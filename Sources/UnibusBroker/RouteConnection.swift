import Atomics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import UnibusCrypto
import UnibusWire

/// What a node says about itself when a route link opens (`INFO`).
public struct RouteInfo: Sendable, Equatable {
    /// The node's id: its server nkey ("N…").
    public var serverID: String
    public var name: String
    /// The cluster's name; links between different clusters are refused.
    public var cluster: String
    /// The cluster's trust root (the membership root admin's nkey, or "" for
    /// a broker without membership); links across roots are refused.
    public var root: String
    /// The client URL the node was configured to advertise, if any.
    public var clientURL: String?
    /// The control-plane URL the node was configured to advertise, if any.
    public var controlURL: String?

    public init(serverID: String, name: String, cluster: String, root: String, clientURL: String?, controlURL: String?) {
        self.serverID = serverID
        self.name = name
        self.cluster = cluster
        self.root = root
        self.clientURL = clientURL
        self.controlURL = controlURL
    }

    func json(nonce: String) -> [UInt8] {
        var object: [String: Any] = ["server_id": serverID, "name": name, "cluster": cluster, "root": root,
                                     "version": UnibusVersion.current, "proto": Self.protocolVersion, "nonce": nonce]
        if let clientURL { object["client_url"] = clientURL }
        if let controlURL { object["control_url"] = controlURL }
        return (try? [UInt8](JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))) ?? Array("{}".utf8)
    }

    /// Parses a peer's INFO; nil when it is not understood. The node id must
    /// be a server nkey (the key the peer then proves it holds), and the
    /// nonce the one this end will sign.
    /// The route protocol this build speaks. Bump it when any frame on a
    /// route changes shape; docs/operations.md says which upgrades roll.
    public static let protocolVersion = 1

    /// The route protocol version the peer speaks (`proto` in its INFO).
    public private(set) var protocolVersion = RouteInfo.protocolVersion
    /// The peer's unibusd version, as it says (for messages only).
    public private(set) var software = UnibusVersion.current

    init?(json: ByteBuffer, nonce: inout String) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.readableBytesView)) as? [String: Any],
              let serverID = object["server_id"] as? String, (try? NKey.decodePublicKey(serverID, expecting: .server)) != nil,
              let cluster = object["cluster"] as? String, let root = object["root"] as? String,
              let peerNonce = object["nonce"] as? String, (16...64).contains(peerNonce.utf8.count) else { return nil }
        nonce = peerNonce
        // `proto` governs everything on the link (RS+/RMSG and every RDATA
        // payload: membership, fleet and frame replication); absent or not
        // a small integer is not understood, a different one is refused by name.
        guard let proto = object["proto"] as? Int, (0...1_000_000).contains(proto) else { return nil }
        self.protocolVersion = proto
        self.software = (object["version"] as? String).map { String($0.prefix(64)) } ?? "unknown"
        let name = object["name"] as? String ?? ""
        let clientURL = object["client_url"] as? String, controlURL = object["control_url"] as? String
        // What a peer says about itself reaches clients (connect_urls) and
        // /v1/node: bounded and well-formed, or the INFO is not understood.
        guard name.utf8.count <= 128, name.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }), cluster.utf8.count <= 128, root.utf8.count <= 64,
              clientURL.map({ Self.isURL($0, schemes: ["nats", "tls"]) }) ?? true,
              controlURL.map({ Self.isURL($0, schemes: ["http", "https"]) }) ?? true else { return nil }
        self.serverID = serverID
        self.name = name
        self.cluster = cluster
        self.root = root
        self.clientURL = clientURL
        self.controlURL = controlURL
    }
}

extension RouteInfo {
    /// `SCHEME://HOST:PORT`, at most 256 printable bytes, no user info or path.
    static func isURL(_ text: String, schemes: [String]) -> Bool {
        guard text.utf8.count <= 256, text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }),
              let separator = text.range(of: "://"), schemes.contains(String(text[..<separator.lowerBound])) else { return false }
        let rest = text[separator.upperBound...]
        guard !rest.contains("@"), !rest.contains("/"), let colon = rest.lastIndex(of: ":"),
              let port = Int(rest[rest.index(after: colon)...]), (1...65_535).contains(port) else { return false }
        return colon > rest.startIndex
    }
}

/// One route link to another node: after both sides exchanged `INFO`, the
/// far node's interest (`RS+`/`RS-`) lives in the subject index as route
/// entries, messages that match it are forwarded here as `RMSG`, and `RMSG`
/// from the far node is delivered to local subscribers only: never relayed to
/// another route (every node links to every other, so one hop reaches all).
final class RouteConnection: QueuedConnection, ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State { case handshaking, authenticating, active, closed }

    let cluster: Cluster
    /// Whether this node opened the link (it matters for duplicate links).
    let dialed: Bool
    /// The URL dialed, for outbound links.
    let url: String?
    /// Whether the link ever became the active link to its peer.
    let becameActive = ManagedAtomic<Bool>(false)

    // MARK: loop-confined
    private var parser: RouteProtocolParser
    private(set) var state = State.handshaking
    private(set) var peer: RouteInfo?
    /// The far node's interest: (subject, queue) → its entry in the index.
    private var interest: [InterestKey: Subscription] = [:]
    private var pingsOutstanding = 0
    private var timer: RepeatedTask?
    private var handshakeTimer: Scheduled<Void>?
    private var lastPingSent = NIODeadline.now()
    private var tornDown = false
    private var closeReason: String?
    /// Why the link closed, once it has (read after `closeFuture`).
    private let finalReason = NIOLockedValueBox<String?>(nil)
    var closedBecause: String? { finalReason.withLockedValue { $0 } }
    /// A data frame is being handled off the loop; parsing waits for it.
    private var awaitingData = false
    /// The nonce this end sent in its INFO: the peer signs it to prove its id.
    private let nonce = Base64.encode(Sodium.randomNonce(count: 18), alphabet: .url)

    /// The fingerprint of the certificate this end presents on the link
    /// ("-" without TLS): the one in use when the link opened (a reload
    /// changes it for later links only).
    private let presentedCertificate: String

    init(id: UInt64, cluster: Cluster, channel: Channel, dialed: Bool, url: String?, tls: RouteTLS?) {
        self.cluster = cluster
        self.presentedCertificate = tls?.certificateFingerprint ?? "-"
        self.dialed = dialed
        self.url = url
        // Until the peer has proven its id it may send INFO and AUTH only:
        // no message or data frame is buffered for it (see `activate`).
        self.parser = RouteProtocolParser(maxControlLine: 64 * 1024, maxPayload: 0, maxData: 0)
        super.init(id: id, broker: cluster.broker, channel: channel, isRoute: true,
                   maxPendingBytes: max(cluster.broker.configuration.maxPendingBytes, 64 * 1024 * 1024))
    }

    /// The id of the node that opened this link.
    func dialer(selfID: String) -> String? {
        guard let peer else { return nil }
        return dialed ? selfID : peer.serverID
    }

    // MARK: lifecycle

    func channelActive(context: ChannelHandlerContext) {
        let info = cluster.localInfo.json(nonce: nonce)
        enqueueSelf { RouteEncoder.writeInfo(into: &$0, json: info) }
        flushTouched()
        handshakeTimer = eventLoop.scheduleTask(in: cluster.configuration.handshakeTimeout) { [self] in
            if state == .handshaking || state == .authenticating { closeWithError("no INFO and AUTH within the handshake timeout") }
        }
        let tick = min(TimeAmount.seconds(1), cluster.configuration.pingInterval)
        timer = eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { [weak self] _ in self?.onTick() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        tearDown()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if closeReason == nil { closeReason = "\(error)" }
        context.close(promise: nil)
    }

    private func tearDown() {
        closing = true
        guard !tornDown else { return }
        tornDown = true
        timer?.cancel()
        handshakeTimer?.cancel()
        let wasActive = state == .active
        state = .closed
        for subscription in interest.values {
            subscription.removed.store(true, ordering: .relaxed)
            index.remove(subscription)
        }
        interest.removeAll()
        closeForWrites()
        finalReason.withLockedValue { $0 = closeReason ?? "closed" }
        cluster.routeClosed(self, wasActive: wasActive, reason: closeReason ?? "closed")
    }

    // MARK: reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if closing { return }
        accumulate(&incoming)
        parseRoute()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        finishReadBatch()
    }

    /// Handles every complete operation buffered, except while a data frame
    /// is being handled off the loop: nothing after it is handled until it
    /// is done (a replicated key share is stored before the notice about it
    /// is delivered).
    /// Handles every complete operation buffered, except while a data frame
    /// is being handled off the loop: nothing after it is handled until it is
    /// done (a replicated key share is stored before the notice about it is
    /// delivered).
    ///
    /// The parser is a value: the limits set when the link becomes active
    /// (the largest data frame, payload) apply from the next pass, so a pass
    /// stops at every change of state and the next one starts with them (a
    /// peer's first data frame, read together with its AUTH, was once
    /// measured against the handshake's limit of zero and cut the link).
    private func parseRoute() {
        while true {
            let before = state
            if let violation = parseBuffered(parser, while: { !closing && !awaitingData && state == before }, handle) {
                stats.protocolViolations.wrappingIncrement(ordering: .relaxed)
                closeWithError("route protocol violation: \(violation)")
                return
            }
            if state == before || closing || awaitingData { return }
        }
    }

    private func dataHandled() {
        awaitingData = false
        guard !closing else { return }
        parseRoute()
        finishReadBatch()
        if !awaitingData && !readingPaused {
            channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
    }

    private func handle(_ op: RouteOp) {
        switch (state, op) {
        case (.handshaking, .info(let json)):
            var peerNonce = ""
            guard let info = RouteInfo(json: json, nonce: &peerNonce) else {
                stats.routesRefused.wrappingIncrement(ordering: .relaxed)
                closeWithError("the route INFO is not understood (it needs a server nkey as server_id and a nonce)")
                return
            }
            guard info.protocolVersion == RouteInfo.protocolVersion else {
                stats.routesRefused.wrappingIncrement(ordering: .relaxed)
                let reason = "the peer speaks route protocol version \(info.protocolVersion) (unibusd \(info.software)); this node speaks version "
                    + "\(RouteInfo.protocolVersion) (unibusd \(UnibusVersion.current)). Nodes of different route protocol versions cannot link: "
                    + "upgrade every node together (docs/operations.md, \"Upgrades\")"
                cluster.refused(info.serverID, reason: reason)
                closeWithError("route refused: \(reason)")
                return
            }
            peer = info
            state = .authenticating
            // Prove this node's id: sign the peer's nonce with the node key,
            // naming the certificate this node presents on the link.
            let proof = cluster.broker.nodeKey.sign(Self.proofBytes(nonce: peerNonce, signer: cluster.localInfo.serverID,
                                                                    verifier: info.serverID, cluster: info.cluster,
                                                                    certificate: presentedCertificate))
            let json = Array("{\"sig\":\"\(Base64.encode(proof, alphabet: .url))\"}".utf8)
            enqueueSelf { RouteEncoder.writeAuth(into: &$0, json: json) }
        case (.authenticating, .auth(let json)):
            handshakeTimer?.cancel()
            guard let info = peer, proves(info, json) else {
                stats.routesRefused.wrappingIncrement(ordering: .relaxed)
                cluster.refused(peer?.serverID ?? "?", reason: "the peer did not prove it holds the key of the node id it claims")
                closeWithError("route AUTH does not verify: the peer did not prove it holds the key of node id \(peer?.serverID ?? "?")")
                return
            }
            switch cluster.handshake(self, info: info) {
            case .accept:
                state = .active
                parser.maxPayload = cluster.broker.configuration.maxPayload + 64 * 1024
                parser.maxData = cluster.configuration.maxDataFrame
                becameActive.store(true, ordering: .relaxed)
                stats.routesOpened.wrappingIncrement(ordering: .relaxed)
            case .reject(let reason):
                closeWithError(reason)
            }
        case (_, .ping):
            enqueueSelf { $0.writeStaticString("PONG\r\n") }
        case (_, .pong):
            pingsOutstanding = 0
        case (.active, .subscribe(let subject, let queue)):
            guard Subject.isValidFilter(subject) else {
                closeWithError("invalid interest subject \(subject.prefix(100))")
                return
            }
            let key = InterestKey(subject: subject, queue: queue)
            guard interest[key] == nil else { return }
            guard interest.count < cluster.configuration.maxInterest else {
                stats.routesRefused.wrappingIncrement(ordering: .relaxed)
                closeWithError("the peer announced more than \(cluster.configuration.maxInterest) interest entries")
                return
            }
            let subscription = Subscription(connection: self, subject: subject, queue: queue, sid: "")
            interest[key] = subscription
            index.insert(subscription)
        case (.active, .unsubscribe(let subject, let queue)):
            guard let subscription = interest.removeValue(forKey: InterestKey(subject: subject, queue: queue)) else { return }
            subscription.removed.store(true, ordering: .relaxed)
            index.remove(subscription)
        case (.active, .message(let subject, let reply, let queues, let headerLength, let message)):
            stats.routedIn.wrappingIncrement(ordering: .relaxed)
            let result = index.match(subject)
            // Local subscribers only: a routed message never crosses a second route.
            _ = deliverLocally(result, subject: subject, reply: reply, headerLength: headerLength, message: message,
                               skip: nil, onlyQueues: queues, routesMayTakeQueues: false)
        case (.active, .data(let payload)):
            awaitingData = true
            channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            cluster.received(data: payload, from: self).whenComplete { [self] _ in
                eventLoop.execute { self.dataHandled() }
            }
        case (_, .err(let text)):
            closeReason = "the peer closed the link: \(text)"
            closeNow()
        case (.handshaking, _):
            closeWithError("a route must start with INFO")
        case (.authenticating, _):
            closeWithError("a route must prove its node id (AUTH) right after INFO")
        case (.active, .info), (.active, .auth):
            closeWithError("a second INFO or AUTH on an established route")
        case (.closed, _):
            break
        }
    }

    /// What a node signs to prove its id on a route: the other end's nonce,
    /// both ids, the cluster, and the fingerprint of the certificate the
    /// signer presents ("-" on plaintext dev-mode routes). The nonce makes a
    /// proof good for one link; the certificate makes it useless to a
    /// holder of another cluster certificate relaying between two nodes.
    static func proofBytes(nonce: String, signer: String, verifier: String, cluster: String, certificate: String) -> [UInt8] {
        Array("UNIBUS-ROUTE-2\n\(nonce)\n\(signer)\n\(verifier)\n\(cluster)\n\(certificate)".utf8)
    }

    /// The fingerprint of the certificate the peer presented on this link
    /// ("-" without TLS; nil when TLS is on and none can be read).
    private func peerCertificateFingerprint() -> String? {
        guard presentedCertificate != "-" else { return "-" }
        guard let certificate = try? channel.pipeline.syncOperations.nioSSL_peerCertificate() else { return nil }
        let fingerprint = RouteTLS.fingerprint(certificate)
        return fingerprint.isEmpty ? nil : fingerprint
    }

    /// Whether `json` (`{"sig": base64url}`) is `info`'s node key signing this end's nonce.
    private func proves(_ info: RouteInfo, _ json: ByteBuffer) -> Bool {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.readableBytesView)) as? [String: Any],
              let text = object["sig"] as? String, text.utf8.count <= 128,
              let signature = try? Base64.decode(text, alphabet: .url), signature.count == 64,
              let (_, key) = try? NKey.decodePublicKey(info.serverID, expecting: .server),
              let certificate = peerCertificateFingerprint() else { return false }
        return key.verify(signature: signature, message: Self.proofBytes(nonce: nonce, signer: info.serverID,
                                                                          verifier: cluster.localInfo.serverID, cluster: cluster.localInfo.cluster,
                                                                          certificate: certificate))
    }

    override func resumeReading() {
        guard readingPaused, !closing else { return }
        readingPaused = false
        // A data frame still being handled keeps reading off.
        if !awaitingData { channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in } }
    }

    // MARK: sending (any thread)

    /// Sends `RS+`/`RS-` for local interest.
    func sendInterest(add: Bool, subject: String, queue: String?) {
        send { RouteEncoder.writeInterest(into: &$0, add: add, subject: subject, queue: queue) }
    }

    /// Sends an `RDATA` frame (the node layer's replication traffic).
    func sendData(_ payload: [UInt8]) {
        send { RouteEncoder.writeData(into: &$0, payload) }
    }

    // MARK: timers

    private func onTick() {
        guard !closing else { return }
        let now = NIODeadline.now()
        if let stuck = unwrittenFor, stuck > broker.configuration.writeDeadline {
            stats.slowConsumers.wrappingIncrement(ordering: .relaxed)
            closeReason = "the peer did not read for \(broker.configuration.writeDeadline.nanoseconds / 1_000_000_000) s"
            closeSlowConsumer()
            return
        }
        guard state == .active, now - lastPingSent >= cluster.configuration.pingInterval else { return }
        if pingsOutstanding >= cluster.configuration.maxPingsOutstanding {
            closeWithError("stale route: \(pingsOutstanding) PINGs unanswered")
            return
        }
        pingsOutstanding += 1
        lastPingSent = now
        enqueueSelf { $0.writeStaticString("PING\r\n") }
        flushTouched()
    }

    // MARK: closing

    /// Sends `-ERR 'reason'`, flushes, closes.
    func closeWithError(_ reason: String) {
        guard !closing else { return }
        if closeReason == nil { closeReason = reason }
        enqueueSelf { RouteEncoder.writeError(into: &$0, reason) }
        closeNow()
    }

    private func closeNow() {
        guard !tornDown else { return }
        flushTouched()
        tearDown()
        closeWhenWritten()
    }

    override func closeSlowConsumer() {
        guard !closing else { return }
        if closeReason == nil { closeReason = "slow route: its outbound queue passed \(maxPendingBytes) bytes" }
        tearDown()
        channel.close(mode: .all, promise: nil)
    }

    /// Closes from any thread.
    func close(reason: String) {
        eventLoop.execute { self.closeWithError(reason) }
    }
}

/// A (subject, queue) interest as routes announce it.
struct InterestKey: Hashable, Sendable {
    let subject: String
    let queue: String?
}
