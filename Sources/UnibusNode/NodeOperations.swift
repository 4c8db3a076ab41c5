import Atomics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import UnibusBroker
import UnibusCrypto
import UnibusFleet
import UnibusMembership

/// The killswitches engaged on this node, read by the authorizer (new
/// connections) and the control plane (writes, agents, key shares).
public final class NodeSwitches: Sendable {
    private let engaged = NIOLockedValueBox<Set<Killswitch>>([])

    public init() {}

    /// Whether `feature` is off (the `node` switch turns every feature off).
    public func isEngaged(_ feature: Killswitch) -> Bool {
        engaged.withLockedValue { $0.contains(feature) || $0.contains(.node) }
    }

    public var engagedSwitches: [Killswitch] { engaged.withLockedValue { $0.sorted { $0.rawValue < $1.rawValue } } }

    func set(_ feature: Killswitch, engaged on: Bool) {
        engaged.withLockedValue { if on { $0.insert(feature) } else { $0.remove(feature) } }
    }
}

/// What `NodeOperations` needs to know about the node it runs in.
public struct OperationsConfiguration: Sendable {
    /// The node's name in beats (default: the host name).
    public var name = ProcessInfo.processInfo.hostName
    /// Seconds between beats (`--beat-interval`).
    public var beatInterval: Double = 10
    /// Where the desired state of cluster commands is kept (nil: memory only).
    public var dataDirectory: String?
    public var clientURL: String?
    public var controlURL: String?
    /// The runtime settings as configuration gave them (flags or defaults).
    public var baseSettings: [RuntimeSetting: EffectiveSetting] = [:]

    public init() {}
}

