import Atomics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import UnibusCrypto
import UnibusWire

/// How a node joins a cluster. Routes are explicit: the node dials exactly
/// the `routes` it is given and advertises exactly the URLs it is given,
/// never an address found on its interfaces.
public struct ClusterConfiguration: Sendable {
    /// The route listener.
    public var host = "127.0.0.1"
    public var port = 6222
    /// Route URLs to dial (`tls://HOST:PORT`, or `route://HOST:PORT` in
    /// loopback dev mode). The node's own URL may be in the list (the same
    /// list can be given to every node); it is recognised and skipped.
    public var routes: [String] = []
    /// Links are refused between nodes with different cluster names.
    public var name = "unibus"
    /// The cluster's trust root (the membership root admin); links are
    /// refused between nodes with different roots.
    public var root = ""
    /// Mutual TLS under the cluster CA. Nil only in loopback dev mode.
    public var tls: RouteTLS?
    /// The client URL this node tells clients and peers about (connect_urls).
    public var advertiseClientURL: String?
    /// The control-plane URL this node tells peers about.
    public var advertiseControlURL: String?
    public var pingInterval: TimeAmount = .seconds(2)
    public var maxPingsOutstanding = 3
    public var handshakeTimeout: TimeAmount = .seconds(5)
    /// Redial pauses double from this up to `maximumBackoff`, plus jitter.
    public var minimumBackoff: TimeAmount = .milliseconds(50)
    public var maximumBackoff: TimeAmount = .seconds(2)
    /// Largest RDATA frame (replication traffic).
    public var maxDataFrame = 16 * 1024 * 1024
    /// Connections the route listener holds at once (any state); more are
    /// closed at once. Handshakes must finish within `handshakeTimeout`.
    public var maxRouteConnections = 256
    /// Most interest entries (RS+) one peer may hold on this node; a peer
    /// past it is cut and counted (each entry costs memory and index work,
    /// about 300 bytes). Far above one user's subscriptions
    /// (`maxSubscriptionsPerUser`), so no single user can get a route cut.
    public var maxInterest = 1_000_000

    public init() {}
}

/// Route TLS: this node's certificate (presented both when accepting and
/// when dialing) and the cluster CA every peer's certificate must chain to.
/// The CA is the cluster's own, distinct from the client CA, so a client
/// certificate can never open a route.
public struct RouteTLS: Sendable {
    let server: NIOSSLContext
    let client: NIOSSLContext
    /// SHA-256 (hex) of this node's leaf certificate (DER). A node's route
    /// proof names the certificate it presents, so a proof relayed through
    /// another certificate holder's connection does not verify.
    let certificateFingerprint: String
    /// The cluster CA's PEM bytes in use: the CA cannot change without a
    /// restart, so a reload compares the file with these and builds its
    /// contexts from these, not from a second read of the file.
    public let authorityPEM: [UInt8]

    /// Loads PEM files; errors name the file and what is wrong with it.
    /// `authorityPEM`, when given, is the CA already read from `caPath`.
    public init(certificateChainPath: String, privateKeyPath: String, caPath: String, authorityPEM: [UInt8]? = nil) throws {
        let certificates = try PEMFile.chain(certificateChainPath)
        guard let leaf = certificates.first else { throw RouteTLSError.emptyChain(certificateChainPath) }
        certificateFingerprint = Self.fingerprint(leaf)
        let chain = certificates.map { NIOSSLCertificateSource.certificate($0) }
        let key = NIOSSLPrivateKeySource.privateKey(try PEMFile.key(privateKeyPath))
        let authorityPEM = try authorityPEM ?? RegularFile.read(caPath)
        self.authorityPEM = authorityPEM
        let authorities = try PEMFile.authorities(pem: authorityPEM, from: caPath)
        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
        server.minimumTLSVersion = .tlsv12
        server.trustRoots = .certificates(authorities)
        // Peers must present a certificate from the cluster CA; they name no host to match.
        server.certificateVerification = .noHostnameVerification
        var client = TLSConfiguration.makeClientConfiguration()
        client.minimumTLSVersion = .tlsv12
        client.trustRoots = .certificates(authorities)
        client.certificateChain = chain
        client.privateKey = key
        client.certificateVerification = .fullVerification
        self.server = try NIOSSLContext(configuration: server)
        self.client = try NIOSSLContext(configuration: client)
    }
}

