import ArgumentParser
import Logging
import Metrics
import Prometheus
import UnibusConfig
import Atomics
import Dispatch
import Foundation
import NIOCore
import UnibusBroker
import UnibusCrypto
import UnibusControl
import UnibusMembership
import UnibusMembershipStore
import UnibusNode
import UnibusFleet
import UnibusSQLite
import NIOSSL

/// `unibusd run` (the default): the node's broker on a listen address.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the node's NATS-protocol broker (the default command)."
    )

    @Option(name: .long, help: "Client listen address, HOST:PORT.")
    var listen = "127.0.0.1:4222"

    @Option(name: .long, help: "A JSON allowlist of user nkeys and permissions; requires nkey authentication. Reloaded on SIGHUP.")
    var allowlist: String?

    @Option(name: .long, help: "Largest message payload in bytes (advertised in INFO).")
    var maxPayload = 1024 * 1024

    @Option(name: .long, help: "Longest protocol control line in bytes.")
    var maxControlLine = 4096

    @Option(name: .long, help: "Most concurrent client connections (0 = unlimited).")
    var maxConnections = 65_536

    @Option(name: .long, help: "Most subscriptions per connection (0 = unlimited); past it a SUB gets -ERR 'maximum subscriptions exceeded'.")
    var maxSubscriptions = 10_000

    @Option(name: .long, help: "Bytes a client may send before its CONNECT is accepted (authentication on); more closes it.")
    var maxPreAuthBytes = 8 * 1024

    @Option(name: .long, help: "Most subscriptions one authenticated user may hold over all its connections (0 = unlimited).")
    var maxSubscriptionsPerUser = 50_000

    @Option(name: .long, help: "Most interest entries (RS+) one route peer may hold; a peer past it is cut and counted. Keep it far above --max-subscriptions-per-user.")
    var maxRouteInterest = 1_000_000

    @Option(name: .long, help: "Seconds between server PINGs.")
    var pingInterval: Double = 120

    @Option(name: .long, help: "Unanswered PINGs before a client is dropped as stale.")
    var maxPingsOut = 2

    @Option(name: .long, help: "Outbound bytes a client may have queued before it is closed as a slow consumer.")
    var maxPending = 64 * 1024 * 1024

    @Option(name: .long, help: "Seconds queued outbound bytes may stay unwritten before the client is a slow consumer.")
    var writeDeadline: Double = 10

    @Option(name: .long, help: "PEM certificate chain for client TLS (with --tls-key). Required unless listening on loopback.")
    var tlsCert: String?

    @Option(name: .long, help: "PEM private key for --tls-cert.")
    var tlsKey: String?

    @Option(name: .long, help: "PEM CA whose certificates clients must present (mutual TLS).")
    var tlsClientCA: String?

    @Flag(name: .long, inversion: .prefixedNo, help: "Allow plain TCP on a non-loopback address (insecure; for isolated test networks only).")
    var allowPlaintext = false

    @Option(name: .long, help: "Event loop threads (0 = half the cores, at least one).")
    var threads = 0

    @Option(name: .long, help: "The node identity file (created if missing); its key names the server in INFO. Default with --data-dir: DIR/node-identity.json.")
    var identity: String?

    @Option(name: .long, help: "The node's data directory (see `unibusd init`): users, rooms and members authenticate and authorize clients.")
    var dataDir: String?

    @Option(name: .long, help: "Control-plane (HTTPS) listen address, HOST:PORT; with --data-dir.")
    var controlListen = "127.0.0.1:4280"

    @Option(name: .long, help: "PEM certificate chain for the control plane (default: --tls-cert). Plain HTTP is allowed only on loopback.")
    var controlTlsCert: String?

    @Option(name: .long, help: "PEM private key for the control plane (default: --tls-key).")
    var controlTlsKey: String?

    @Option(name: .long, help: "Route listener, HOST:PORT: join a cluster (with --routes).")
    var clusterListen: String?

    @Option(name: .long, parsing: .singleValue, help: "A route URL to dial, tls://HOST:PORT (repeat, or comma-separate). The node's own URL may be listed; it is skipped.")
    var routes: [String] = []

    @Option(name: .long, help: "The cluster's name; nodes of different clusters refuse each other's routes.")
    var clusterName = "unibus"

    @Option(name: .long, help: "PEM certificate chain this node presents on routes (both ways); issued by --cluster-ca.")
    var clusterCert: String?

    @Option(name: .long, help: "PEM private key for --cluster-cert.")
    var clusterKey: String?

    @Option(name: .long, help: "PEM cluster CA: every peer's route certificate must chain to it. Must not be the client CA.")
    var clusterCa: String?

    @Flag(name: .long, inversion: .prefixedNo, help: "Plain TCP routes (loopback dev mode only; refused on other addresses).")
    var clusterAllowPlaintext = false

    @Option(name: .long, help: "The client URL to tell clients and peers (connect_urls), e.g. tls://node1.example:4222. Default: the --listen address unless it is a wildcard.")
    var advertise: String?

    @Option(name: .long, help: "The control-plane URL to tell peers. Default: the --control-listen address unless it is a wildcard.")
    var advertiseControl: String?

    @Option(name: .long, help: "Seconds between route PINGs; a route with 3 unanswered is closed.")
    var routePingInterval: Double = 2

    @Option(name: .long, help: "When stored frames of persisted rooms reach the disk: full (fsync every commit: survives kill -9 and power loss; the default) or normal (survives kill -9 only; see docs/persistence.md).")
    var persistSync: SQLiteDatabase.Synchronous = .full

    @Option(name: .long, help: "Frames one member may have stored in one persisted room per minute.")
    var persistSenderMessagesPerMinute = 1_200_000

    @Option(name: .long, help: "Bytes one member may have stored in one persisted room per minute.")
    var persistSenderBytesPerMinute = 1024 * 1024 * 1024

    @Option(name: .long, help: "Seconds between this node's signed heartbeats on unibus.node.<id>.beat (0.2 to 3600).")
    var beatInterval: Double = 10

    @Option(name: .long, help: "The node's name in heartbeats and the Command Center (default: the host name).")
    var name: String?

    @Option(name: .long, help: "VaultMesh agent heartbeats (POST /api/agent/heartbeat): signed (only agent keys an admin registered; the default), open (the contract's unsigned V1, still bounded) or off.")
    var agentHeartbeats: AgentHeartbeatMode = .signed

    @Option(name: .long, help: "Most VaultMesh agents this node registers.")
    var maxAgents = 1000

    @Option(name: .long, help: "Heartbeats one VaultMesh agent may send per minute.")
    var agentHeartbeatsPerMinute = 12

    @Option(name: .long, help: "Lame duck (SIGUSR2 or a signed drain): seconds before the first client is closed.")
    var lameDuckGrace: Double = 5

    @Option(name: .long, help: "Lame duck: seconds over which clients are closed, a few at a time.")
    var lameDuckDuration: Double = 30

    @Option(name: .long, help: "Lame duck: at most this many seconds waiting for a peer to confirm this node's last persisted frames.")
    var lameDuckPeerWait: Double = 30

    @Option(name: .long, help: "A JSON configuration file: keys are these flags in snake_case (\"max_payload\"); read after /etc/unibus/unibusd.json, below UNIBUS_* variables and flags. Values may be env://VAR or file:///path references. See `unibusd config show`.")
    var config: String?

    @Option(name: .long, help: "Least severe records logged: debug, info, warning or error (the runtime setting log_level; a signed command may change it).")
    var logLevel = "info"

    @Option(name: .long, parsing: .singleValue, help: "A component's level, COMPONENT=LEVEL (repeat, or comma-separate), over --log-level: unibusd, node, cluster, control, config.")
    var logLevels: [String] = []

    @Option(name: .long, help: "json (one object per line, the default when stderr is not a terminal), text, or auto.")
    var logFormat: LogFormat = .auto

    @Option(name: .long, help: "Write the process id here once the node serves (removed when it stops); `unibusd drain --pid-file` reads it.")
    var pidFile: String?

    /// Numbers from the command line, checked before any is multiplied or
    /// converted (a huge --ping-interval once trapped converting to nanoseconds).
    func validateLimits() throws {
        let checks: [(String, Bool)] = [
            ("--max-payload must be 1 B to 64 MiB", (1...(64 << 20)).contains(maxPayload)),
            ("--max-control-line must be 256 to 1 MiB", (256...(1 << 20)).contains(maxControlLine)),
            ("--max-connections must be 0 to 10000000", (0...10_000_000).contains(maxConnections)),
            ("--max-subscriptions must be 0 to 10000000", (0...10_000_000).contains(maxSubscriptions)),
            ("--max-pre-auth-bytes must be 1 KiB to 1 MiB", (1024...(1 << 20)).contains(maxPreAuthBytes)),
            ("--max-route-interest must be 1 to 100000000", (1...100_000_000).contains(maxRouteInterest)),
            ("--max-subscriptions-per-user must be 0 to 100000000", (0...100_000_000).contains(maxSubscriptionsPerUser)),
            ("--ping-interval must be 0.01 to 86400 seconds", pingInterval.isFinite && (0.01...86_400).contains(pingInterval)),
            ("--max-pings-out must be 1 to 1000", (1...1000).contains(maxPingsOut)),
            ("--max-pending must be 64 KiB to 16 GiB", ((64 << 10)...(16 << 30)).contains(maxPending)),
            ("--write-deadline must be 0.01 to 3600 seconds", writeDeadline.isFinite && (0.01...3600).contains(writeDeadline)),
            ("--route-ping-interval must be 0.1 to 3600 seconds", routePingInterval.isFinite && (0.1...3600).contains(routePingInterval)),
            ("--threads must be 0 to 1024", (0...1024).contains(threads)),
            ("--persist-sender-messages-per-minute must be 1 to 100000000", (1...100_000_000).contains(persistSenderMessagesPerMinute)),
            ("--persist-sender-bytes-per-minute must be 1 KiB to 1 TiB", (1024...(1 << 40)).contains(persistSenderBytesPerMinute)),
            ("--beat-interval must be 0.2 to 3600 seconds", beatInterval.isFinite && (0.2...3600).contains(beatInterval)),
            ("--max-agents must be 1 to 1000000", (1...1_000_000).contains(maxAgents)),
            ("--agent-heartbeats-per-minute must be 1 to 600", (1...600).contains(agentHeartbeatsPerMinute)),
            ("--lame-duck-grace must be 0 to 3600 seconds", lameDuckGrace.isFinite && (0...3600).contains(lameDuckGrace)),
            ("--lame-duck-duration must be 0 to 3600 seconds", lameDuckDuration.isFinite && (0...3600).contains(lameDuckDuration)),
            ("--lame-duck-peer-wait must be 0 to 3600 seconds", lameDuckPeerWait.isFinite && (0...3600).contains(lameDuckPeerWait)),
            ("--log-level must be debug, info, warning or error", LogLevels.names[logLevel] != nil),
            ("--name must be 1 to 128 bytes without control characters",
             name.map { !$0.isEmpty && $0.utf8.count <= 128 && !$0.unicodeScalars.contains { $0.properties.generalCategory == .control } } ?? true),
        ]
        for (message, valid) in checks where !valid { throw CLIFailure(message) }
        _ = try LogLevels.parse(splitList(logLevels))
    }

    func run() async throws {
        // Termination signals are taken from here on, before anything starts:
        // one that arrives while the node is still starting is handled as soon
        // as it has started (it used to be lost, and the node kept running).
        let signals = SignalWaiter()
        let invocation = try RunInvocation.resolve(commandLine: RunInvocation.processCommandLine(), configFile: config)
        try await invocation.effective.serve(invocation, signals: signals)
    }

    /// Runs the node with these (resolved) options until a signal stops it.
    func serve(_ invocation: RunInvocation, signals: SignalWaiter) async throws {
        try validateLimits()
        let format = logFormat
        LoggingSystem.bootstrap { StandardErrorLogHandler(label: $0, format: format) }
        LogLevels.shared.base = LogLevels.names[logLevel] ?? .info
        LogLevels.shared.setComponents(try LogLevels.parse(splitList(logLevels)))
        let metricsRegistry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metricsRegistry))
        if !invocation.files.isEmpty {
            log("configuration read", ["files": invocation.files.joined(separator: ","),
                                       "environment": invocation.layers.values.values.compactMap {
                                           if case .environment(let name) = $0.source { return name } else { return nil } }.sorted().joined(separator: ",")],
                logger: configLogger)
        }
        var configuration = BrokerConfiguration()
        (configuration.host, configuration.port) = try Self.hostAndPort(listen, option: "--listen")
        configuration.maxPayload = maxPayload
        configuration.maxControlLine = maxControlLine
        configuration.maxConnections = maxConnections
        configuration.maxSubscriptions = maxSubscriptions
        configuration.maxPreAuthBytes = maxPreAuthBytes
        configuration.maxSubscriptionsPerUser = maxSubscriptionsPerUser
        configuration.pingInterval = .nanoseconds(Int64(pingInterval * 1e9))
        configuration.maxPingsOutstanding = maxPingsOut
        configuration.maxPendingBytes = maxPending
        configuration.writeDeadline = .nanoseconds(Int64(writeDeadline * 1e9))
        configuration.threads = threads
        configuration.tls = try clientTLS(host: configuration.host)
        let switches = NodeSwitches()
        var allowlistAuthorizer: StaticAllowlist?
        var membership: MembershipStore?
        if let dataDir {
            guard allowlist == nil else { throw CLIFailure("--data-dir and --allowlist are exclusive: membership decides who may connect") }
            // Refused before anything is created in a directory init never made.
            guard MembershipStore.exists(in: dataDir) else {
                throw CLIFailure("\(dataDir) is not a node's data directory: run `unibusd init --data-dir \(dataDir) --admin-identity FILE` "
                                      + "(or `--root NKEY` for a node that gets its log from its --routes)")
            }
            do {
                membership = try MembershipStore(directory: dataDir)
            } catch {
                throw CLIFailure("\(error)")
            }
            guard let store = membership, !store.snapshot.users.isEmpty || (store.rootAdmin != nil && !routes.isEmpty) else {
                if let root = membership?.rootAdmin {
                    throw CLIFailure("\(dataDir) was initialised for root admin \(root) and gets its users from the cluster, "
                                     + "but this node has no --routes: start it with --cluster-listen HOST:PORT and --routes URL,… "
                                     + "(the other nodes' route URLs)")
                }
                throw CLIFailure("\(dataDir) has no users: run `unibusd init --data-dir \(dataDir) --admin-identity FILE` first "
                                      + "(or `--root NKEY` for a node that gets its log from its --routes)")
            }
            configuration.authorizer = Node.authorizer(for: store, switches: switches)
        }
        if let allowlist {
            do {
                allowlistAuthorizer = try StaticAllowlist(path: allowlist)
            } catch {
                throw CLIFailure("\(error)")
            }
            configuration.authorizer = allowlistAuthorizer
        }
        var nodeKey: Ed25519KeyPair?
        if let identity = identity ?? dataDir.map({ $0 + "/node-identity.json" }) {
            do {
                nodeKey = try IdentityFile.loadOrCreate(at: identity).identity.signing
            } catch {
                throw CLIFailure("\(error)")
            }
        }
        configuration.cluster = try clusterConfiguration(client: configuration, root: membership?.rootAdmin ?? "")
        let broker = Broker(configuration: configuration, nodeKey: nodeKey)
        broker.cluster?.onEvent = { event in
            switch event {
            case .routeUp(let peer, let dialed):
                log("route up", ["peer": peer.serverID, "peer_name": peer.name, "direction": dialed ? "dialed" : "accepted"], logger: clusterLogger)
            case .routeDown(let peer, let reason):
                log("route down", ["peer": peer.serverID, "peer_name": peer.name, "reason": reason], logger: clusterLogger)
            case .refused(let peer, let reason):
                log("route refused", ["peer": peer, "reason": reason], level: .warning, logger: clusterLogger)
            case .dialFailed(let url, let reason):
                log("route cannot be linked", ["url": url, "reason": reason], level: .warning, logger: clusterLogger)
            case .dialRecovered(let url):
                log("route linked again", ["url": url], logger: clusterLogger)
            }
        }
        var node: Node?
        if let membership, let dataDir {
            let frames: FrameStore
            do { frames = try FrameStore(directory: dataDir, synchronous: persistSync) } catch {
                throw CLIFailure("cannot open the frame store in \(dataDir): \(error)")
            }
            var persistence = PersistenceConfiguration()
            persistence.senderMessagesPerWindow = persistSenderMessagesPerMinute
            persistence.senderBytesPerWindow = persistSenderBytesPerMinute
            let made = Node(broker: broker, membership: membership, frames: frames, persistence: persistence, logger: nodeLogger)
            made.applyRetentionNow()
            node = made
            if let nodeKey {
                do {
                    made.attach(try NodeOperations(node: made, nodeKey: nodeKey, configuration: operationsConfiguration(dataDir: dataDir, invocation: invocation),
                                                   switches: switches,
                                                   agents: AgentRegistry(mode: agentHeartbeats, maxAgents: maxAgents,
                                                                         heartbeatsPerMinute: agentHeartbeatsPerMinute)))
                } catch {
                    throw CLIFailure("\(error)")
                }
            }
        }
        let bound = try await broker.start()
        var control: ControlServer?
        if let node {
            let (controlHost, controlPort) = try Self.hostAndPort(controlListen, option: "--control-listen")
            let controlTLS = try controlTLSContext()
            if controlTLS == nil {
                guard Self.isLoopback(controlHost) || allowPlaintext else {
                    throw CLIFailure("refusing plain HTTP for the control plane on \(controlHost): give --control-tls-cert/--control-tls-key (or --tls-cert/--tls-key)")
                }
            }
            let server = ControlServer(plane: ControlPlane(node: node, servedOverTLS: controlTLS != nil, metrics: metricsRegistry),
                                       group: broker.group, tls: controlTLS)
            control = server
            let channel = try await server.start(host: controlHost, port: controlPort)
            log("control plane listening", ["address": "\(controlHost):\(channel.localAddress?.port ?? controlPort)",
                                            "tls": controlTLS == nil ? "off (loopback dev mode)" : "on"])
        }
        if let cluster = broker.cluster {
            log("cluster listening", ["address": "\(cluster.configuration.host):\(cluster.port ?? cluster.configuration.port)",
                                      "routes": cluster.configuration.routes.joined(separator: ","), "cluster": cluster.configuration.name,
                                      "tls": cluster.configuration.tls == nil ? "off (loopback dev mode)" : "mutual"])
        }
        log("listening", ["address": "\(configuration.host):\(bound)", "server_id": broker.serverID,
                          "auth": membership != nil ? "membership" : (allowlist == nil ? "none" : "allowlist"),
                          "tls": configuration.tls == nil ? "off" : (tlsClientCA == nil ? "on" : "mutual")])

        let operations = node?.operations
        operations?.start(onDrain: { reason in
            log("drain requested", ["by": reason])
            signals.inject(SIGUSR2)
        }, onSetting: { setting, value in
            if setting == .logLevel, case .text(let level) = value, let parsed = LogLevels.names[level] { LogLevels.shared.base = parsed }
        })
        operations?.markServing()
        if let pidFile { writePidFile(pidFile) }
        defer { if let pidFile { unlink(pidFile) } }

        var current = invocation
        while true {
            let signal = await signals.next()
            if signal == SIGUSR2 {
                await current.effective.lameDuck(broker: broker, node: node)
                log("stopped", ["after": "lame duck"])
                return
            }
            if signal == SIGHUP {
                if let next = await current.effective.reload(current, broker: broker, control: control, node: node, allowlist: allowlistAuthorizer) {
                    current = next
                }
                continue
            }
            log("shutting down", ["signal": signal == SIGTERM ? "SIGTERM" : "SIGINT"])
            // Graceful stop: the stores flushed, the final `stopping` beat
            // sent (operations.stop), then listeners and connections closed.
            await node?.settlePersistence()
            node?.operations?.stop()
            await broker.shutdown()
            log("stopped", [:])
            return
        }
    }

    /// The client listener's TLS (nil: plain TCP, allowed on loopback or
    /// with --allow-plaintext). At start and on every reload.
    func clientTLS(host: String) throws -> BrokerTLS? {
        switch (tlsCert, tlsKey) {
        case let (cert?, key?):
            do {
                return try BrokerTLS(certificateChainPath: cert, privateKeyPath: key, clientCAPath: tlsClientCA)
            } catch {
                throw CLIFailure(Self.tlsProblem(error, files: [(cert, "--tls-cert"), (key, "--tls-key")] + (tlsClientCA.map { [($0, "--tls-client-ca")] } ?? [])))
            }
        case (nil, nil):
            guard tlsClientCA == nil else { throw CLIFailure("--tls-client-ca needs --tls-cert and --tls-key") }
            guard Self.isLoopback(host) || allowPlaintext else {
                throw CLIFailure("refusing plain TCP on \(host): give --tls-cert and --tls-key, or --allow-plaintext for an isolated test network")
            }
            return nil
        default:
            throw CLIFailure("--tls-cert and --tls-key go together")
        }
    }

    /// The route links' TLS, with the checks that keep the cluster CA apart
    /// from the client CA (nil: plain TCP routes, loopback dev mode only).
    /// At start and on every reload, so a reload cannot do what start refuses.
    /// A reload passes the running CA (`authorityPEM`): the file is read
    /// once, at start, and every check and context uses those bytes. The
    /// client CA is the one the client listener's context was built from.
    func routeTLS(clusterHost: String, routeURLs: [String], clientTLS: BrokerTLS?, authorityPEM: [UInt8]? = nil) throws -> RouteTLS? {
        switch (clusterCert, clusterKey, clusterCa) {
        case let (cert?, key?, ca?):
            let authority: [UInt8]
            do { authority = try authorityPEM ?? RegularFile.read(ca) } catch {
                throw CLIFailure(Self.tlsProblem(error, files: [(ca, "--cluster-ca")]))
            }
            // Mistakes that would leave the node unlinked, silently, or let
            // client certificates open routes: refused by name.
            if CertificateFiles.isIssued(cert, byAuthority: authority) == false {
                throw CLIFailure("--cluster-cert \(cert) was not issued by --cluster-ca \(ca): no peer would accept it and this node would never link. "
                                 + "Give this node's NODE-route.pem and the cluster-ca.pem from the same deploy/make-certs.sh run")
            }
            if let clientCert = tlsCert, CertificateFiles.isIssued(clientCert, byAuthority: authority) == true {
                throw CLIFailure("--cluster-ca \(ca) issued the client-facing certificate --tls-cert \(clientCert): it is the client CA. "
                                 + "Routes need their own CA (cluster-ca.pem), so that a client certificate can never open a route")
            }
            if let clientCA = tlsClientCA, let clientAuthority = clientTLS?.clientAuthorityPEM {
                if clientAuthority == authority {
                    throw CLIFailure("--cluster-ca must not be the client CA (\(clientCA)): a client certificate could then open a route")
                }
                // The same CA inside a bundle, or written differently, is not
                // the same bytes: what it issued is what counts.
                if CertificateFiles.isIssued(cert, byAuthority: clientAuthority) == true {
                    throw CLIFailure("--tls-client-ca \(clientCA) issued the route certificate --cluster-cert \(cert): it holds the cluster CA. "
                                     + "Clients need their own CA (client-ca.pem), apart from cluster-ca.pem")
                }
            }
            if let controlCert = controlTlsCert, CertificateFiles.isIssued(controlCert, byAuthority: authority) == true {
                throw CLIFailure("--cluster-ca \(ca) issued the control plane's certificate --control-tls-cert \(controlCert): routes need their own CA")
            }
            do {
                return try RouteTLS(certificateChainPath: cert, privateKeyPath: key, caPath: ca, authorityPEM: authority)
            } catch {
                throw CLIFailure(Self.tlsProblem(error, files: [(cert, "--cluster-cert"), (key, "--cluster-key"), (ca, "--cluster-ca")]))
            }
        case (nil, nil, nil):
            let loopbackRoutes = routeURLs.allSatisfy { url in (try? Cluster.parse(url)).map { Self.isLoopback($0.host) } ?? false }
            guard clusterAllowPlaintext, Self.isLoopback(clusterHost), loopbackRoutes else {
                throw CLIFailure("routes need mutual TLS: give --cluster-cert, --cluster-key and --cluster-ca "
                                      + "(or --cluster-allow-plaintext with loopback addresses only, for development)")
            }
            return nil
        default:
            throw CLIFailure("--cluster-cert, --cluster-key and --cluster-ca go together")
        }
    }

    /// The control plane's TLS context: its own certificate, or the client one.
    func controlTLSContext() throws -> NIOSSLContext? {
        guard let cert = controlTlsCert ?? tlsCert, let key = controlTlsKey ?? tlsKey else { return nil }
        do {
            var tlsConfiguration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try PEMFile.chain(cert).map { .certificate($0) },
                privateKey: .privateKey(try PEMFile.key(key)))
            tlsConfiguration.minimumTLSVersion = .tlsv12
            return try NIOSSLContext(configuration: tlsConfiguration)
        } catch {
            throw CLIFailure(Self.tlsProblem(error, files: [(cert, controlTlsCert == nil ? "--tls-cert" : "--control-tls-cert"),
                                                            (key, controlTlsKey == nil ? "--tls-key" : "--control-tls-key")]))
        }
    }

    func writePidFile(_ path: String) {
        let text = "\(getpid())\n"
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            log("cannot write the pid file", ["path": path, "error": "\(error)"], level: .warning)
        }
    }
}

