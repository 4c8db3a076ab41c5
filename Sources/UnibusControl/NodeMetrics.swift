import Atomics
import NIOConcurrencyHelpers
import Prometheus
import UnibusBroker
import UnibusNode

/// The node's metrics, exposed on `GET /metrics` by swift-prometheus.
///
/// The hot paths count in plain atomics (the broker's `BrokerStatistics`,
/// the persister's and the operations' counters: one relaxed add, no
/// lookup, no allocation); each scrape copies them into the registry's
/// counters and gauges, which own the names, help texts, labels and the
/// exposition format. Every metric is documented in docs/operations.md.
public final class NodeMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let instruments: [Instrument]
    /// The last value copied into each counter (counters only grow: the
    /// registry is given the difference).
    private let copied = NIOLockedValueBox<[Int: Int64]>([:])

    enum Kind { case counter(Counter), gauge(Gauge) }

    struct Instrument: @unchecked Sendable {
        // @unchecked: `read` closes over the node's thread-safe statistics.
        let kind: Kind
        let read: () -> Int
    }

    public init(node: Node, registry: PrometheusCollectorRegistry, logins: LoginStatistics? = nil) {
        self.registry = registry
        var made: [Instrument] = []
        func counter(_ name: String, _ help: String, labels: [(String, String)] = [], _ read: @escaping () -> Int) {
            made.append(Instrument(kind: .counter(registry.makeCounter(name: name, labels: labels, help: help)), read: read))
        }
        func gauge(_ name: String, _ help: String, _ read: @escaping () -> Int) {
            made.append(Instrument(kind: .gauge(registry.makeGauge(name: name, labels: [], help: help)), read: read))
        }
        let stats = node.broker.statistics
        gauge("unibus_connections", "Client connections open now.") { stats.currentConnections.load(ordering: .relaxed) }
        counter("unibus_connections_accepted_total", "Client connections accepted.") { stats.connectionsAccepted.load(ordering: .relaxed) }
        counter("unibus_messages_in_total", "Messages published by clients.") { stats.messagesIn.load(ordering: .relaxed) }
        counter("unibus_messages_out_total", "Messages delivered to clients.") { stats.messagesOut.load(ordering: .relaxed) }
        counter("unibus_bytes_in_total", "Payload bytes published by clients.") { stats.bytesIn.load(ordering: .relaxed) }
        counter("unibus_bytes_out_total", "Payload bytes delivered to clients.") { stats.bytesOut.load(ordering: .relaxed) }
        counter("unibus_slow_consumers_total", "Clients closed for not reading fast enough.") { stats.slowConsumers.load(ordering: .relaxed) }
        counter("unibus_stale_connections_total", "Clients closed for unanswered PINGs.") { stats.staleConnections.load(ordering: .relaxed) }
        counter("unibus_permission_violations_total", "Publishes or subscriptions refused by permissions.") {
            stats.permissionViolations.load(ordering: .relaxed)
        }
        counter("unibus_protocol_violations_total", "Connections closed for protocol violations.") { stats.protocolViolations.load(ordering: .relaxed) }
        gauge("unibus_routes", "Route links to peer nodes up now.") { node.broker.cluster?.peers.count ?? 0 }
        counter("unibus_routes_opened_total", "Route links opened.") { stats.routesOpened.load(ordering: .relaxed) }
        counter("unibus_routed_messages_in_total", "Messages received from peer nodes.") { stats.routedIn.load(ordering: .relaxed) }
        counter("unibus_routed_messages_out_total", "Messages forwarded to peer nodes.") { stats.routedOut.load(ordering: .relaxed) }
        counter("unibus_routes_refused_total", "Route links refused (handshake, identity, version, limits).") { stats.routesRefused.load(ordering: .relaxed) }
        counter("unibus_replication_frames_refused_total", "Replication frames from peers that did not verify.") {
            node.refusedReplicationFrames.load(ordering: .relaxed)
        }
        counter("unibus_membership_replicated_refused_total", "Replicated membership operations refused.") { node.membership.counters.replicatedRefused }
        counter("unibus_membership_waiting_dropped_total", "Operations dropped while waiting for their causes.") { node.membership.counters.waitingDropped }
        gauge("unibus_membership_waiting", "Operations waiting for their causes.") { node.membership.waitingCount }
        counter("unibus_membership_outside_window_total", "Operations refused for a time outside the window.") { node.membership.counters.outsideWindow }
        counter("unibus_membership_replaced_by_checkpoint_total", "Operations replaced by a checkpoint.") { node.membership.counters.replacedByCheckpoint }
        counter("unibus_control_refusals_total", "Control-plane requests refused.") { stats.controlRefusals.load(ordering: .relaxed) }
        counter("unibus_control_connections_cut_total", "Control-plane connections cut for limits.") { stats.controlConnectionsCut.load(ordering: .relaxed) }
        gauge("unibus_connection_objects", "Connection objects alive (leak check).") { stats.liveConnectionObjects.load(ordering: .relaxed) }
        gauge("unibus_membership_refused_operations", "Operations in the log refused by the fold.") { node.membership.refusedOperations.count }
        gauge("unibus_membership_operations", "Operations in the membership log (a checkpoint replaces those before it).") { node.membership.operationCount }
        gauge("unibus_users", "Active users.") { node.membership.snapshot.users.values.filter { $0.status == .active }.count }
        gauge("unibus_rooms", "Rooms not archived.") { node.membership.snapshot.rooms.values.filter { $0.archived == nil }.count }
        if let persistence = node.persistenceStatistics {
            counter("unibus_persist_frames_stored_total", "Frames of persisted rooms stored.") { persistence.stored.load(ordering: .relaxed) }
            counter("unibus_persist_frames_duplicate_total", "Frames already stored, dropped.") { persistence.duplicates.load(ordering: .relaxed) }
            counter("unibus_persist_frames_refused_total", "Frames refused by the persister's checks.") { persistence.refused.load(ordering: .relaxed) }
            counter("unibus_persist_frames_replicated_in_total", "Frames stored from peers.") { persistence.replicatedIn.load(ordering: .relaxed) }
            counter("unibus_persist_frames_caught_up_total", "Frames stored by catch-up from peers.") { persistence.caughtUp.load(ordering: .relaxed) }
            counter("unibus_persist_frames_expired_total", "Frames removed by retention.") { persistence.expired.load(ordering: .relaxed) }
            counter("unibus_persist_frames_dropped_queue_full_total", "Frames dropped because the write queue was full.") {
                persistence.droppedQueueFull.load(ordering: .relaxed)
            }
            counter("unibus_persist_commits_total", "Store commits.") { persistence.commits.load(ordering: .relaxed) }
            counter("unibus_persist_batches_unconfirmed_total", "Stored batches no peer confirmed in time.") {
                persistence.receiptsUnconfirmed.load(ordering: .relaxed)
            }
        }
        if let operations = node.operations {
            counter("unibus_control_commands_applied_total", "Signed cluster commands applied.") { operations.commandsApplied.load(ordering: .relaxed) }
            counter("unibus_fleet_messages_refused_total", "Beats and results from peers that did not verify.") {
                operations.beatsRefused.load(ordering: .relaxed)
            }
            gauge("unibus_fleet_nodes", "Nodes heard from (signed beats).") { operations.signedBeats.count }
            gauge("unibus_agents", "VaultMesh agents registered.") { operations.agents.count }
            counter("unibus_agent_heartbeats_refused_total", "Agent heartbeats refused.") { operations.agents.refused.load(ordering: .relaxed) }
            gauge("unibus_killswitches_engaged", "Killswitches engaged.") { operations.switches.engagedSwitches.count }
            for reason in ["malformed", "bad_signature", "invalid", "not_admin", "expired", "replayed", "superseded", "busy", "storage"] {
                counter("unibus_control_commands_refused_total", "Signed cluster commands refused, by reason.", labels: [("reason", reason)]) {
                    operations.refusedCommands[reason] ?? 0
                }
            }
        }
        for reason in AuthFailureReason.allCases {
            counter("unibus_auth_failures_total", "Client authentications refused, by reason.", labels: [("reason", reason.rawValue)]) {
                stats.authorizationFailuresByReason[reason]?.load(ordering: .relaxed) ?? 0
            }
        }
        if let logins {
            counter("unibus_workload_logins_total", "Workload logins accepted (POST /v1/auth/jwt/login).") { logins.accepted.load(ordering: .relaxed) }
            counter("unibus_workload_logins_refused_total", "Workload login attempts refused (limits, signature, token, rules).") {
                logins.refused.load(ordering: .relaxed)
            }
        }
        instruments = made
    }

    /// Copies the atomics into the registry and renders it.
    public func exposition() -> String {
        copied.withLockedValue { last in
            for (index, instrument) in instruments.enumerated() {
                let value = Int64(clamping: instrument.read())
                switch instrument.kind {
                case .gauge(let gauge):
                    gauge.set(value)
                case .counter(let counter):
                    let before = last[index] ?? 0
                    if value > before { counter.increment(by: value - before) }
                    last[index] = max(before, value)
                }
            }
        }
        return registry.emitToString()
    }
}
