import Atomics
import Foundation
import Prometheus
import UnibusBroker
import UnibusControlClient
import UnibusCrypto
import UnibusFleet
import UnibusMembership
import UnibusMembershipStore
import UnibusNode

/// A control-plane response: status, JSON (or Prometheus text) body.
public struct ControlResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    /// Further response headers (cookies, the page's security policy).
    public var headers: [(String, String)] = []
    /// For a server-sent event stream: the chunks to write as they come
    /// (`body` is then ignored and the connection closes when it ends).
    public var events: AsyncStream<[UInt8]>?

    static func json(_ status: Int, _ message: some Encodable) -> ControlResponse {
        ControlResponse(status: status, contentType: "application/json", body: ControlAPI.encode(message))
    }

    static func error(_ status: Int, _ message: String) -> ControlResponse { json(status, ControlAPI.ErrorBody(error: message)) }
}

/// The routes of the control plane, independent of HTTP transport.
///
/// Unsigned: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/node`.
/// Signed by an active user: `POST /v1/log` (the signed operations the
/// caller lacks, which clients verify and fold themselves), `GET
/// /v1/log/heads`, `GET /v1/users`, `GET /v1/rooms`, `GET /v1/rooms/{id}`,
/// `GET /v1/rooms/{id}/members`, `GET /v1/me/rooms` (the node's view, for
/// tools), `POST /v1/operations` with `{"bytes": base64, "signature":
/// base64}`, a membership operation signed by its actor (the membership
/// rules decide whether the actor may do it), `POST /v1/checkpoints` (the
/// same for the root's checkpoints, which may be up to 2 MiB), and the
/// key-share endpoints.
/// Bodies are the typed messages of `ControlAPI`.
public final class ControlPlane: Sendable {
    public let node: Node
    public let verifier: RequestVerifier
    /// The ordinary request body limit.
    public static let maximumBody = 64 * 1024
    /// `POST /v1/checkpoints` carries a checkpoint (the whole folded state).
    public static let maximumCheckpointBody = SignedOperation.maximumCheckpointSize * 4 / 3 + 4096
    /// Bytes all connections together may hold beyond `maximumBody`.
    public static let largeBodyBudget = 16 * 1024 * 1024
    private let largeBodyBytes = ManagedAtomic<Int>(0)

    /// The body limit for a request.
    public static func bodyLimit(method: String, path: String) -> Int {
        if method == "POST" && path == "/v1/checkpoints" { return maximumCheckpointBody }
        if method == "POST" && (path == "/api/agent/heartbeat" || path.hasPrefix("/cc/")) { return AgentHeartbeat.maximumBody }
        return maximumBody
    }

    func reserveLargeBody(_ bytes: Int) -> Bool {
        let after = largeBodyBytes.wrappingIncrementThenLoad(by: bytes, ordering: .relaxed)
        if after > Self.largeBodyBudget {
            largeBodyBytes.wrappingDecrement(by: bytes, ordering: .relaxed)
            return false
        }
        return true
    }

    func releaseLargeBody(_ bytes: Int) {
        largeBodyBytes.wrappingDecrement(by: bytes, ordering: .relaxed)
    }

    /// The Command Center's codes and sessions.
    public let commandCenter = CommandCenter()
    /// The workload login endpoint's limits per source address and role.
    public let loginLimiter: LoginRateLimiter
    /// Workload logins accepted and refused here.
    public let loginStatistics = LoginStatistics()
    /// Whether the plane is served over TLS (session cookies are then `Secure`).
    public let servedOverTLS: Bool

    /// The node's metrics in a swift-prometheus registry.
    public let nodeMetrics: NodeMetrics

    /// `metrics`: the registry to expose (unibusd passes the one it
    /// bootstrapped swift-metrics with, so every swift-metrics user in the
    /// process shows up on `/metrics` too); a fresh one by default.
    public init(node: Node, servedOverTLS: Bool = false, metrics: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
                loginLimiter: LoginRateLimiter = LoginRateLimiter()) {
        self.node = node
        self.loginLimiter = loginLimiter
        self.nodeMetrics = NodeMetrics(node: node, registry: metrics, logins: loginStatistics)
        self.verifier = RequestVerifier(nodeID: node.broker.serverID)
        self.servedOverTLS = servedOverTLS
    }

