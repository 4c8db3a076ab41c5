import Foundation

/// The fleet as one observer sees it: every bus node's latest verified beat
/// and every VaultMesh agent, each with a status. Computed the same way by
/// the node (the Command Center) and by `unibus node list` (from the signed
/// beats, so a node cannot make a dead peer look alive: a beat's time is
/// signed by its node).
public struct FleetView: Codable, Equatable, Sendable {
    /// A node's or agent's status on the page and in `unibus node list`.
    public enum Status: String, Codable, Sendable, CaseIterable {
        case healthy, attention, stale, draining, starting, stopped
    }

    public struct NodeRow: Codable, Equatable, Sendable {
        public var id: String
        public var name: String
        public var version: String
        public var status: Status
        /// Why it is not healthy ("" when it is).
        public var reason: String
        public var lastBeatAgeMs: Int64
        public var connections: Int
        public var routes: Int
        public var rooms: Int
        public var uptimeSeconds: Int
        /// "agrees", "disagrees" (with the majority's log digest), or "unknown".
        public var log: String
        public var logOperations: Int
        public var clockOffsetMs: Int?
        public var killswitches: [String]
        public var agents: Int
        public var rssBytes: Int
        public var cpuPercent: Double

        enum CodingKeys: String, CodingKey {
            case id, name, version, status, reason, connections, routes, rooms, log, killswitches, agents
            case lastBeatAgeMs = "last_beat_age_ms", uptimeSeconds = "uptime_seconds", logOperations = "log_operations"
            case clockOffsetMs = "clock_offset_ms", rssBytes = "rss_bytes", cpuPercent = "cpu_percent"
        }
    }

    public struct AgentRow: Codable, Equatable, Sendable {
        public var nodeID: String
        public var hostname: String
        public var osProfile: String
        public var cloudflareOK: Bool
        public var servicesOK: Bool
        public var vaultmeshRoot: String
        public var status: Status
        public var reason: String
        public var lastHeartbeatAgeMs: Int64
        /// The agent's registered key (nil in open mode: unauthenticated).
        public var key: String?
        public var heartbeats: Int

        public init(nodeID: String, hostname: String, osProfile: String, cloudflareOK: Bool, servicesOK: Bool, vaultmeshRoot: String,
                    status: Status, reason: String, lastHeartbeatAgeMs: Int64, key: String?, heartbeats: Int) {
            self.nodeID = nodeID
            self.hostname = hostname
            self.osProfile = osProfile
            self.cloudflareOK = cloudflareOK
            self.servicesOK = servicesOK
            self.vaultmeshRoot = vaultmeshRoot
            self.status = status
            self.reason = reason
            self.lastHeartbeatAgeMs = lastHeartbeatAgeMs
            self.key = key
            self.heartbeats = heartbeats
        }

        enum CodingKeys: String, CodingKey {
            case hostname, status, reason, key, heartbeats
            case nodeID = "node_id", osProfile = "os_profile", cloudflareOK = "cloudflare_ok", servicesOK = "services_ok"
            case vaultmeshRoot = "vaultmesh_root", lastHeartbeatAgeMs = "last_heartbeat_age_ms"
        }
    }

    public var generatedMs: Int64
    /// Rows per status, nodes and agents together.
    public var counts: [String: Int]
    public var nodes: [NodeRow]
    public var agents: [AgentRow]
    /// The node that computed the view ("" for a CLI's own view).
    public var observer: String

    enum CodingKeys: String, CodingKey {
        case counts, nodes, agents, observer
        case generatedMs = "generated_ms"
    }

    /// A beat is stale after this many of its own intervals without a newer one.
    public static let staleIntervals: Int64 = 3
    /// A log digest may disagree with the majority this long (and at least
    /// this many intervals) before the node needs attention: beats are
    /// taken at different moments, so a fresh operation shows briefly.
    public static let disagreementBound: Int64 = 30_000