/// `--log-levels a=b,c=d` and repeated flags alike.
func splitList(_ values: [String]) -> [String] {
    values.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
}

extension Run {
    /// Lame-duck mode, as nats-server's: stop accepting clients, tell the
    /// connected ones (INFO `ldm: true`), wait the grace period, close them
    /// a few at a time over the duration, keep routes up until a peer
    /// confirmed this node's last persisted frames (bounded), send the final
    /// beat, then stop.
    func lameDuck(broker: Broker, node: Node?) async {
        log("entering lame-duck mode", ["grace_seconds": String(lameDuckGrace), "duration_seconds": String(lameDuckDuration)])
        node?.operations?.markDraining()
        await broker.enterLameDuck()
        if lameDuckGrace > 0 { try? await Task.sleep(for: .milliseconds(Int(lameDuckGrace * 1000))) }
        let total = broker.connectionCount
        if total > 0 {
            let steps = max(1, min(total, Int(lameDuckDuration.rounded(.up))))
            let batch = (total + steps - 1) / steps
            for _ in 0..<steps {
                if await broker.closeClients(upTo: batch) == 0 { break }
                try? await Task.sleep(for: .milliseconds(Int(lameDuckDuration * 1000) / steps))
            }
            await broker.closeClients(upTo: Int.max)
        }
        if let node {
            await node.settlePersistence()
            let deadline = Date().addingTimeInterval(lameDuckPeerWait)
            while node.unconfirmedPersistedBatches > 0, (broker.cluster?.peers.count ?? 0) > 0, Date() < deadline {
                try? await Task.sleep(for: .milliseconds(100))
            }
            if node.unconfirmedPersistedBatches > 0 {
                log("lame duck: stopping with persisted frames no peer confirmed", ["batches": String(node.unconfirmedPersistedBatches)])
            }
            node.operations?.stop()
        }
        await broker.shutdown()
    }