/// A node's operations on the bus: signed heartbeats every beat interval,
/// the fleet as this node hears it, and admin-signed cluster commands
/// (settings, drain, killswitch) with a signed result for each.
///
/// Beats and results travel to peers as `RDATA` fleet frames (each node
/// sends only its own, signed by its key, and a peer accepts a beat or
/// result only from the node that signed it); every node publishes what it
/// hears to its own clients on `unibus.node.<id>.beat|update_result`, so an
/// admin on any node sees the fleet. Commands are taken from admins'
/// publishes on `unibus.control` (a broker tap) and forwarded once to every
/// peer; every node checks each command itself.
public final class NodeOperations: PublishTap, @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`; the rest is immutable or atomic.
    public let switches: NodeSwitches
    public let agents: AgentRegistry
    private weak var _node: Node?
    private var node: Node? { lock.withLock { _node } }
    private let nodeKey: Ed25519KeyPair
    public let nodeID: String
    private let configuration: OperationsConfiguration
    private let lock = NIOLock()
    /// Held across "decide a setting's value and apply it" (a command, a
    /// reload), so the applied value is always the one `effective` shows.
    private let settingsLock = NIOLock()
    private let started = Date()
    private var status: NodeBeat.Status = .starting
    private var sequence: Int64 = 0
    private var intervalMs: Int
    private var fleet: [String: FleetEntry] = [:]
    private var disagreeingSince: [String: Int64] = [:]
    private var peerOffsets: [String: (offset: Int64, atMs: Int64)] = [:]
    private var results: [[UInt8]] = []
    private var nonces = NonceCache(capacity: 100_000, perOwner: 10_000)
    private var state = ControlState()
    private var effective: [RuntimeSetting: EffectiveSetting] = [:]
    private var lastCPU: (cpu: Double, wall: Double)?
    private var beatTask: Task<Void, Never>?
    /// Commands wait here and are handled one at a time by one task: the
    /// version check, the persisted write and the new state are one step.
    /// Bounded: past it, new commands are dropped and counted.
    private let commandQueue: AsyncStream<(payload: [UInt8], fromPeer: String?)>
    private let commandInput: AsyncStream<(payload: [UInt8], fromPeer: String?)>.Continuation
    private var commandTask: Task<Void, Never>?
    static let queuedCommands = 256
    private var stopped = false
    /// Called when a `drain` command is accepted (unibusd enters lame duck).
    private var drainHandler: (@Sendable (String) -> Void)?
    /// Called for settings the node itself does not own (the log level).
    private var settingHandler: (@Sendable (RuntimeSetting, SettingValue) -> Void)?

    public let commandsApplied = ManagedAtomic<Int>(0)
    private let refusals = NIOLockedValueBox<[String: Int]>([:])
    public let beatsRefused = ManagedAtomic<Int>(0)

    /// Most nodes kept in the fleet table; results kept for the page.
    static let maximumFleet = 1024
    static let keptResults = 100

    struct FleetEntry {
        var beat: NodeBeat
        var payload: [UInt8]
        var receivedMs: Int64
    }

    /// The desired state of cluster commands, persisted in the data
    /// directory (`control-state.json`, 0600) so it survives restarts and
    /// stays above flags for the settings it changed.
    struct ControlState: Codable, Equatable {
        var versions: [String: UInt64] = [:]
        var settings: [String: EffectiveSetting] = [:]
        var killswitches: [String: EffectiveSetting] = [:]
    }

    static let stateFile = "control-state.json"

    /// Loads the persisted desired state (a corrupt file is a start error
    /// naming it: silently dropping it would undo admins' commands).
    public init(node: Node, nodeKey: Ed25519KeyPair, configuration: OperationsConfiguration, switches: NodeSwitches,
                agents: AgentRegistry = AgentRegistry()) throws(NodeOperationsError) {
        self._node = node
        self.nodeKey = nodeKey
        self.nodeID = NKey.encodePublicKey(nodeKey.publicKey, type: .server)
        self.configuration = configuration
        self.switches = switches
        self.agents = agents
        self.intervalMs = Int(configuration.beatInterval * 1000)
        self.effective = configuration.baseSettings
        (commandQueue, commandInput) = AsyncStream.makeStream(of: (payload: [UInt8], fromPeer: String?).self,
                                                              bufferingPolicy: .bufferingOldest(Self.queuedCommands))
        if let directory = configuration.dataDirectory {
            let path = directory + "/" + Self.stateFile
            if FileManager.default.fileExists(atPath: path) {
                let bytes: [UInt8]
                do { bytes = try SecretFile.read(path, maximumSize: 1 << 20, missingHint: "") } catch {
                    throw NodeOperationsError("cannot read \(path): \(error)")
                }
                do { state = try JSONDecoder().decode(ControlState.self, from: Data(bytes)) } catch {
                    throw NodeOperationsError("\(path) is not a control state the node wrote (\(FleetMessageError.describe(error))); "
                                              + "move it aside to start without the settings and switches admins pushed")
                }
            }
        }
        for (name, applied) in state.settings {
            guard let setting = RuntimeSetting(rawValue: name), setting.problem(applied.value) == nil else { continue }
            effective[setting] = applied
        }
        for (name, _) in state.killswitches {
            if let feature = Killswitch(rawValue: name) { switches.set(feature, engaged: true) }
        }
    }

    /// Applies persisted settings, taps `unibus.control` and starts beating.
    public func start(onDrain: @escaping @Sendable (String) -> Void, onSetting: @escaping @Sendable (RuntimeSetting, SettingValue) -> Void) {
        lock.withLock {
            drainHandler = onDrain
            settingHandler = onSetting
        }
        for (setting, value) in lock.withLock({ effective }) where value.source == .command { apply(setting, value.value) }
        node?.broker.setTap(self, subjects: [ReservedNamespace.controlSubject], owner: "operations")
        let task = Task { [weak self] in
            var next = Date()
            while let self, !Task.isCancelled {
                if Date() >= next {
                    self.beat()
                    next = Date().addingTimeInterval(Double(self.lock.withLock { self.intervalMs }) / 1000)
                }
                try? await Task.sleep(for: .milliseconds(min(200, max(20, Int(next.timeIntervalSinceNow * 1000)))))
                if self.lock.withLock({ self.stopped }) { return }
            }
        }
        let queue = commandQueue
        let consumer = Task { [weak self] in
            for await (payload, fromPeer) in queue {
                guard let self else { return }
                await self.process(payload, fromPeer: fromPeer)
            }
        }
        lock.withLock {
            beatTask = task
            commandTask = consumer
        }
    }

    /// New base values from a configuration reload (files, environment,
    /// flags). A setting an admin pushed by signed command keeps the
    /// command's value: commands stay above configuration. Returns the
    /// settings whose value changed and were applied.
    @discardableResult
    public func reloadBaseSettings(_ base: [RuntimeSetting: EffectiveSetting]) -> [RuntimeSetting] {
        var applied: [RuntimeSetting] = []
        for (setting, value) in base.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            settingsLock.withLock {
                let changed = lock.withLock { () -> Bool in
                    guard effective[setting]?.source != .command else { return false }
                    let changed = effective[setting]?.value != value.value
                    effective[setting] = value
                    return changed
                }
                if changed {
                    apply(setting, value.value)
                    applied.append(setting)
                }
            }
        }
        return applied
    }

    /// Queues a command for the one consumer; a full queue drops it (counted).
    private func enqueue(_ payload: [UInt8], fromPeer: String?) {
        if case .dropped = commandInput.yield((payload, fromPeer)) { count(refusal: "busy") }
    }

    /// The node serves (its listeners are up): beats say so from now on.
    public func markServing() { setStatus(.serving) }

    /// Lame duck: beats say `draining` from now on, and one goes out now.
    public func markDraining() {
        setStatus(.draining)
        beat()
    }

    private func setStatus(_ new: NodeBeat.Status) {
        lock.withLock { if status != .stopping { status = new } }
    }

    /// The final `stopping` beat (before the routes close), then no more.
    public func stop() {
        lock.withLock {
            status = .stopping
            stopped = true
        }
        beat()
        lock.withLock {
            beatTask?.cancel()
            commandTask?.cancel()
        }
        commandInput.finish()
        node?.broker.setTap(nil, subjects: [], owner: "operations")
    }

    // MARK: beats

    /// Makes, signs and sends one beat (locally and to every peer).
    func beat() {
        guard let node else { return }
        let now = Date()
        let nowMs = Int64(now.timeIntervalSince1970 * 1000)
        let log = node.membership.membershipLog
        let snapshot = node.membership.snapshot
        let peers = node.broker.cluster?.peers ?? []
        let (rss, cpu) = Self.processUsage()
        let wall = now.timeIntervalSince(started)
        let (status, sequence, interval, versions, cpuPercent, offset) = lock.withLock { () -> (NodeBeat.Status, Int64, Int, [String: UInt64], Double, Int64?) in
            self.sequence += 1
            var percent = 0.0
            if let last = lastCPU, wall > last.wall { percent = max(0, (cpu - last.cpu) / (wall - last.wall) * 100) }
            lastCPU = (cpu, wall)
            let fresh = peerOffsets.filter { nowMs &- $0.value.atMs <= FleetView.staleIntervals * Int64(intervalMs) }.map(\.value.offset)
            return (self.status, self.sequence, intervalMs, state.versions, percent, ClockCheck.median(fresh).map { -$0 })
        }
        let beat = NodeBeat(
            node: nodeID, name: String(configuration.name.prefix(128)), version: UnibusVersion.current,
            started: OperationTime.string(started), uptimeSeconds: Int(wall), pid: Int(getpid()), status: status,
            connections: node.broker.connectionCount, routes: peers.count, peers: Array(peers.map(\.serverID).sorted().prefix(NodeBeat.maximumPeers)),
            rooms: snapshot.rooms.values.filter { $0.archived == nil }.count,
            log: .init(operations: log.count, digest: log.digest, heads: Array(log.heads.prefix(64))),
            rssBytes: rss, cpuSeconds: (cpu * 1000).rounded() / 1000, cpuPercent: (cpuPercent * 10).rounded() / 10,
            slowConsumers: node.broker.statistics.slowConsumers.load(ordering: .relaxed),
            clockOffsetMs: offset.map { Int($0) }, clockOk: (offset ?? 0).magnitude <= ClockCheck.tolerance, intervalMs: interval,
            timestamp: OperationTime.string(now), timestampMs: nowMs, sequence: sequence,
            controlVersions: versions.filter { $0.key == ClusterCommand.everyNode || $0.key == nodeID },
            killswitches: switches.engagedSwitches.map(\.rawValue), agents: agents.count,
            clientURL: configuration.clientURL, controlURL: configuration.controlURL)
        let payload = beat.sealed(by: nodeKey)
        remember(beat, payload: payload, nowMs: nowMs)
        node.broker.publish(subject: ReservedNamespace.beatSubject(for: nodeID), payload: payload)
        node.broker.cluster?.broadcast(FleetFrame.beat(payload).encoded)
    }

    private func remember(_ beat: NodeBeat, payload: [UInt8], nowMs: Int64) {
        lock.withLock {
            // Nodes not heard for an hour leave the table (a node that left, or came back under a new key).
            if fleet[beat.node] == nil, fleet.count >= Self.maximumFleet {
                fleet = fleet.filter { nowMs &- $0.value.receivedMs < 3_600_000 }
                guard fleet.count < Self.maximumFleet else { return }
            }
            // A replayed older beat never replaces a newer one: within one run
            // of a node its sequence orders beats (not its clock, which may step back).
            if let known = fleet[beat.node], known.beat.started == beat.started, known.beat.sequence >= beat.sequence { return }
            fleet[beat.node] = FleetEntry(beat: beat, payload: payload, receivedMs: nowMs)
            FleetView.trackDisagreement(&disagreeingSince, beats: fleet.values.map(\.beat), nowMs: nowMs)
        }
    }

    /// RSS bytes (from /proc) and CPU seconds used (user + system).
    static func processUsage() -> (Int, Double) {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        var rss = 0
        if let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) {
            let fields = text.split(separator: " ")
            if fields.count > 1, let pages = Int(fields[1]) { rss = pages.multipliedReportingOverflow(by: Int(sysconf(Int32(_SC_PAGESIZE)))).partialValue }
        }
        return (rss, cpu)
    }

    // MARK: the fleet

    /// The latest signed beat of every node heard (this one included).
    public var signedBeats: [[UInt8]] { lock.withLock { fleet.values.sorted { $0.beat.node < $1.beat.node }.map(\.payload) } }

    /// The latest signed results (oldest first).
    public var signedResults: [[UInt8]] { lock.withLock { results } }

    /// When each node's log digest started to differ from the majority's.
    public var disagreements: [String: Int64] { lock.withLock { disagreeingSince } }

    /// The fleet now: nodes from beats, agents from this node's registry.
    public func view(nowMs: Int64 = Int64(Date().timeIntervalSince1970 * 1000)) -> FleetView {
        let (beats, since) = lock.withLock { () -> ([NodeBeat], [String: Int64]) in
            FleetView.trackDisagreement(&disagreeingSince, beats: fleet.values.map(\.beat), nowMs: nowMs)
            return (fleet.values.map(\.beat), disagreeingSince)
        }
        return FleetView.build(beats: beats, agents: agents.rows(nowMs: nowMs), nowMs: nowMs, disagreeingSince: since, observer: nodeID)
    }

    /// Why this node's clock cannot be trusted (beyond `ClockCheck.tolerance`
    /// from its peers' median), or nil.
    public var clockProblem: String? {
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        let offset = lock.withLock { () -> Int64? in
            let fresh = peerOffsets.filter { nowMs &- $0.value.atMs <= FleetView.staleIntervals * Int64(intervalMs) }.map(\.value.offset)
            return ClockCheck.median(fresh)
        }
        guard let offset, offset.magnitude > ClockCheck.tolerance else { return nil }
        return "this node's clock is \(offset.magnitude / 1000) s \(offset > 0 ? "behind" : "ahead of") its peers' (more than the "
            + "\(ClockCheck.tolerance / 1000) s every signed request, command and frame allows): fix its time sync (NTP)"
    }

    /// The runtime settings now, with where each came from.
    public var effectiveSettings: [String: EffectiveSetting] {
        lock.withLock { Dictionary(uniqueKeysWithValues: effective.map { ($0.key.rawValue, $0.value) }) }
    }

    /// The current status beats carry.
    public var currentStatus: NodeBeat.Status { lock.withLock { status } }

    /// Refused commands by reason (for /metrics).
    public var refusedCommands: [String: Int] { refusals.withLockedValue { $0 } }

    // MARK: from peers

    /// A fleet frame from a route peer.
    func received(_ frame: FleetFrame, from peer: String) async {
        guard let node else { return }
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        switch frame {
        case .beat(let payload):
            guard let beat = try? NodeBeat.open(payload), beat.node == peer else {
                beatsRefused.wrappingIncrement(ordering: .relaxed)
                return
            }
            lock.withLock { peerOffsets[peer] = (beat.timestampMs &- nowMs, nowMs) }
            remember(beat, payload: payload, nowMs: nowMs)
            node.broker.publish(subject: ReservedNamespace.beatSubject(for: peer), payload: payload)
        case .result(let payload):
            guard let result = try? UpdateResult.open(payload), result.node == peer else {
                beatsRefused.wrappingIncrement(ordering: .relaxed)
                return
            }
            keep(result: payload)
            node.broker.publish(subject: ReservedNamespace.resultSubject(for: peer), payload: payload)
        case .command(let payload):
            enqueue(payload, fromPeer: peer)
        }
    }

    /// Forgets a peer's clock offset when its link closes.
    func routeClosed(_ peer: String) {
        lock.withLock { _ = peerOffsets.removeValue(forKey: peer) }
    }

    private func keep(result payload: [UInt8]) {
        lock.withLock {
            results.append(payload)
            if results.count > Self.keptResults { results.removeFirst(results.count - Self.keptResults) }
        }
    }

    // MARK: commands

    /// An admin's publish on `unibus.control` (on the publishing
    /// connection's event loop: the work goes elsewhere).
    public func published(subject: String, payload: ByteBuffer, publisher: String?) {
        guard payload.readableBytes <= SignedDocument.maximumBytes else {
            count(refusal: "malformed")
            return
        }
        enqueue(Array(payload.readableBytesView), fromPeer: nil)
    }

    private func count(refusal reason: String) {
        refusals.withLockedValue { $0[reason, default: 0] += 1 }
    }

    /// Checks and applies one command. `fromPeer` is nil for a command an
    /// admin published on this node (which forwards it once to every peer).
    func process(_ payload: [UInt8], fromPeer: String?) async {
        guard let node else { return }
        let now = Date()
        let nowMs = Int64(now.timeIntervalSince1970 * 1000)
        let command: ClusterCommand
        do {
            command = try ClusterCommand.open(payload)
        } catch {
            let reason: String
            switch error {
            case .badSignature: reason = "bad_signature"
            case .invalid: reason = "invalid"
            case .malformed: reason = "malformed"
            }
            count(refusal: reason)
            // Counted and logged, never answered: an unreadable command names
            // no one to answer, and answering would amplify a flood.
            node.log("cluster command refused", ["reason": reason, "error": "\(error)", "from": fromPeer ?? "a client"])
            return
        }
        let targetsMe = command.target == ClusterCommand.everyNode || command.target == nodeID
        let snapshot = node.membership.snapshot
        guard let admin = snapshot.users[command.admin], admin.role == .admin, admin.status == .active else {
            refuse(command, reason: "not_admin", error: "\(command.admin) is not an active admin in this node's membership log",
                   answer: targetsMe || fromPeer == nil)
            return
        }
        guard command.isFresh(nowMs: nowMs) else {
            refuse(command, reason: "expired", error: "the command was signed \((nowMs &- command.timestampMs) / 1000) s from this node's clock "
                   + "(at most \(ClusterCommand.window / 1000) s): send a new one", answer: targetsMe || fromPeer == nil)
            return
        }
        let claim = lock.withLock {
            nonces.insert(command.nonce, owner: command.admin, now: Int(nowMs / 1000), lifetime: Int(2 * ClusterCommand.window / 1000) + 2)
        }
        switch claim {
        case .replayed?:
            refuse(command, reason: "replayed", error: "replayed: this node has seen command \(command.nonce) before", answer: targetsMe || fromPeer == nil)
            return
        case .full?:
            refuse(command, reason: "busy", error: "this node remembers too many recent commands; retry in \(ClusterCommand.window / 1000) s",
                   answer: targetsMe || fromPeer == nil)
            return
        case nil:
            break
        }
        if fromPeer == nil { node.broker.cluster?.broadcast(FleetFrame.command(payload).encoded) }
        guard targetsMe else { return }
        let applied = lock.withLock { state.versions[command.target] ?? 0 }
        guard command.version > applied else {
            refuse(command, reason: "superseded", error: "superseded: version \(command.version) is not above \(applied), "
                   + "the version this node applied for target \(command.target)", answer: true)
            return
        }
        await apply(command, at: now)
    }

    private func refuse(_ command: ClusterCommand, reason: String, error: String, answer shouldAnswer: Bool) {
        count(refusal: reason)
        node?.log("cluster command refused", ["reason": reason, "action": command.action.rawValue, "admin": command.admin,
                                              "command": command.nonce, "version": String(command.version)])
        if shouldAnswer { answer(action: command.action.rawValue, .refused, detail: "", error: error, command: command) }
    }

    private func apply(_ command: ClusterCommand, at now: Date) async {
        guard let node else { return }
        let at = OperationTime.string(now)
        let stamp = { (value: SettingValue) in
            EffectiveSetting(value: value, source: .command, version: command.version, target: command.target, admin: command.admin, at: at)
        }
        var next = lock.withLock { state }
        next.versions[command.target] = command.version
        var detail = ""
        switch command.action {
        case .settings:
            var changes: [String] = []
            for (name, value) in (command.settings ?? [:]).sorted(by: { $0.key < $1.key }) {
                guard let setting = RuntimeSetting(rawValue: name) else { continue }   // `open` refused unknown names
                let before = lock.withLock { effective[setting]?.value.description ?? "unset" }
                next.settings[name] = stamp(value)
                changes.append("\(name)=\(value) (was \(before))")
            }
            detail = changes.joined(separator: ", ")
        case .drain:
            detail = "entering lame-duck mode: no new clients; connected clients are told to move and closed gradually"
        case .killswitch:
            guard let change = command.killswitch else { return }
            if change.engaged { next.killswitches[change.feature.rawValue] = stamp(.flag(true)) } else { next.killswitches[change.feature.rawValue] = nil }
            detail = "\(change.feature.rawValue) \(change.engaged ? "engaged" : "lifted"): \(change.feature.summary)"
        }
        // Persisted before it takes effect: a node that cannot remember a
        // command does not apply it (a restart would silently undo it).
        if let directory = configuration.dataDirectory {
            do {
                try SecretFile.write(SignedDocument.encode(next), to: directory + "/" + Self.stateFile, overwrite: true)
            } catch {
                count(refusal: "storage")
                node.log("cluster command could not be persisted", ["error": "\(error)"])
                answer(action: command.action.rawValue, .failed, detail: "", error: "the node could not persist the command; its log has the details",
                       command: command)
                return
            }
        }
        lock.withLock { state = next }
        switch command.action {
        case .settings:
            for (name, value) in (command.settings ?? [:]).sorted(by: { $0.key < $1.key }) {
                guard let setting = RuntimeSetting(rawValue: name) else { continue }
                settingsLock.withLock {
                    lock.withLock { effective[setting] = stamp(value) }
                    apply(setting, value)
                }
            }
        case .drain:
            break
        case .killswitch:
            guard let change = command.killswitch else { return }
            switches.set(change.feature, engaged: change.engaged)
            if change.engaged && change.feature == .node {
                let membership = node.membership
                await node.broker.closeClients(where: { user in
                    guard let user else { return true }
                    return membership.snapshot.users[user]?.role != .admin
                })
            }
        }
        commandsApplied.wrappingIncrement(ordering: .relaxed)
        node.log("cluster command applied", ["action": command.action.rawValue, "admin": command.admin, "version": String(command.version),
                                             "detail": detail])
        answer(action: command.action.rawValue, .ok, detail: detail, error: nil, command: command)
        if command.action == .drain { lock.withLock { drainHandler }?("signed drain command from \(command.admin)") }
    }

    /// Applies one runtime setting to what owns it.
    private func apply(_ setting: RuntimeSetting, _ value: SettingValue) {
        guard let node else { return }
        let integer = Int(clamping: value.integer ?? 0)
        switch setting {
        case .maxConnections: node.broker.limits.maxConnections.store(integer, ordering: .relaxed)
        case .maxSubscriptions: node.broker.limits.maxSubscriptions.store(integer, ordering: .relaxed)
        case .maxSubscriptionsPerUser: node.broker.limits.maxSubscriptionsPerUser.store(integer, ordering: .relaxed)
        case .maxPayload: node.broker.limits.maxPayload.store(integer, ordering: .relaxed)
        case .beatInterval:
            if let seconds = value.number { lock.withLock { intervalMs = Int(seconds * 1000) } }
        case .persistSenderMessagesPerMinute: node.persister?.senderMessagesPerWindow.store(integer, ordering: .relaxed)
        case .persistSenderBytesPerMinute: node.persister?.senderBytesPerWindow.store(integer, ordering: .relaxed)
        case .agentHeartbeatsPerMinute: agents.heartbeatsPerMinute.store(integer, ordering: .relaxed)
        case .maxAgents: agents.maxAgents.store(integer, ordering: .relaxed)
        case .logLevel: lock.withLock { settingHandler }?(setting, value)
        }
    }

    /// Publishes a signed result locally and to every peer.
    private func answer(action: String, _ status: UpdateResult.Status, detail: String, error: String?, command: ClusterCommand?) {
        guard let node else { return }
        let result = UpdateResult(action: action, status: status, detail: detail, error: error, node: nodeID, timestamp: OperationTime.now(),
                                  command: command?.nonce ?? "", version: command?.version ?? 0, admin: command?.admin ?? "")
        let payload = result.sealed(by: nodeKey)
        keep(result: payload)
        node.broker.publish(subject: ReservedNamespace.resultSubject(for: nodeID), payload: payload)
        node.broker.cluster?.broadcast(FleetFrame.result(payload).encoded)
    }
}

/// Why the node's operations cannot start.
public struct NodeOperationsError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