    /// Builds the view. `disagreeingSince` holds, per node, when its digest
    /// was first seen to differ from the majority (the caller keeps it
    /// across calls: see `trackDisagreement`).
    public static func build(beats: [NodeBeat], agents: [AgentRow], nowMs: Int64, disagreeingSince: [String: Int64],
                             observer: String) -> FleetView {
        let majority = majorityDigest(beats, nowMs: nowMs)
        var rows: [NodeRow] = []
        for beat in beats.sorted(by: { ($0.name, $0.node) < ($1.name, $1.node) }) {
            let age = max(0, nowMs &- beat.timestampMs)
            var status = Status.healthy
            var reason = ""
            var log = "unknown"
            if let majority { log = beat.log.digest == majority ? "agrees" : "disagrees" }
            if beat.status == .stopping {
                (status, reason) = (.stopped, "said it was stopping")
            } else if age > staleIntervals * Int64(beat.intervalMs) {
                (status, reason) = (.stale, "no beat for \(age / 1000) s (interval \(beat.intervalMs / 1000) s)")
            } else if beat.status == .draining {
                (status, reason) = (.draining, "lame duck: moving its clients away")
            } else if beat.status == .starting {
                (status, reason) = (.starting, "starting")
            } else if !beat.clockOk {
                (status, reason) = (.attention, "clock off by \((beat.clockOffsetMs ?? 0) / 1000) s from its peers")
            } else if let since = disagreeingSince[beat.node],
                      nowMs &- since > max(disagreementBound, staleIntervals * Int64(beat.intervalMs)) {
                (status, reason) = (.attention, "its membership log differs from the majority's for \((nowMs &- since) / 1000) s")
            } else if beat.killswitches.contains(Killswitch.node.rawValue) {
                (status, reason) = (.attention, "killswitch node engaged")
            }
            rows.append(NodeRow(id: beat.node, name: beat.name, version: beat.version, status: status, reason: reason, lastBeatAgeMs: age,
                                connections: beat.connections, routes: beat.routes, rooms: beat.rooms, uptimeSeconds: beat.uptimeSeconds,
                                log: log, logOperations: beat.log.operations, clockOffsetMs: beat.clockOffsetMs,
                                killswitches: beat.killswitches, agents: beat.agents, rssBytes: beat.rssBytes, cpuPercent: beat.cpuPercent))
        }
        var counts: [String: Int] = [:]
        for status in Status.allCases { counts[status.rawValue] = 0 }
        for row in rows { counts[row.status.rawValue, default: 0] += 1 }
        for agent in agents { counts[agent.status.rawValue, default: 0] += 1 }
        counts["nodes"] = rows.count
        counts["agents"] = agents.count
        return FleetView(generatedMs: nowMs, counts: counts, nodes: rows, agents: agents, observer: observer)
    }

    /// The log digest more than half of the live (not stale, not stopped)
    /// nodes hold, or nil when none has a majority.
    public static func majorityDigest(_ beats: [NodeBeat], nowMs: Int64) -> String? {
        let live = beats.filter { $0.status != .stopping && max(0, nowMs &- $0.timestampMs) <= staleIntervals * Int64($0.intervalMs) }
        var tally: [String: Int] = [:]
        for beat in live { tally[beat.log.digest, default: 0] += 1 }
        guard let (digest, count) = tally.max(by: { $0.value < $1.value }), count * 2 > live.count else { return nil }
        return digest
    }

    /// Updates when each node's digest started to differ from the majority
    /// (removed when it agrees, or when there is no majority and all agree).
    public static func trackDisagreement(_ since: inout [String: Int64], beats: [NodeBeat], nowMs: Int64) {
        let live = beats.filter { $0.status != .stopping && max(0, nowMs &- $0.timestampMs) <= staleIntervals * Int64($0.intervalMs) }
        let majority = majorityDigest(beats, nowMs: nowMs)
        let unanimous = Set(live.map(\.log.digest)).count <= 1
        for beat in beats {
            let differs = majority.map { beat.log.digest != $0 } ?? !unanimous
            if differs && live.contains(where: { $0.node == beat.node }) {
                if since[beat.node] == nil { since[beat.node] = nowMs }
            } else {
                since[beat.node] = nil
            }
        }
        for node in since.keys where !beats.contains(where: { $0.node == node }) { since[node] = nil }
    }
}