    /// `peer` is the caller's address (rate limits of the login endpoint).
    public func handle(method: String, path: String, header: (String) -> String?, body: [UInt8], peer: String? = nil) async -> ControlResponse {
        let route = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path
        switch (method, route) {
        case ("GET", "/healthz"):
            return .json(200, ControlAPI.Health(status: "ok"))
        case ("GET", "/readyz"):
            if let operations = node.operations, operations.currentStatus == .draining || operations.currentStatus == .stopping {
                return .json(503, ControlAPI.Readiness(ready: false, reason: "lame duck: the node is moving its clients away and will stop"))
            }
            if node.broker.port == nil { return .json(503, ControlAPI.Readiness(ready: false, reason: "the broker is not listening")) }
            if let problem = node.operations?.clockProblem { return .json(503, ControlAPI.Readiness(ready: false, reason: problem)) }
            if node.membership.snapshot.users.isEmpty {
                if node.broker.cluster != nil, node.membership.rootAdmin != nil {
                    return .json(503, ControlAPI.Readiness(ready: false, reason: "no users yet: waiting for the membership log from the cluster's routes"))
                }
                return .json(503, ControlAPI.Readiness(ready: false, reason: "no users: run unibusd init"))
            }
            return .json(200, ControlAPI.Readiness(ready: true))
        case ("GET", "/metrics"):
            return ControlResponse(status: 200, contentType: "text/plain; version=0.0.4", body: Array(metrics().utf8))
        case ("GET", "/v1/node"):
            let log = node.membership.membershipLog
            let membership = ControlAPI.MembershipInfo(
                operations: log.count, logDigest: log.digest, stateDigest: log.state.digest, refused: log.refused.count,
                root: log.pinnedRoot ?? "", currentRoot: log.state.root ?? "", heads: log.heads, checkpoint: log.base?.id,
                settings: ControlAPI.Settings(log.state.settings))
            let cluster = node.broker.cluster.map { cluster in
                ControlAPI.ClusterInfo(name: cluster.configuration.name, routePort: cluster.port ?? 0, routes: cluster.peers.map {
                    ControlAPI.RouteView(nodeID: $0.serverID, name: $0.name, clientURL: $0.clientURL, controlURL: $0.controlURL)
                })
            }
            return .json(200, ControlAPI.NodeInfo(nodeID: node.broker.serverID, version: UnibusVersion.current,
                                                  clientPort: node.broker.port ?? 0, membership: membership, cluster: cluster,
                                                  status: node.operations?.currentStatus.rawValue,
                                                  runtimeSettings: node.operations?.effectiveSettings,
                                                  killswitches: node.operations?.switches.engagedSwitches.map(\.rawValue)))
        case ("POST", "/api/agent/heartbeat"):
            return agentHeartbeat(path: path, header: header, body: body)
        case ("POST", "/v1/auth/jwt/login"):
            return await workloadLogin(path: path, header: header, body: body, peer: peer)
        default:
            break
        }
        if route == "/cc" || route.hasPrefix("/cc/") {
            var response = await commandCenterRoute(method: method, route: route, header: header, body: body)
            response.headers += CommandCenter.securityHeaders
            return response
        }
        guard route.hasPrefix("/v1/") else { return .error(404, "no such endpoint: \(method) \(route)") }
        // Everything else needs a signed request from an active user. The
        // query is part of what is signed (`path` is the whole request target).
        let request: VerifiedRequest
        switch verifier.verify(method: method, path: path, body: body, header: header) {
        case .failure(let error):
            node.broker.statistics.countControlRefusal()
            return .error(error.status, "\(error)")
        case .success(let verified): request = verified
        }
        let caller = request.caller
        let state = node.membership.snapshot
        guard let user = state.users[caller] else {
            node.broker.statistics.countControlRefusal()
            return .error(403, "\(RequestAuthError.unknownCaller(caller))")
        }
        guard user.status == .active else {
            node.broker.statistics.countControlRefusal()
            return .error(403, "\(RequestAuthError.revokedCaller(caller))")
        }
        guard state.isLive(caller, now: Int64(Date().timeIntervalSince1970)) || user.role == .agent else {
            node.broker.statistics.countControlRefusal()
            return .error(401, "\(caller)'s workload login expired; log in again (unibus login)")
        }
        guard user.role != .agent else {
            node.broker.statistics.countControlRefusal()
            return .error(403, "\(caller) is an agent key: it may only send VaultMesh heartbeats (POST /api/agent/heartbeat)")
        }
        // Only now, for a known active user, is the nonce remembered.
        if let error = verifier.claim(request) {
            node.broker.statistics.countControlRefusal()
            return .error(error.status, "\(error)")
        }

        let parts = route.split(separator: "/").map(String.init)   // ["v1", ...]
        switch (method, parts.count > 1 ? parts[1] : "", parts.count) {
        case ("GET", "users", 2):
            return .json(200, ControlAPI.UsersResponse(users: state.users.values.sorted { $0.handle < $1.handle }.map(ControlAPI.UserView.init)))
        case ("GET", "rooms", 2):
            return .json(200, ControlAPI.RoomsResponse(rooms: state.rooms.values.sorted { $0.id < $1.id }.map(ControlAPI.RoomView.init)))
        case ("GET", "me", 3) where parts[2] == "rooms":
            return .json(200, ControlAPI.RoomsResponse(rooms: state.rooms(of: caller).map(ControlAPI.RoomView.init)))
        case ("GET", "rooms", 3):
            guard let room = state.rooms[parts[2]] else { return .error(404, "no room \(parts[2])") }
            return .json(200, ControlAPI.RoomView(room))
        case ("GET", "rooms", 4) where parts[3] == "members":
            guard state.rooms[parts[2]] != nil else { return .error(404, "no room \(parts[2])") }
            let members = (state.members[parts[2]] ?? [:]).values.sorted { $0.user < $1.user }
            return .json(200, ControlAPI.MembersResponse(members: members.map {
                ControlAPI.MemberView(user: $0.user, role: $0.role.rawValue, joined: $0.joined, handle: state.users[$0.user]?.handle ?? "")
            }))
        case ("POST", "log", 2):
            guard let request = ControlAPI.decode(ControlAPI.LogRequest.self, from: body),
                  request.heads.count <= ControlAPI.LogRequest.maximumHeads,
                  request.heads.allSatisfy({ SignedOperation.isOperationID($0) }) else {
                return .error(400, "the body must be {\"heads\": [operation ids], \"limit\": n} with at most \(ControlAPI.LogRequest.maximumHeads) heads")
            }
            let limit = min(max(request.limit ?? ControlAPI.LogPage.maximumOperations, 1), ControlAPI.LogPage.maximumOperations)
            // Pages are bounded in bytes too, well under what clients accept (16 MiB).
            let page = node.membership.operations(after: request.heads, limit: limit, maxBytes: ControlAPI.LogPage.maximumBytes)
            return .json(200, ControlAPI.LogPage(operations: page.operations.map(ControlAPI.OperationDocument.init),
                                                 complete: page.complete, heads: node.membership.heads))
        case ("GET", "log", 3) where parts[2] == "heads":
            let log = node.membership.membershipLog
            return .json(200, ControlAPI.LogHeads(heads: log.heads, checkpoint: log.base?.id, count: log.count, digest: log.digest))
        case ("GET", "roles", 2):
            let now = Int64(Date().timeIntervalSince1970)
            var live: [String: Int] = [:]
            for workload in state.workloads.values where state.isLive(workload.key, now: now) { live[workload.role, default: 0] += 1 }
            return .json(200, ControlAPI.LoginRolesResponse(roles: state.loginRoles.values.sorted { $0.name < $1.name }, workloads: live))
        case ("GET", "fleet", 2):
            guard user.role == .admin else { return .error(403, "only admins may read the fleet") }
            guard let operations = node.operations else { return .error(503, "this node runs without node operations") }
            return .json(200, ControlAPI.FleetResponse(observer: operations.nodeID, beats: operations.signedBeats.map { Base64.encode($0) },
                                                       results: operations.signedResults.map { Base64.encode($0) },
                                                       agents: operations.agents.rows(nowMs: CommandCenter.nowMs()),
                                                       disagreeingSince: operations.disagreements, nowMs: CommandCenter.nowMs()))
        case ("POST", "cc", 3) where parts[2] == "codes":
            guard user.role == .admin else { return .error(403, "only admins may open the Command Center") }
            guard let code = commandCenter.issueCode(for: caller) else {
                return .error(503, "too many unused Command Center codes; wait a minute and retry")
            }
            return .json(200, ControlAPI.CommandCenterCode(code: code, expiresInSeconds: Int(CommandCenter.codeLifetimeMs / 1000), path: "/cc#code=\(code)"))
        case ("POST", "operations", 2):
            if let refusal = killswitched(.controlWrites) { return refusal }
            return await apply(body, checkpoint: false)
        case ("POST", "checkpoints", 2):
            if let refusal = killswitched(.controlWrites) { return refusal }
            return await apply(body, checkpoint: true)
        case ("POST", "rooms", 4) where parts[3] == "history":
            return history(room: parts[2], caller: caller, state: state, body: body)
        case ("POST", "rooms", 4) where parts[3] == "key-shares":
            if let refusal = killswitched(.keyShareUploads) ?? killswitched(.controlWrites) { return refusal }
            return storeKeyShares(room: parts[2], sender: caller, body: body)
        case ("GET", "key-shares", 2):
            let query = Self.query(path)
            let limit = query["limit"].flatMap { Int($0) }.map { min(max($0, 1), Self.keySharePageLimit) } ?? Self.keySharePageLimit
            let after = query["after"].flatMap { Int64($0) } ?? 0
            do {
                let page = try node.membership.pendingKeyShares(for: caller, after: after, limit: limit)
                return .json(200, ControlAPI.KeySharesPage(keyShares: page.shares.map(ControlAPI.KeyShareView.init), next: page.next.map { String($0) }))
            } catch {
                return storageFailure(error)
            }
        case ("POST", "key-shares", 3) where parts[2] == "ack":
            if let refusal = killswitched(.controlWrites) { return refusal }
            guard let request = ControlAPI.decode(ControlAPI.AckRequest.self, from: body) else {
                return .error(400, "the body must be {\"acks\": [{\"id\", \"signature\"}]}")
            }
            guard request.acks.count <= Self.keySharePageLimit else { return .error(400, "acknowledge at most \(Self.keySharePageLimit) shares at once") }
            var acks: [SignedAck] = []
            for ack in request.acks {
                guard let signature = try? Base64.decode(ack.signature) else { return .error(400, "an acknowledgement's signature must be base64") }
                acks.append(SignedAck(id: ack.id, signature: signature))
            }
            do {
                let count = try node.acknowledgeKeyShares(acks, by: caller)
                return .json(200, ControlAPI.AckResponse(acknowledged: count))
            } catch {
                return membershipFailure(error)
            }
        default:
            return .error(404, "no such endpoint: \(method) \(route)")
        }
    }