extension RouteTLS {
    /// SHA-256 (hex) of a certificate's DER bytes ("" if it cannot be encoded).
    static func fingerprint(_ certificate: NIOSSLCertificate) -> String {
        guard let der = try? certificate.toDERBytes() else { return "" }
        return Hex.encode(Digest.sha256(der))
    }
}

/// Why route TLS material cannot be used.
public enum RouteTLSError: Error, CustomStringConvertible {
    case emptyChain(String)

    public var description: String {
        switch self {
        case .emptyChain(let path): return "\(path) holds no certificate; give the node's route certificate (PEM)"
        }
    }
}

/// A route link as the node layer sees it: the peer and a way to send it
/// replication frames.
public struct RouteLink: Sendable {
    let connection: RouteConnection
    public let peer: RouteInfo

    /// This link's number, unique among the links this node ever opened or
    /// accepted. A peer's link can be replaced by a preferred duplicate
    /// without the peer going away: per-link state is keyed by this, not by
    /// the peer alone.
    public var linkID: UInt64 { connection.id }

    /// Whether this is still the peer's active link. A link replaced by a
    /// preferred duplicate (or closed) may still deliver a frame or two:
    /// anti-entropy ignores those, and long answers on it stop.
    public var isActive: Bool { connection.cluster.isActive(connection) }

    /// Sends one `RDATA` frame on this link.
    public func send(_ data: [UInt8]) { connection.sendData(data) }

    /// Returns once the link's outbound queue has room again (or it closed):
    /// senders of long streams pace themselves with it.
    public func whenWritable() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            connection.whenDrained { continuation.resume() }
        }
    }
}

/// The node layer's side of the cluster: membership replication rides on
/// the route links as `RDATA` frames the broker does not interpret.
///
/// Activations and closes are delivered one at a time, in the order the
/// links changed, but after the fact: frames (`received`) come straight
/// from their links and may overtake them.
public protocol ClusterDelegate: AnyObject, Sendable {
    /// A link became active (after the broker sent it the local interest).
    func routeActivated(_ link: RouteLink) async
    /// One `RDATA` frame; the link reads nothing more until this returns.
    func received(_ data: ByteBuffer, from link: RouteLink) async
    /// A link closed.
    func routeClosed(_ peer: RouteInfo) async
}

/// What happened to the cluster's links, for logs.
public enum ClusterEvent: Sendable {
    case routeUp(RouteInfo, dialed: Bool)
    case routeDown(RouteInfo, reason: String)
    case refused(String, reason: String)
    /// A configured route could not be linked: said once per change of
    /// reason (a port typo, a URL that is a client or control port, a
    /// certificate from the wrong CA), not on every retry.
    case dialFailed(url: String, reason: String)
    /// A configured route that had failed is linked again.
    case dialRecovered(url: String)
}

