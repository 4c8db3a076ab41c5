import Atomics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import UnibusCrypto

/// A listener that could not be opened, naming which one, where, and what
/// to do about the usual causes.
public struct ListenerError: Error, CustomStringConvertible {
    public let listener: String
    public let host: String
    public let port: Int
    public let underlying: Error

    public init(listener: String, host: String, port: Int, underlying: Error) {
        self.listener = listener
        self.host = host
        self.port = port
        self.underlying = underlying
    }

    public var description: String {
        let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let reason: String
        switch (underlying as? IOError)?.errnoCode {
        case EADDRINUSE: reason = "the address is already in use (another process, perhaps another unibusd, listens there: stop it or choose another port)"
        case EADDRNOTAVAIL: reason = "this machine has no such address (check the host part)"
        case EACCES: reason = "permission denied (ports below 1024 need privileges)"
        default: reason = "\(underlying)"
        }
        return "cannot open the \(listener) on \(address): \(reason)"
    }
}

/// Sees client publishes on tapped subjects (see `Broker.setTap`). Called
/// on the publishing connection's event loop: it must not block.
public protocol PublishTap: AnyObject, Sendable {
    /// `publisher` is the authenticated user's nkey (nil without authentication).
    func published(subject: String, payload: ByteBuffer, publisher: String?)
}