    /// A 503 naming the engaged killswitch, or nil.
    func killswitched(_ feature: Killswitch) -> ControlResponse? {
        guard let switches = node.operations?.switches, switches.isEngaged(feature) else { return nil }
        node.broker.statistics.countControlRefusal()
        let engaged = switches.isEngaged(.node) && !switches.engagedSwitches.contains(feature) ? "node" : feature.rawValue
        return .error(503, "killswitch \(engaged) is engaged on this node (\(feature.summary) are off): an admin lifts it with "
                      + "`unibus node kill --feature \(engaged) --lift`")
    }

    /// Applies a signed operation; checkpoints (which may be large) come
    /// through their own endpoint, which takes nothing else.
    private func apply(_ body: [UInt8], checkpoint: Bool) async -> ControlResponse {
        guard let document = ControlAPI.decode(ControlAPI.OperationDocument.self, from: body) else {
            return .error(400, "the body must be {\"bytes\": base64, \"signature\": base64}")
        }
        do {
            let operation = try document.verified()
            var isCheckpoint = false
            if case .checkpoint = operation.envelope.operation { isCheckpoint = true }
            guard isCheckpoint == checkpoint else {
                return .error(400, checkpoint ? "only checkpoints go to /v1/checkpoints" : "checkpoints go to /v1/checkpoints")
            }
            try await node.apply(operation, arrival: Date())
            return .json(200, ControlAPI.OperationAccepted(id: operation.id, kind: operation.envelope.operation.kind))
        } catch {
            return membershipFailure(error)
        }
    }