/// The route links of one node: a listener for peers, a dialer per
/// configured route URL, exactly one active link per peer (duplicates
/// resolved the same way on both ends), and the local interest every link
/// is told about.
public final class Cluster: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`.
    public let configuration: ClusterConfiguration
    unowned let broker: Broker
    let localInfo: RouteInfo
    private let lock = NIOLock()
    private var listener: Channel?
    private var active: [String: RouteConnection] = [:]
    /// Which node answered at each dialed URL.
    private var urlPeers: [String: String] = [:]
    private var selfURLs: Set<String> = []
    /// Local interest by (subject, queue): how many local subscriptions.
    private var localInterest: [InterestKey: Int] = [:]
    private var dialers: [Task<Void, Never>] = []
    private var stopped = false
    private var nextID: UInt64 = 1 << 48
    /// Connections the route listener holds now.
    private let acceptedLinks = ManagedAtomic<Int>(0)
    /// Configured route URLs whose last dial failed (reported), until one links.
    private var failingURLs: Set<String> = []
    private var _delegate: ClusterDelegate?
    private var _onEvent: (@Sendable (ClusterEvent) -> Void)?
    /// Link activations and closes, in the order they changed `active`
    /// (yielded under `lock`), delivered to the delegate one at a time by a
    /// single task: a close is never handled after the activation that
    /// followed it, nor two activations out of order.
    private let linkChanges: AsyncStream<LinkChange>.Continuation
    /// Set once, at the end of `init` (it reads the delegate through `self`).
    private var linkChangeDelivery: Task<Void, Never>?

    private enum LinkChange {
        case activated(RouteLink)
        case closed(RouteInfo)
    }

    /// The route certificate and key in use (replaced on reload; the
    /// cluster CA cannot change without a restart).
    public let tls: Reloadable<RouteTLS?>

    init(configuration: ClusterConfiguration, broker: Broker) {
        self.configuration = configuration
        self.tls = Reloadable(configuration.tls)
        self.broker = broker
        localInfo = RouteInfo(serverID: broker.serverID, name: broker.configuration.serverName, cluster: configuration.name,
                              root: configuration.root, clientURL: configuration.advertiseClientURL,
                              controlURL: configuration.advertiseControlURL)
        let (changes, continuation) = AsyncStream.makeStream(of: LinkChange.self)
        linkChanges = continuation
        linkChangeDelivery = Task { [weak self] in
            for await change in changes {
                // Read per change: shutdown clears it, and nothing is delivered after.
                guard let delegate = self?.delegate else { continue }
                switch change {
                case .activated(let link): await delegate.routeActivated(link)
                case .closed(let peer): await delegate.routeClosed(peer)
                }
            }
        }
    }

    deinit {
        linkChanges.finish()
    }

    /// Where replication frames go (set by the node before `start`).
    public var delegate: ClusterDelegate? {
        get { lock.withLock { _delegate } }
        set { lock.withLock { _delegate = newValue } }
    }

    /// Called for route events (logging).
    public var onEvent: (@Sendable (ClusterEvent) -> Void)? {
        get { lock.withLock { _onEvent } }
        set { lock.withLock { _onEvent = newValue } }
    }

    /// Whether `text` is a URL a node may advertise (and accept from a peer):
    /// `SCHEME://HOST:PORT` with one of `schemes`, at most 256 printable bytes.
    public static func isAdvertisableURL(_ text: String, schemes: [String]) -> Bool {
        RouteInfo.isURL(text, schemes: schemes)
    }

    /// A link refused before its handshake reached `handshake` (logged).
    func refused(_ peer: String, reason: String) {
        emit(.refused(peer, reason: reason))
    }

    private func emit(_ event: ClusterEvent) {
        lock.withLock { _onEvent }?(event)
    }

    // MARK: lifecycle

    /// Binds the route listener and starts dialing. Returns the bound port.
    @discardableResult
    func start() async throws -> Int {
        let tls = self.tls
        let bootstrap = ServerBootstrap(group: broker.group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { [self] channel in
                guard acceptedLinks.wrappingIncrementThenLoad(ordering: .relaxed) <= configuration.maxRouteConnections else {
                    acceptedLinks.wrappingDecrement(ordering: .relaxed)
                    broker.statistics.routesRefused.wrappingIncrement(ordering: .relaxed)
                    return channel.close()
                }
                let counter = acceptedLinks
                channel.closeFuture.whenComplete { _ in counter.wrappingDecrement(ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    let current = tls.current
                    if let current { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: current.server)) }
                    try channel.pipeline.syncOperations.addHandler(RouteConnection(id: makeID(), cluster: self, channel: channel,
                                                                                   dialed: false, url: nil, tls: current))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        } catch {
            throw ListenerError(listener: "route listener (--cluster-listen)", host: configuration.host, port: configuration.port, underlying: error)
        }
        lock.withLock { listener = channel }
        for url in Set(configuration.routes).sorted() {
            let task = Task { [weak self] in
                guard let self else { return }
                await self.dial(url)
            }
            lock.withLock { dialers.append(task) }
        }
        return channel.localAddress?.port ?? configuration.port
    }

    /// The bound route port, once started.
    public var port: Int? { lock.withLock { listener?.localAddress?.port } }

    func shutdown() async {
        let (listener, dialers, routes) = lock.withLock { () -> (Channel?, [Task<Void, Never>], [RouteConnection]) in
            stopped = true
            return (self.listener, self.dialers, Array(active.values))
        }
        for dialer in dialers { dialer.cancel() }
        try? await listener?.close()
        for route in routes { route.close(reason: "the node is shutting down") }
        lock.withLock { _delegate = nil }
        linkChanges.finish()
        await linkChangeDelivery?.value
    }

    private func makeID() -> UInt64 {
        lock.withLock {
            nextID += 1
            return nextID
        }
    }

    // MARK: links

    /// The peers with an active link now.
    public var peers: [RouteInfo] {
        lock.withLock { active.values.compactMap(\.peer) }.sorted { $0.serverID < $1.serverID }
    }

    /// Sends `data` on every active link but `except`.
    public func broadcast(_ data: [UInt8], except: RouteLink? = nil) {
        let routes = lock.withLock { Array(active.values) }
        for route in routes where route !== except?.connection { route.sendData(data) }
    }

    enum Verdict { case accept, reject(String) }

    /// Decides whether a link that completed its handshake becomes the link
    /// to its peer. On the link's loop.
    func handshake(_ route: RouteConnection, info: RouteInfo) -> Verdict {
        let selfID = localInfo.serverID
        if info.serverID == selfID {
            if let url = route.url { lock.withLock { _ = selfURLs.insert(url) } }
            return .reject("route to self")
        }
        if info.cluster != localInfo.cluster {
            emit(.refused(info.serverID, reason: "cluster name \(info.cluster) is not \(localInfo.cluster)"))
            return .reject("cluster name mismatch: this node is in \(localInfo.cluster), the peer in \(info.cluster)")
        }
        if info.root != localInfo.root {
            emit(.refused(info.serverID, reason: "cluster root \(info.root) is not \(localInfo.root)"))
            return .reject("cluster root mismatch: this node trusts \(localInfo.root.isEmpty ? "no membership root" : localInfo.root), "
                           + "the peer \(info.root.isEmpty ? "none" : info.root); nodes of one cluster must be initialised with the same root admin")
        }
        var replaced: RouteConnection?
        let verdict: Verdict = lock.withLock {
            if stopped { return .reject("the node is shutting down") }
            if let url = route.url { urlPeers[url] = info.serverID }
            if let existing = active[info.serverID], existing !== route {
                // Both ends keep the link opened by the node with the smaller
                // id; between links opened by the same node, the older one.
                let preferred = min(selfID, info.serverID)
                let existingDialer = existing.dialer(selfID: selfID)
                let newDialer = route.dialed ? selfID : info.serverID
                if newDialer == existingDialer || existingDialer == preferred {
                    return .reject("duplicate route to \(info.serverID): keeping the link opened by \(existingDialer ?? "?")")
                }
                replaced = existing
            }
            active[info.serverID] = route
            // The local interest goes out before anything else on the link,
            // under the lock that orders interest changes: no change is lost.
            for key in localInterest.keys {
                _ = route.enqueue { RouteEncoder.writeInterest(into: &$0, add: true, subject: key.subject, queue: key.queue) }
            }
            // Queued now, in the order of `active`'s changes. Whatever the
            // delegate sends on the link is queued behind the interest above.
            linkChanges.yield(.activated(RouteLink(connection: route, peer: info)))
            return .accept
        }
        guard case .accept = verdict else { return verdict }
        route.flushNow()
        // Said when the link is up, not when it later goes down.
        if let url = route.url, lock.withLock({ failingURLs.remove(url) }) != nil { emit(.dialRecovered(url: url)) }
        replaced?.close(reason: "replaced by the preferred duplicate link")
        emit(.routeUp(info, dialed: route.dialed))
        updateConnectURLs()
        return .accept
    }

    /// Whether `serverID` has an active link now. The delegate hears of a
    /// close after this changed: by then the peer may be linked again, and
    /// the close must not wipe the new link's state.
    public func hasActiveLink(to serverID: String) -> Bool {
        lock.withLock { active[serverID] != nil }
    }

    func isActive(_ route: RouteConnection) -> Bool {
        guard let peer = route.peer else { return false }
        return lock.withLock { active[peer.serverID] === route }
    }

    func routeClosed(_ route: RouteConnection, wasActive: Bool, reason: String) {
        guard let peer = route.peer else { return }
        let removed: Bool = lock.withLock {
            guard active[peer.serverID] === route else { return false }
            active[peer.serverID] = nil
            linkChanges.yield(.closed(peer))
            return true
        }
        guard removed else { return }
        emit(.routeDown(peer, reason: reason))
        updateConnectURLs()
    }

    /// Hands one RDATA frame to the delegate; the future completes when it
    /// has been handled.
    func received(data: ByteBuffer, from route: RouteConnection) -> EventLoopFuture<Void> {
        let promise = route.eventLoop.makePromise(of: Void.self)
        guard let delegate, let peer = route.peer else {
            promise.succeed(())
            return promise.futureResult
        }
        let link = RouteLink(connection: route, peer: peer)
        promise.completeWithTask { await delegate.received(data, from: link) }
        return promise.futureResult
    }

    private func updateConnectURLs() {
        let peers = lock.withLock { active.values.compactMap { $0.peer?.clientURL } }
        var urls = configuration.advertiseClientURL.map { [$0] } ?? []
        for url in peers.sorted() where !urls.contains(url) { urls.append(url) }
        broker.setClusterConnectURLs(urls)
    }

    // MARK: interest

    func interestAdded(subject: String, queue: String?) {
        let key = InterestKey(subject: subject, queue: queue)
        let routes: [RouteConnection] = lock.withLock {
            let count = localInterest[key, default: 0] + 1
            localInterest[key] = count
            guard count == 1 else { return [] }
            return announce(add: true, subject: subject, queue: queue)
        }
        for route in routes { route.eventLoop.execute { route.flushNow() } }
    }

    func interestRemoved(subject: String, queue: String?) {
        let key = InterestKey(subject: subject, queue: queue)
        let routes: [RouteConnection] = lock.withLock {
            guard let count = localInterest[key] else { return [] }
            guard count == 1 else {
                localInterest[key] = count - 1
                return []
            }
            localInterest[key] = nil
            return announce(add: false, subject: subject, queue: queue)
        }
        for route in routes { route.eventLoop.execute { route.flushNow() } }
    }

    /// Queues RS+/RS- on every active link (under `lock`); returns the links
    /// that need a flush.
    private func announce(add: Bool, subject: String, queue: String?) -> [RouteConnection] {
        var needFlush: [RouteConnection] = []
        for route in active.values
        where route.enqueue({ RouteEncoder.writeInterest(into: &$0, add: add, subject: subject, queue: queue) }) {
            needFlush.append(route)
        }
        return needFlush
    }

    // MARK: dialing

    /// Keeps a link to the node at `url`: dials with backoff while there is
    /// none, waits while there is one.
    private func dial(_ url: String) async {
        var attempt = 0
        var lastFailure: String?
        while !Task.isCancelled {
            let (stop, existing): (Bool, RouteConnection?) = lock.withLock {
                (stopped || selfURLs.contains(url), urlPeers[url].flatMap { active[$0] })
            }
            if stop { return }
            if let existing {
                try? await existing.channel.closeFuture.get()
                attempt = 0
                continue
            }
            var wasActive = false
            var failure: String?
            do {
                let route = try await connect(url)
                try? await route.channel.closeFuture.get()
                wasActive = route.becameActive.load(ordering: .relaxed)
                if !wasActive { failure = "the link closed before it was established: \(route.closedBecause ?? "no reason given")" }
            } catch {
                failure = Self.describe(error)
            }
            if wasActive {
                attempt = 0
                lastFailure = nil
            } else if let failure, failure != lastFailure {
                lastFailure = failure
                lock.withLock { _ = failingURLs.insert(url) }
                emit(.dialFailed(url: url, reason: failure))
            }
            let base = min(configuration.maximumBackoff.nanoseconds, configuration.minimumBackoff.nanoseconds << min(attempt, 20))
            let pause = base + Int64.random(in: 0...max(1, base / 2))
            attempt += 1
            try? await Task.sleep(nanoseconds: UInt64(pause))
        }
    }

    /// A dial error in words an operator can act on.
    static func describe(_ error: Error) -> String {
        let text = "\(error)"
        if text.contains("connectTimeout") { return "no answer within 2 s (wrong address, or a firewall)" }
        if text.contains("connection reset") || text.contains("Connection refused") || text.contains("refused") {
            return "connection refused (nothing listens on that port: check the route port, not the client or control port)"
        }
        if text.contains("handshake") || text.contains("SSL") || text.contains("certificate") {
            return "TLS failed (is the peer's route certificate from this --cluster-ca, and is it a route port?): \(text.prefix(200))"
        }
        return String(text.prefix(300))
    }

    private func connect(_ url: String) async throws -> RouteConnection {
        let (host, port) = try Self.parse(url)
        let tls = self.tls.current
        let hostname = host.first?.isNumber == true || host.contains(":") ? nil : host
        let made = NIOLockedValueBox<RouteConnection?>(nil)
        _ = try await ClientBootstrap(group: broker.group)
            .connectTimeout(.seconds(2))
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls.client, serverHostname: hostname))
                    }
                    let route = RouteConnection(id: makeID(), cluster: self, channel: channel, dialed: true, url: url, tls: tls)
                    made.withLockedValue { $0 = route }
                    try channel.pipeline.syncOperations.addHandler(route)
                }
            }
            .connect(host: host, port: port).get()
        guard let route = made.withLockedValue({ $0 }) else { throw ClusterConfigurationError("no route handler for \(url)") }
        return route
    }

    /// `tls://HOST:PORT`, `route://HOST:PORT` or `HOST:PORT` (IPv6 in brackets).
    public static func parse(_ url: String) throws(ClusterConfigurationError) -> (host: String, port: Int) {
        var rest = Substring(url)
        if let scheme = rest.range(of: "://") {
            guard ["tls", "route", "nats-route"].contains(String(rest[..<scheme.lowerBound])) else {
                throw ClusterConfigurationError("route URL \(url): the scheme must be tls:// or route://")
            }
            rest = rest[scheme.upperBound...]
        }
        let host: Substring, portText: Substring
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            host = rest[rest.index(after: rest.startIndex)..<close]
            portText = rest[rest.index(after: close)...].drop(while: { $0 == ":" })
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            throw ClusterConfigurationError("route URL \(url) has no port (HOST:PORT)")
        }
        guard !host.isEmpty, let port = Int(portText), (1...65535).contains(port) else {
            throw ClusterConfigurationError("route URL \(url) needs a host and a port 1-65535")
        }
        return (String(host), port)
    }
}

/// A cluster setting that cannot work; the message says which and why.
public struct ClusterConfigurationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