/// The embedded NATS-protocol broker of a node.
///
/// Protocol logic lives in `UnibusWire` (parsing) and `BrokerConnection`
/// (one client's state machine); this type owns the listener, the shared
/// subscription index and the connection registry.
public final class Broker: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`; the rest is immutable or atomic.
    public let configuration: BrokerConfiguration
    /// The client TLS certificate and key in use (replaced on reload).
    public let tls: Reloadable<BrokerTLS?>
    public let statistics = BrokerStatistics()
    /// Limits a signed `settings` command may change live.
    public let limits: RuntimeLimits
    /// The server's id, a NATS server nkey ("N…").
    public let serverID: String
    /// The node's signing key: proves `serverID` to route peers.
    let nodeKey: Ed25519KeyPair
    let index = SubjectIndex()
    /// The event loops, shared with the node's control plane.
    public let group: MultiThreadedEventLoopGroup
    private let ownsGroup: Bool
    private let lock = NIOLock()
    private var connections: [UInt64: BrokerConnection] = [:]
    /// Subscriptions held by each authenticated user over all connections.
    private var subscriptionsByUser: [String: Int] = [:]
    private var serverChannel: Channel?
    private var draining = false
    /// Lame-duck mode: the listener is closed and clients are told to move.
    private var lameDuck = false
    private let nextClientID = ManagedAtomic<UInt64>(0)
    /// The node's route links, when it is part of a cluster.
    public private(set) var cluster: Cluster?
    /// connect_urls from the cluster (configured URLs of this node and its linked peers).
    private var clusterConnectURLs: [String] = []

    /// - Parameter nodeKey: the node's signing key (from its persisted node
    ///   identity), whose "N…" nkey becomes the server id and which proves
    ///   that id to route peers; a fresh one is made if nil.
    public init(configuration: BrokerConfiguration, nodeKey: Ed25519KeyPair? = nil, group: MultiThreadedEventLoopGroup? = nil) {
        self.configuration = configuration
        self.tls = Reloadable(configuration.tls)
        self.limits = RuntimeLimits(configuration)
        let key = nodeKey ?? Ed25519KeyPair()
        self.nodeKey = key
        self.serverID = NKey.encodePublicKey(key.publicKey, type: .server)
        if let group {
            self.group = group
            ownsGroup = false
        } else {
            self.group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.resolvedThreads)
            ownsGroup = true
        }
        if let clusterConfiguration = configuration.cluster {
            cluster = Cluster(configuration: clusterConfiguration, broker: self)
        }
    }

    /// Binds the listener. Returns the bound port (useful with port 0).
    @discardableResult
    public func start() async throws -> Int {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let id = nextClientID.wrappingIncrementThenLoad(ordering: .relaxed)
                    try channel.pipeline.syncOperations.addHandler(BrokerConnection(id: id, broker: self, channel: channel))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        } catch {
            throw ListenerError(listener: "client listener (--listen)", host: configuration.host, port: configuration.port, underlying: error)
        }
        lock.withLock { serverChannel = channel }
        if let cluster {
            do {
                try await cluster.start()
            } catch {
                try? await channel.close()
                throw error
            }
        }
        return channel.localAddress?.port ?? configuration.port
    }

    /// The bound port, once started.
    public var port: Int? { lock.withLock { serverChannel?.localAddress?.port } }

    /// Stops accepting, flushes what each client has queued, closes every
    /// client, then stops the event loops (if the broker made them).
    public func shutdown() async {
        let (server, clients) = lock.withLock { () -> (Channel?, [BrokerConnection]) in
            draining = true
            return (serverChannel, Array(connections.values))
        }
        try? await server?.close()
        await cluster?.shutdown()
        await withTaskGroup(of: Void.self) { tasks in
            for client in clients {
                tasks.addTask { await client.closeGracefully() }
            }
        }
        if ownsGroup { try? await group.shutdownGracefully() }
    }

    // MARK: registry

    /// Registers a new connection; false when over the limit or shutting down.
    func register(_ connection: BrokerConnection) -> Bool {
        lock.withLock {
            if draining || lameDuck { return false }
            let limit = limits.maxConnections.load(ordering: .relaxed)
            if limit > 0 && connections.count >= limit { return false }
            connections[connection.id] = connection
            return true
        }
    }

    func unregister(_ connection: BrokerConnection) {
        lock.withLock { _ = connections.removeValue(forKey: connection.id) }
    }

    public var connectionCount: Int { lock.withLock { connections.count } }

    /// Counts one more subscription for `user`; false when that would pass
    /// `maxSubscriptionsPerUser` (and then nothing is counted).
    func reserveSubscription(for user: String, enforcingLimit: Bool = true) -> Bool {
        let limit = limits.maxSubscriptionsPerUser.load(ordering: .relaxed)
        return lock.withLock {
            let held = subscriptionsByUser[user, default: 0]
            if enforcingLimit && limit > 0 && held >= limit { return false }
            subscriptionsByUser[user] = held + 1
            return true
        }
    }

    func releaseSubscriptions(of user: String, count: Int) {
        guard count > 0 else { return }
        lock.withLock {
            let left = subscriptionsByUser[user, default: 0] - count
            subscriptionsByUser[user] = left > 0 ? left : nil
        }
    }

    /// Subscriptions `user` holds now over all its connections.
    public func subscriptionCount(of user: String) -> Int { lock.withLock { subscriptionsByUser[user, default: 0] } }

    // MARK: publish taps

    /// Whether any subject is tapped (checked before the lock on every publish).
    private let tapping = ManagedAtomic<Bool>(false)
    /// Each owner's tap and subjects, and the merged subject → tap map.
    private let taps = NIOLockedValueBox<(owners: [String: (tap: PublishTap, subjects: Set<String>)], bySubject: [String: PublishTap])>(([:], [:]))

    /// Hands every client publish on one of `subjects` (exact subjects) to
    /// `tap` as well as delivering it (the node's persister stores the
    /// frames of persisted rooms this way; the node's operations take signed
    /// cluster commands). Replaces `owner`'s earlier tap; a subject tapped by
    /// two owners goes to the later one.
    public func setTap(_ tap: PublishTap?, subjects: Set<String>, owner: String = "default") {
        let any = taps.withLockedValue { state -> Bool in
            if let tap, !subjects.isEmpty { state.owners[owner] = (tap, subjects) } else { state.owners[owner] = nil }
            var merged: [String: PublishTap] = [:]
            for (_, entry) in state.owners.sorted(by: { $0.key < $1.key }) {
                for subject in entry.subjects { merged[subject] = entry.tap }
            }
            state.bySubject = merged
            return !merged.isEmpty
        }
        tapping.store(any, ordering: .relaxed)
    }

    /// The tap for `subject`, if it is tapped.
    @inline(__always)
    func tap(for subject: String) -> PublishTap? {
        guard tapping.load(ordering: .relaxed) else { return nil }
        return taps.withLockedValue { $0.bySubject[subject] }
    }

    // MARK: lame duck

    /// Whether the broker is in lame-duck mode.
    public var isLameDuck: Bool { lock.withLock { lameDuck } }

    /// Lame-duck mode (nats-server's): closes the client listener, refuses
    /// new clients, and tells every connected client in an INFO with
    /// `"ldm": true` that it should move. Routes stay up. Idempotent.
    public func enterLameDuck() async {
        let (server, clients) = lock.withLock { () -> (Channel?, [BrokerConnection]) in
            guard !lameDuck else { return (nil, []) }
            lameDuck = true
            return (serverChannel, Array(connections.values))
        }
        try? await server?.close()
        for client in clients { client.sendAsyncInfo() }
    }

    /// Closes up to `count` client connections (flushing what each has
    /// queued), oldest first; returns how many are still open.
    @discardableResult
    public func closeClients(upTo count: Int) async -> Int {
        let chosen = lock.withLock { Array(connections.values.sorted { $0.id < $1.id }.prefix(max(0, count))) }
        await withTaskGroup(of: Void.self) { tasks in
            for client in chosen { tasks.addTask { await client.closeGracefully() } }
        }
        return connectionCount
    }

    /// Closes the connections of users `admits` now refuses (a killswitch
    /// was engaged); returns how many were closed.
    @discardableResult
    public func closeClients(where shouldClose: @Sendable (String?) -> Bool) async -> Int {
        let chosen = lock.withLock { connections.values.filter { shouldClose($0.authenticatedUser) } }
        await withTaskGroup(of: Void.self) { tasks in
            for client in chosen { tasks.addTask { await client.closeForAuthorization(reason: .killswitch) } }
        }
        return chosen.count
    }

    // MARK: server-originated messages

    /// Delivers a message from the node itself (not from a client) to the
    /// local subscribers of `subject`, e.g. key-share notifications. Never
    /// forwarded to routes: every node notifies its own clients.
    public func publish(subject: String, payload: [UInt8]) {
        let result = index.match(subject)
        let message = ByteBuffer(bytes: payload)
        var targets = result.plain
        for group in result.queues {
            if let member = group.members.filter({ !$0.connection.isRoute }).randomElement() { targets.append(member) }
        }
        for subscription in targets where subscription.admits(subject) {
            let (deliver, last) = subscription.claimDelivery()
            guard deliver else { continue }
            subscription.delivered.wrappingIncrement(ordering: .relaxed)
            let connection = subscription.connection
            let needsFlush = connection.enqueue { buffer in
                MessageEncoder.writeMessage(into: &buffer, subject: subject, sid: subscription.sidBytes, reply: nil,
                                            headerLength: nil, message: message)
            }
            statistics.messagesOut.wrappingIncrement(ordering: .relaxed)
            connection.eventLoop.execute {
                if needsFlush { connection.flushNow() }
                if last { connection.removeSubscriptionOnLoop(subscription) }
            }
        }
    }

    // MARK: cluster

    func localInterestAdded(subject: String, queue: String?) {
        cluster?.interestAdded(subject: subject, queue: queue)
    }

    func localInterestRemoved(subject: String, queue: String?) {
        cluster?.interestRemoved(subject: subject, queue: queue)
    }

    /// The addresses clients are told in INFO (`connect_urls`): configured,
    /// then the cluster's, as `host:port` like nats-server sends them (stock
    /// clients add their own scheme; `tls://host:port` became
    /// `tls://tls://host:port` in nats-py, which then never failed over).
    var connectURLs: [String] {
        lock.withLock {
            var urls: [String] = []
            for url in configuration.connectURLs + clusterConnectURLs {
                let address = Self.hostAndPort(of: url)
                if !urls.contains(address) { urls.append(address) }
            }
            return urls
        }
    }

    /// `host:port` of a URL (`tls://host:port` → `host:port`).
    static func hostAndPort(of url: String) -> String {
        guard let separator = url.range(of: "://") else { return url }
        return String(url[separator.upperBound...])
    }

    /// Sets the cluster's URLs and tells connected clients (async INFO), as
    /// nats-server does when routes come and go.
    func setClusterConnectURLs(_ urls: [String]) {
        let clients: [BrokerConnection] = lock.withLock {
            guard clusterConnectURLs != urls else { return [] }
            clusterConnectURLs = urls
            return Array(connections.values)
        }
        for client in clients { client.sendAsyncInfo() }
    }

    // MARK: live authorization

    /// Re-evaluates every authenticated connection against the authorizer
    /// (after the allowlist or membership changed): permissions change in
    /// place; users no longer allowed are disconnected with
    /// `Authorization Violation`. Completes when every connection has applied it.
    public func reauthorize() async {
        let clients = lock.withLock { Array(connections.values) }
        await withTaskGroup(of: Void.self) { tasks in
            for client in clients {
                tasks.addTask { await client.reauthorize() }
            }
        }
    }

    /// Closes every connection of `userNKey` (a revoked user) at once.
    public func disconnect(userNKey: String) async {
        let clients = lock.withLock { connections.values.filter { $0.authenticatedUser == userNKey } }
        await withTaskGroup(of: Void.self) { tasks in
            for client in clients {
                tasks.addTask { await client.closeForAuthorization() }
            }
        }
    }
}