    /// The HTTP status for a refused membership request.
    private func membershipFailure(_ error: MembershipError) -> ControlResponse {
        let status: Int
        switch error {
        case .badSignature: status = 401
        case .unauthorized: status = 403
        case .notFound: status = 404
        case .alreadyRegistered, .conflict: status = 409
        case .invalid: status = 400
        case .unsupported: status = 422
        case .storage: return storageFailure(error)
        }
        return .error(status, "\(error)")
    }

    /// Stores a sender's sealed session keys for the room's members and tells
    /// each recipient on its key-delivery subject that a share is waiting.
    private func storeKeyShares(room: String, sender: String, body: [UInt8]) -> ControlResponse {
        guard let submission = ControlAPI.decode(ControlAPI.KeySharesSubmission.self, from: body),
              !submission.sessionID.isEmpty, submission.sessionID.utf8.count <= 64,
              (1...ControlAPI.KeySharesSubmission.maximumShares).contains(submission.shares.count),
              let sessionSignature = try? Base64.decode(submission.sessionSignature) else {
            return .error(400, "the body must be {\"session_id\", \"session_signature\", \"shares\": [{\"recipient\", \"sealed\", \"signature\"}]} "
                          + "with 1 to \(ControlAPI.KeySharesSubmission.maximumShares) shares")
        }
        var shares: [KeyShare] = []
        let created = OperationTime.now()
        for entry in submission.shares {
            guard let sealed = try? Base64.decode(entry.sealed), let signature = try? Base64.decode(entry.signature) else {
                return .error(400, "each share needs recipient, sealed (base64) and signature (base64)")
            }
            shares.append(KeyShare(id: KeyShare.identifier(room: room, sessionID: submission.sessionID, recipient: entry.recipient, sealed: sealed),
                                   room: room, sender: sender, recipient: entry.recipient, sessionID: submission.sessionID,
                                   sealed: sealed, signature: signature, created: created, sessionSignature: sessionSignature))
        }
        do {
            try node.storeKeyShares(shares)
        } catch {
            return membershipFailure(error)
        }
        return .json(200, ControlAPI.SharesStored(stored: shares.count))
    }
    /// A page of a persisted room's frames for one of its members.
    private func history(room: String, caller: String, state: MembershipState, body: [UInt8]) -> ControlResponse {
        guard let request = ControlAPI.decode(ControlAPI.HistoryRequest.self, from: body) else {
            return .error(400, "the body must be {\"order\": \"newest\"|\"oldest\", \"before\"?, \"after\"?, \"since\"?, \"limit\"?}")
        }
        guard let found = state.rooms[room] else { return .error(404, "no room \(room)") }
        guard found.archived == nil else { return .error(410, "room \(room) is archived: its history is gone") }
        guard let member = state.members[room]?[caller] else { return .error(403, "\(caller) is not a member of room \(room)") }
        guard found.policy.persist else { return .error(409, "room \(room) is not persisted: it has no history (an owner can change that with `unibus room policy --persist`)") }
        guard let frames = node.frames else { return .error(503, "this node keeps no frames (it runs without a data directory)") }
        // `joined`: nothing first stored before the caller joined. (Keys are
        // the real boundary: a newcomer gets sessions from its join on.)
        let now = UInt64(max(0, Date().timeIntervalSince1970 * 1000))
        let retained = now > UInt64(found.policy.retainAgeSeconds) * 1000 ? now - UInt64(found.policy.retainAgeSeconds) * 1000 : 0
        // Nothing older than retention is served, even before the next retention pass deletes it.
        let notBefore = max(retained, found.policy.history == .joined ? (OperationTime.millis(member.joined) ?? UInt64.max) : 0)
        let limit = min(max(request.limit ?? 100, 1), ControlAPI.HistoryRequest.maximumFrames)
        var since = request.since ?? 0
        if let within = request.within {
            since = max(since, now > within ? now - within : 0)
        }
        let order: FrameStore.Order = request.order == .newest
            ? .newestFirst(before: request.before) : .oldestFirst(after: request.after, since: since)
        guard (request.known?.count ?? 0) <= ControlAPI.HistoryRequest.maximumKnown else {
            return .error(400, "name at most \(ControlAPI.HistoryRequest.maximumKnown) known streams")
        }
        var known: [[UInt8]: UInt64] = [:]
        for entry in request.known ?? [] {
            guard let sender = try? Base64.decode(entry.sender), let stream = try? Base64.decode(entry.stream),
                  sender.count == 32, stream.count == 16 || stream.count == 32 else {
                return .error(400, "a known stream needs a base64 sender (32 bytes) and stream (16 or 32 bytes)")
            }
            known[sender + stream] = max(known[sender + stream] ?? 0, entry.below)
        }
        do {
            // Frames the caller names as known are left out; reading goes on
            // past them (up to 20 pages of rows) so one answer carries what is
            // missing. A page may stop short of `limit` at the byte bound, or
            // hold only known frames: only `next == nil` ends the history.
            var page: [FrameStore.Stored] = []
            var bytes = 0
            var next: Int64?
            var order = order
            for _ in 0..<(known.isEmpty ? 1 : 20) {
                var rows = try frames.page(room: room, order: order, notBefore: notBefore, limit: limit,
                                           maxBytes: ControlAPI.HistoryRequest.maximumBytes)
                next = rows.last?.sequence
                var ended = rows.isEmpty
                if let until = request.until, request.order == .oldest {
                    // Caught up with what this node holds now (a short page, not
                    // cut by bytes): the rest comes live; reading does not chase the head.
                    if rows.count < limit, rows.reduce(0, { $0 + $1.bytes.count }) < ControlAPI.HistoryRequest.maximumBytes / 2 {
                        next = nil
                        ended = true
                    }
                    // Frames stored past `until` are left out; reading stops two
                    // seconds past it, so frames a peer replicated late (an early
                    // first-stored time, a later place here) are still found.
                    if let stop = rows.firstIndex(where: { $0.firstStored > until &+ 2000 }) {
                        rows.removeSubrange(stop...)
                        next = nil
                        ended = true
                    }
                    rows.removeAll { $0.firstStored > until }
                }
                if !known.isEmpty {
                    rows.removeAll { stored in (known[stored.sender + stored.id.stream]).map { stored.id.index < $0 } ?? false }
                }
                page += rows
                bytes += rows.reduce(0) { $0 + $1.bytes.count }
                guard !ended, let last = next, page.count < limit, bytes < ControlAPI.HistoryRequest.maximumBytes,
                      case .oldestFirst = order else { break }
                order = .oldestFirst(after: last, since: since)
            }
            return .json(200, ControlAPI.HistoryPage(frames: page.map {
                ControlAPI.StoredFrameView(seq: $0.sequence, firstStored: $0.firstStored, frame: Base64.encode($0.bytes))
            }, next: next, node: node.broker.serverID, now: now))
        } catch {
            node.log("control plane: frame store error", ["error": "\(error)"])
            return .error(500, "the node could not read its frame store; the operator's log has the details")
        }
    }

    /// Most shares in one page of `GET /v1/key-shares` (and ids in one ack).
    public static let keySharePageLimit = 500

    /// A storage failure: logged in full for the operator, answered with no
    /// SQL or file paths (they help an attacker more than a caller).
    private func storageFailure(_ error: MembershipError) -> ControlResponse {
        node.log("control plane: storage error", ["error": "\(error)"])
        return .error(500, "the node could not read or write its store; the operator's log has the details")
    }

    /// The query parameters of a request target (`a=1&b=2`), last one wins.
    static func query(_ path: String) -> [String: String] {
        guard let mark = path.firstIndex(of: "?") else { return [:] }
        var result: [String: String] = [:]
        for pair in path[path.index(after: mark)...].split(separator: "&").prefix(16) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 { result[String(parts[0])] = String(parts[1]) }
        }
        return result
    }

    /// Prometheus text exposition of the node's metrics (see `NodeMetrics`).
    func metrics() -> String {
        nodeMetrics.exposition()
    }
}