    /// What the node's operations need: its name and URLs, and each runtime
    /// setting as configuration gave it (a flag on the command line, or the default).
    func operationsConfiguration(dataDir: String, invocation: RunInvocation) -> OperationsConfiguration {
        var configuration = OperationsConfiguration()
        if let name { configuration.name = name }
        configuration.beatInterval = beatInterval
        configuration.dataDirectory = dataDir
        configuration.clientURL = advertise
        configuration.controlURL = advertiseControl
        func base(_ setting: RuntimeSetting, _ value: SettingValue) {
            configuration.baseSettings[setting] = invocation.baseSetting(setting, value)
        }
        base(.maxConnections, .integer(Int64(maxConnections)))
        base(.maxSubscriptions, .integer(Int64(maxSubscriptions)))
        base(.maxSubscriptionsPerUser, .integer(Int64(maxSubscriptionsPerUser)))
        base(.maxPayload, .integer(Int64(maxPayload)))
        base(.beatInterval, .number(beatInterval))
        base(.logLevel, .text(logLevel))
        base(.persistSenderMessagesPerMinute, .integer(Int64(persistSenderMessagesPerMinute)))
        base(.persistSenderBytesPerMinute, .integer(Int64(persistSenderBytesPerMinute)))
        base(.agentHeartbeatsPerMinute, .integer(Int64(agentHeartbeatsPerMinute)))
        base(.maxAgents, .integer(Int64(maxAgents)))
        return configuration
    }

