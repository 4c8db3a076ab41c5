import Foundation
import UnibusCrypto

/// A node's heartbeat: published every beat interval on
/// `unibus.node.<node id>.beat`, signed by the node's key (its nkey is its
/// id, persisted in its data directory). JSON with snake_case fields; a
/// stock NATS client reads it as is.
public struct NodeBeat: Codable, Equatable, Sendable {
    /// What a node says it is doing.
    public enum Status: String, Codable, Sendable, CaseIterable {
        case starting, serving, draining, stopping
    }

    /// The membership log as this node holds it.
    public struct LogHead: Codable, Equatable, Sendable {
        public var operations: Int
        public var digest: String
        public var heads: [String]
        public init(operations: Int, digest: String, heads: [String]) {
            self.operations = operations
            self.digest = digest
            self.heads = heads
        }
    }

    public static let context = "unibus-node-beat/1"
    /// Peers listed in one beat (more are counted, not listed).
    public static let maximumPeers = 256

    public var type = "beat"
    /// The node's nkey ("N…"): its id, and the key that signs.
    public var node: String
    public var name: String
    public var version: String
    /// RFC 3339 UTC.
    public var started: String
    public var uptimeSeconds: Int
    public var pid: Int
    public var status: Status
    public var connections: Int
    public var routes: Int
    public var peers: [String]
    public var rooms: Int
    public var log: LogHead
    public var rssBytes: Int
    /// CPU time used since start, and the share of one core over the last interval.
    public var cpuSeconds: Double
    public var cpuPercent: Double
    public var slowConsumers: Int
    /// The median of (peer's beat time − this node's clock when it arrived)
    /// over peers heard lately, in milliseconds; nil with no peer.
    public var clockOffsetMs: Int?
    /// False when `clockOffsetMs` is beyond `ClockCheck.tolerance`.
    public var clockOk: Bool
    public var intervalMs: Int
    /// When this beat was made: RFC 3339 UTC, and milliseconds since the epoch.
    public var timestamp: String
    public var timestampMs: Int64
    /// Counts up within one run of the node.
    public var sequence: Int64
    /// The highest cluster-command version applied, per target ("all" or this node's id).
    public var controlVersions: [String: UInt64]
    /// Engaged killswitches (features, or "node").
    public var killswitches: [String]
    /// VaultMesh agents registered on this node.
    public var agents: Int
    public var clientURL: String?
    public var controlURL: String?

    public init(node: String, name: String, version: String, started: String, uptimeSeconds: Int, pid: Int, status: Status,
                connections: Int, routes: Int, peers: [String], rooms: Int, log: LogHead, rssBytes: Int, cpuSeconds: Double,
                cpuPercent: Double, slowConsumers: Int, clockOffsetMs: Int?, clockOk: Bool, intervalMs: Int, timestamp: String,
                timestampMs: Int64, sequence: Int64, controlVersions: [String: UInt64], killswitches: [String], agents: Int,
                clientURL: String?, controlURL: String?) {
        self.node = node
        self.name = name
        self.version = version
        self.started = started
        self.uptimeSeconds = uptimeSeconds
        self.pid = pid
        self.status = status
        self.connections = connections
        self.routes = routes
        self.peers = peers
        self.rooms = rooms
        self.log = log
        self.rssBytes = rssBytes
        self.cpuSeconds = cpuSeconds
        self.cpuPercent = cpuPercent
        self.slowConsumers = slowConsumers
        self.clockOffsetMs = clockOffsetMs
        self.clockOk = clockOk
        self.intervalMs = intervalMs
        self.timestamp = timestamp
        self.timestampMs = timestampMs
        self.sequence = sequence
        self.controlVersions = controlVersions
        self.killswitches = killswitches
        self.agents = agents
        self.clientURL = clientURL
        self.controlURL = controlURL
    }

    enum CodingKeys: String, CodingKey {
        case type, node, name, version, started, pid, status, connections, routes, peers, rooms, log, timestamp, sequence, killswitches, agents
        case uptimeSeconds = "uptime_seconds", rssBytes = "rss_bytes", cpuSeconds = "cpu_seconds", cpuPercent = "cpu_percent"
        case slowConsumers = "slow_consumers", clockOffsetMs = "clock_offset_ms", clockOk = "clock_ok", intervalMs = "interval_ms"
        case timestampMs = "timestamp_ms", controlVersions = "control_versions", clientURL = "client_url", controlURL = "control_url"
    }

    /// Signs the beat with the node's key.
    public func sealed(by key: Ed25519KeyPair) -> [UInt8] { SignedDocument.seal(self, context: Self.context, key: key) }

    /// Verifies and checks a beat: signed by the node it names, fields in range.
    public static func open(_ payload: some Collection<UInt8>) throws(FleetMessageError) -> NodeBeat {
        let beat = try SignedDocument.open(payload, as: NodeBeat.self, context: context, signerType: .server) { $0.node }
        guard beat.type == "beat" else { throw .invalid("type must be beat") }
        guard beat.peers.count <= maximumPeers, beat.log.heads.count <= 64, beat.controlVersions.count <= 4,
              beat.killswitches.count <= 16 else { throw .invalid("a list in the beat is over its bound") }
        guard (1...3_600_000).contains(beat.intervalMs) else { throw .invalid("interval_ms must be 1 to 3600000") }
        guard beat.timestampMs > 0 else { throw .invalid("timestamp_ms must be positive") }
        for text in [beat.name, beat.version, beat.started, beat.timestamp] + beat.peers + beat.killswitches + beat.log.heads + [beat.log.digest]
            where text.utf8.count > 256 {
            throw .invalid("a text field of the beat is over 256 bytes")
        }
        return beat
    }
}

/// How far a node's clock may be from its peers': the smallest window any
/// signed thing is checked against (control requests and cluster commands:
/// ±60 s; operations may lead by 120 s; frames by their room's window, at
/// least 60 s). Beyond it the node refuses what its peers accept.
public enum ClockCheck {
    public static let tolerance: Int64 = 60_000

    /// The median of offsets (ms), nil for none.
    public static func median(_ offsets: [Int64]) -> Int64? {
        guard !offsets.isEmpty else { return nil }
        let sorted = offsets.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : sorted[middle - 1] / 2 + sorted[middle] / 2
    }
}
