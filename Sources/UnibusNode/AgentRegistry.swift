import Atomics
import Foundation
import NIOConcurrencyHelpers
import UnibusFleet

/// Who may send VaultMesh agent heartbeats to this node.
public enum AgentHeartbeatMode: String, Sendable, CaseIterable {
    /// Only agents whose key an admin registered (a user with role `agent`),
    /// each request signed like every control-plane request (the default).
    case signed
    /// Anyone who reaches the control plane, unsigned, exactly as the
    /// contract's V1 (for agents that cannot sign; still bounded).
    case open
    /// None.
    case off
}

/// Why an agent heartbeat was not recorded (and the HTTP status it gets).
public struct AgentRefusal: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let description: String
}

/// The VaultMesh agents that reported to this node: self-registered on
/// their first heartbeat, updated by later ones. Bounded in count and in
/// heartbeats per agent per minute; in memory (agents re-register within
/// one interval after a restart).
public final class AgentRegistry: Sendable {
    public struct Entry: Sendable, Equatable {
        public var heartbeat: AgentHeartbeat
        /// The registered key that signed, nil in open mode.
        public var key: String?
        public var firstSeenMs: Int64
        public var lastSeenMs: Int64
        public var heartbeats: Int
        var windowStartMs: Int64
        var inWindow: Int
    }

    public let mode: AgentHeartbeatMode
    public let maxAgents: ManagedAtomic<Int>
    public let heartbeatsPerMinute: ManagedAtomic<Int>
    /// An agent not heard for this long is stale (3 × the contract's 30 s default).
    public let staleAfterMs: Int64
    private let entries = NIOLockedValueBox<[String: Entry]>([:])
    public let refused = ManagedAtomic<Int>(0)

    public init(mode: AgentHeartbeatMode = .signed, maxAgents: Int = 1000, heartbeatsPerMinute: Int = 12, staleAfterMs: Int64 = 90_000) {
        self.mode = mode
        self.maxAgents = ManagedAtomic(maxAgents)
        self.heartbeatsPerMinute = ManagedAtomic(heartbeatsPerMinute)
        self.staleAfterMs = staleAfterMs
    }

    public var count: Int { entries.withLockedValue { $0.count } }

    /// Records a heartbeat from `key` (nil in open mode).
    public func record(_ heartbeat: AgentHeartbeat, key: String?, nowMs: Int64) -> Result<Void, AgentRefusal> {
        let limit = heartbeatsPerMinute.load(ordering: .relaxed)
        let capacity = maxAgents.load(ordering: .relaxed)
        let staleAfterMs = self.staleAfterMs
        let outcome: Result<Void, AgentRefusal> = entries.withLockedValue { table in
            if var entry = table[heartbeat.nodeID] {
                // A node id belongs to the key that registered it.
                if let owner = entry.key, owner != key {
                    return .failure(AgentRefusal(status: 409, description: "node_id \(heartbeat.nodeID) is registered to another agent key"))
                }
                if entry.key == nil, key != nil {
                    // An open-mode entry is taken over by a signed agent.
                    entry.key = key
                }
                if nowMs &- entry.windowStartMs >= 60_000 {
                    entry.windowStartMs = nowMs
                    entry.inWindow = 0
                }
                guard entry.inWindow < limit else {
                    return .failure(AgentRefusal(status: 429, description: "over \(limit) heartbeats a minute for node_id \(heartbeat.nodeID); send one every VAULTMESH_HEARTBEAT_SECS"))
                }
                entry.inWindow += 1
                entry.heartbeat = heartbeat
                entry.lastSeenMs = nowMs
                entry.heartbeats += 1
                table[heartbeat.nodeID] = entry
                return .success(())
            }
            if let key, let other = table.first(where: { $0.value.key == key })?.key {
                return .failure(AgentRefusal(status: 409, description: "this agent key already reports node_id \(other); one key, one node"))
            }
            if table.count >= capacity {
                // Agents silent for ten stale periods make room first.
                table = table.filter { nowMs &- $0.value.lastSeenMs <= 10 * staleAfterMs }
            }
            guard table.count < capacity else {
                return .failure(AgentRefusal(status: 503, description: "this node registers at most \(capacity) agents (setting max_agents)"))
            }
            table[heartbeat.nodeID] = Entry(heartbeat: heartbeat, key: key, firstSeenMs: nowMs, lastSeenMs: nowMs, heartbeats: 1,
                                            windowStartMs: nowMs, inWindow: 1)
            return .success(())
        }
        if case .failure = outcome { refused.wrappingIncrement(ordering: .relaxed) }
        return outcome
    }

    /// Forgets the agents of keys no longer allowed (an agent user revoked).
    public func forget(where shouldForget: (String?) -> Bool) {
        entries.withLockedValue { table in table = table.filter { !shouldForget($0.value.key) } }
    }

    /// The agents as fleet rows.
    public func rows(nowMs: Int64) -> [FleetView.AgentRow] {
        let all = entries.withLockedValue { Array($0.values) }
        return all.sorted { ($0.heartbeat.hostname, $0.heartbeat.nodeID) < ($1.heartbeat.hostname, $1.heartbeat.nodeID) }.map { entry in
            let age = max(0, nowMs &- entry.lastSeenMs)
            var status = FleetView.Status.healthy
            var reason = ""
            if age > staleAfterMs {
                (status, reason) = (.stale, "no heartbeat for \(age / 1000) s")
            } else if !entry.heartbeat.cloudflareOK || !entry.heartbeat.servicesOK {
                (status, reason) = (.attention, !entry.heartbeat.cloudflareOK ? "cloudflared is not active" : "VAULTMESH_ROOT is not a directory")
            }
            let beat = entry.heartbeat
            return FleetView.AgentRow(nodeID: beat.nodeID, hostname: beat.hostname, osProfile: beat.osProfile, cloudflareOK: beat.cloudflareOK,
                                      servicesOK: beat.servicesOK, vaultmeshRoot: beat.vaultmeshRoot, status: status, reason: reason,
                                      lastHeartbeatAgeMs: age, key: entry.key, heartbeats: entry.heartbeats)
        }
    }
}