    /// Splits a HOST:PORT option; the error names the option.
    /// What is wrong with TLS files, in words an operator can act on (NIOSSL
    /// says `noSuchFilesystemObject` or `failedToLoadPrivateKey`). `files` are
    /// (path, option) with the certificate first and the key second.
    static func tlsProblem(_ error: Error, files: [(String, String)]) -> String {
        for (path, option) in files {
            var isDirectory: ObjCBool = false
            if !FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) { return "no file at \(path) (\(option))" }
            if isDirectory.boolValue { return "\(path) (\(option)) is a directory; give the PEM file" }
            if !FileManager.default.isReadableFile(atPath: path) { return "\(path) (\(option)) cannot be read by this user" }
        }
        if let authority = error as? CertificateAuthorityFileError {
            let option = files.first { $0.0 == authority.path }.map { " (\($0.1))" } ?? ""
            return "\(authority.path)\(option) \(authority.reason)"
        }
        // Not a regular file (a FIFO, a device), or too large: named as such.
        if let fileError = error as? SecretFileError {
            switch fileError {
            case .notAFile(let path, _), .corrupt(let path, _), .io(let path, _), .missing(let path, _), .tooLarge(let path, _):
                let option = files.first { $0.0 == path }.map { " (\($0.1))" } ?? ""
                return "\(fileError)\(option)"
            case .insecurePermissions, .alreadyExists:
                return "\(fileError)"
            }
        }
        let (certificate, key) = (files.first, files.dropFirst().first)
        switch error as? NIOSSLError {
        case .failedToLoadPrivateKey?:
            if let certificate, let key {
                return "\(key.0) (\(key.1)) is not a PEM private key, or not the key of the certificate in \(certificate.0) (\(certificate.1)): "
                    + "check that the two files belong together"
            }
        case .failedToLoadCertificate?:
            if let certificate { return "\(certificate.0) (\(certificate.1)) holds no PEM certificate" }
        default:
            break
        }
        let names = files.map { "\($0.0) (\($0.1))" }.joined(separator: ", ")
        return "cannot use the TLS files \(names): \(String("\(error)".prefix(300)))"
    }

    /// HOST:PORT, with an IPv6 host in brackets (`[::1]:4222`).
    static func hostAndPort(_ text: String, option: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65_535).contains(port) else {
            throw CLIFailure("\(option) must be HOST:PORT with a port from 0 to 65535, got \(text)")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.contains(" "), !host.contains("/"), host.utf8.count <= 253 else {
            throw CLIFailure("\(option) has an invalid host: \(host)")
        }
        return (host, port)
    }

    static func isLoopback(_ host: String) -> Bool {
        ["127.0.0.1", "localhost", "::1", "[::1]"].contains(host) || host.hasPrefix("127.")
    }

    /// The route settings, checked: TLS under a cluster CA distinct from
    /// the client CA unless in loopback dev mode; advertised URLs only as
    /// configured (or the listen address when it names one host).
    func clusterConfiguration(client: BrokerConfiguration, root: String) throws -> ClusterConfiguration? {
        let routeURLs = routes.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
        guard let clusterListen else {
            guard routeURLs.isEmpty, clusterCert == nil, clusterKey == nil, clusterCa == nil else {
                throw CLIFailure("--routes and --cluster-* need --cluster-listen HOST:PORT")
            }
            return nil
        }
        var cluster = ClusterConfiguration()
        (cluster.host, cluster.port) = try Self.hostAndPort(clusterListen, option: "--cluster-listen")
        cluster.name = clusterName
        cluster.root = root
        cluster.pingInterval = .nanoseconds(Int64(max(0.1, routePingInterval) * 1e9))
        cluster.maxInterest = maxRouteInterest
        for url in routeURLs {
            do { _ = try Cluster.parse(url) } catch { throw CLIFailure("\(error)") }
        }
        cluster.routes = routeURLs
        cluster.tls = try routeTLS(clusterHost: cluster.host, routeURLs: routeURLs, clientTLS: client.tls)
        let wildcard = ["0.0.0.0", "::", "[::]", ""]
        if let advertise, !Cluster.isAdvertisableURL(advertise, schemes: ["nats", "tls"]) {
            throw CLIFailure("--advertise must be nats://HOST:PORT or tls://HOST:PORT (clients are told it), got \(advertise)")
        }
        if let advertiseControl, !Cluster.isAdvertisableURL(advertiseControl, schemes: ["http", "https"]) {
            throw CLIFailure("--advertise-control must be https://HOST:PORT (or http:// on loopback), got \(advertiseControl)")
        }
        let clientHost = client.host.contains(":") ? "[\(client.host)]" : client.host
        cluster.advertiseClientURL = advertise
            ?? (wildcard.contains(client.host) ? nil : "\(client.tls == nil ? "nats" : "tls")://\(clientHost):\(client.port)")
        if let advertiseControl {
            cluster.advertiseControlURL = advertiseControl
        } else if dataDir != nil, let (host, _) = try? Self.hostAndPort(controlListen, option: "--control-listen") {
            let tls = (controlTlsCert ?? tlsCert) != nil
            cluster.advertiseControlURL = wildcard.contains(host) ? nil : "\(tls ? "https" : "http")://\(controlListen)"
        }
        return cluster
    }
}

/// SIGTERM, SIGINT and SIGHUP as an async sequence of signal numbers.
final class SignalWaiter: @unchecked Sendable {
    private let queue = DispatchQueue(label: "unibusd.signals")
    private var sources: [DispatchSourceSignal] = []
    private var pending: [Int32] = []
    private var waiter: CheckedContinuation<Int32, Never>?

    init() {
        for signalNumber in [SIGTERM, SIGINT, SIGHUP, SIGUSR2] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler { [weak self] in self?.deliver(signalNumber) }
            source.resume()
            sources.append(source)
        }
    }

    private func deliver(_ signalNumber: Int32) {
        if let waiter {
            self.waiter = nil
            waiter.resume(returning: signalNumber)
        } else {
            pending.append(signalNumber)
        }
    }

    /// Delivers `signalNumber` as if the process had received it (a signed
    /// drain command enters lame duck the way SIGUSR2 does).
    func inject(_ signalNumber: Int32) {
        queue.async { self.deliver(signalNumber) }
    }

    func next() async -> Int32 {
        await withCheckedContinuation { continuation in
            queue.async {
                if !self.pending.isEmpty {
                    continuation.resume(returning: self.pending.removeFirst())
                } else {
                    self.waiter = continuation
                }
            }
        }
    }
}

extension SQLiteDatabase.Synchronous: ExpressibleByArgument {}
extension AgentHeartbeatMode: ExpressibleByArgument {}
extension LogFormat: ExpressibleByArgument {}
