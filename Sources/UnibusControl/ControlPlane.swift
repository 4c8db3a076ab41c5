import Foundation
import UnibusBroker
import UnibusCrypto
import UnibusMembership
import UnibusNode

/// A control-plane response: status, JSON (or Prometheus text) body.
public struct ControlResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]

    static func json(_ status: Int, _ object: Any) -> ControlResponse {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return ControlResponse(status: status, contentType: "application/json", body: [UInt8](data))
    }

    static func error(_ status: Int, _ message: String) -> ControlResponse { json(status, ["error": message]) }
}

/// The routes of the control plane, independent of HTTP transport.
///
/// Unsigned: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/node`.
/// Signed by an active user: `GET /v1/users`, `GET /v1/rooms`,
/// `GET /v1/rooms/{id}`, `GET /v1/rooms/{id}/members`, `GET /v1/me/rooms`
/// (the caller's open rooms), and `POST /v1/operations` with
/// `{"bytes": base64, "signature": base64}`, a membership operation signed by
/// its actor (the membership rules decide whether the actor may do it).
public final class ControlPlane: Sendable {
    public let node: Node
    public let verifier: RequestVerifier
    public static let maximumBody = 64 * 1024

    public init(node: Node) {
        self.node = node
        self.verifier = RequestVerifier(nodeID: node.broker.serverID)
    }

    public func handle(method: String, path: String, header: (String) -> String?, body: [UInt8]) async -> ControlResponse {
        let route = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path
        switch (method, route) {
        case ("GET", "/healthz"):
            return .json(200, ["status": "ok"])
        case ("GET", "/readyz"):
            if node.broker.port == nil { return .json(503, ["ready": false, "reason": "the broker is not listening"]) }
            if node.membership.snapshot.users.isEmpty {
                if node.broker.cluster != nil, node.membership.rootAdmin != nil {
                    return .json(503, ["ready": false, "reason": "no users yet: waiting for the membership log from the cluster's routes"])
                }
                return .json(503, ["ready": false, "reason": "no users: run unibusd init"])
            }
            return .json(200, ["ready": true])
        case ("GET", "/metrics"):
            return ControlResponse(status: 200, contentType: "text/plain; version=0.0.4", body: Array(metrics().utf8))
        case ("GET", "/v1/node"):
            let state = node.membership.snapshot
            var body: [String: Any] = ["node_id": node.broker.serverID, "version": UnibusVersion.current,
                                       "client_port": node.broker.port ?? 0,
                                       "membership": ["operations": node.membership.operationCount, "log_digest": node.membership.logDigest,
                                                      "state_digest": state.digest, "refused": node.membership.refusedOperations.count,
                                                      "root": node.membership.rootAdmin ?? "",
                                                      "settings": ["allow_unencrypted_rooms": state.settings.allowUnencryptedRooms,
                                                                   "max_rooms_per_user": state.settings.maxRoomsPerUser]]]
            if let cluster = node.broker.cluster {
                body["cluster"] = ["name": cluster.configuration.name, "route_port": cluster.port ?? 0,
                                   "routes": cluster.peers.map { peer -> [String: Any] in
                                       var route: [String: Any] = ["node_id": peer.serverID, "name": peer.name]
                                       if let url = peer.clientURL { route["client_url"] = url }
                                       if let url = peer.controlURL { route["control_url"] = url }
                                       return route
                                   }]
            }
            return .json(200, body)
        default:
            break
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
        // Only now, for a known active user, is the nonce remembered.
        if let error = verifier.claim(request) {
            node.broker.statistics.countControlRefusal()
            return .error(error.status, "\(error)")
        }

        let parts = route.split(separator: "/").map(String.init)   // ["v1", ...]
        switch (method, parts.count > 1 ? parts[1] : "", parts.count) {
        case ("GET", "users", 2):
            return .json(200, ["users": state.users.values.sorted { $0.handle < $1.handle }.map(Self.userJSON)])
        case ("GET", "rooms", 2):
            return .json(200, ["rooms": state.rooms.values.sorted { $0.id < $1.id }.map(Self.roomJSON)])
        case ("GET", "me", 3) where parts[2] == "rooms":
            return .json(200, ["rooms": state.rooms(of: caller).sorted { $0.id < $1.id }.map(Self.roomJSON)])
        case ("GET", "rooms", 3):
            guard let room = state.rooms[parts[2]] else { return .error(404, "no room \(parts[2])") }
            return .json(200, Self.roomJSON(room))
        case ("GET", "rooms", 4) where parts[3] == "members":
            guard state.rooms[parts[2]] != nil else { return .error(404, "no room \(parts[2])") }
            let members = (state.members[parts[2]] ?? [:]).values.sorted { $0.user < $1.user }
            return .json(200, ["members": members.map { ["user": $0.user, "role": $0.role.rawValue, "joined": $0.joined,
                                                         "handle": state.users[$0.user]?.handle ?? ""] }])
        case ("POST", "operations", 2):
            return await apply(body)
        case ("POST", "rooms", 4) where parts[3] == "key-shares":
            return storeKeyShares(room: parts[2], sender: caller, body: body)
        case ("GET", "key-shares", 2):
            let query = Self.query(path)
            let limit = query["limit"].flatMap { Int($0) }.map { min(max($0, 1), Self.keySharePageLimit) } ?? Self.keySharePageLimit
            let after = query["after"].flatMap { Int64($0) } ?? 0
            do {
                let page = try node.membership.pendingKeyShares(for: caller, after: after, limit: limit)
                var json: [String: Any] = ["key_shares": page.shares.map { ["id": $0.id, "room": $0.room, "sender": $0.sender, "session_id": $0.sessionID,
                                                                           "sealed": Base64.encode($0.sealed), "signature": Base64.encode($0.signature),
                                                                           "created": $0.created] }]
                if let next = page.next { json["next"] = String(next) }
                return .json(200, json)
            } catch {
                return storageFailure(error)
            }
        case ("POST", "key-shares", 3) where parts[2] == "ack":
            guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any], let ids = object["ids"] as? [String] else {
                return .error(400, "the body must be {\"ids\": [...]}")
            }
            guard ids.count <= Self.keySharePageLimit else { return .error(400, "acknowledge at most \(Self.keySharePageLimit) ids at once") }
            do {
                let count = try node.acknowledgeKeyShares(ids, by: caller)
                return .json(200, ["acknowledged": count])
            } catch {
                return storageFailure(error)
            }
        default:
            return .error(404, "no such endpoint: \(method) \(route)")
        }
    }

    private func apply(_ body: [UInt8]) async -> ControlResponse {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let bytesText = object["bytes"] as? String, let signatureText = object["signature"] as? String,
              let bytes = try? Base64.decode(bytesText), let signature = try? Base64.decode(signatureText) else {
            return .error(400, "the body must be {\"bytes\": base64, \"signature\": base64}")
        }
        do {
            let operation = try SignedOperation(bytes: bytes, signature: signature)
            try await node.apply(operation)
            return .json(200, ["id": operation.id, "kind": operation.envelope.operation.kind])
        } catch {
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
    }

    /// Stores a sender's sealed session keys for the room's members and tells
    /// each recipient on its key-delivery subject that a share is waiting.
    private func storeKeyShares(room: String, sender: String, body: [UInt8]) -> ControlResponse {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let sessionID = object["session_id"] as? String, !sessionID.isEmpty, sessionID.utf8.count <= 64,
              let entries = object["shares"] as? [[String: Any]], !entries.isEmpty, entries.count <= 1000 else {
            return .error(400, "the body must be {\"session_id\": ..., \"shares\": [{\"recipient\", \"sealed\", \"signature\"}]} with 1 to 1000 shares")
        }
        var shares: [KeyShare] = []
        let created = ControlTime.now()
        for entry in entries {
            guard let recipient = entry["recipient"] as? String,
                  let sealed = (entry["sealed"] as? String).flatMap({ try? Base64.decode($0) }),
                  let signature = (entry["signature"] as? String).flatMap({ try? Base64.decode($0) }) else {
                return .error(400, "each share needs recipient, sealed (base64) and signature (base64)")
            }
            shares.append(KeyShare(id: KeyShare.identifier(room: room, sessionID: sessionID, recipient: recipient, sealed: sealed),
                                   room: room, sender: sender, recipient: recipient, sessionID: sessionID,
                                   sealed: sealed, signature: signature, created: created))
        }
        do {
            try node.storeKeyShares(shares)
        } catch {
            let status: Int
            switch error {
            case .badSignature: status = 401
            case .unauthorized: status = 403
            case .notFound: status = 404
            case .invalid: status = 400
            case .conflict, .alreadyRegistered: status = 409
            case .storage, .unsupported: return storageFailure(error)
            }
            return .error(status, "\(error)")
        }
        return .json(200, ["stored": shares.count])
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

    static func userJSON(_ user: User) -> [String: Any] {
        ["key": user.key, "handle": user.handle, "role": user.role.rawValue, "status": user.status.rawValue,
         "exchange_key": user.exchangeKey, "created": user.created, "updated": user.updated]
    }

    static func roomJSON(_ room: Room) -> [String: Any] {
        var json: [String: Any] = ["id": room.id, "subject": room.subject, "owner": room.owner, "created": room.created,
                                   "policy": ["encrypt": room.policy.encrypt, "sign": room.policy.sign, "compress": room.policy.compress,
                                              "rotate_after_messages": room.policy.rotateAfterMessages,
                                              "rotate_after_seconds": room.policy.rotateAfterSeconds,
                                              "frame_window_seconds": room.policy.frameWindowSeconds]]
        if let archived = room.archived { json["archived"] = archived }
        return json
    }

    /// Prometheus text exposition of the broker's and membership's counters.
    func metrics() -> String {
        let stats = node.broker.statistics
        let state = node.membership.snapshot
        let rows: [(String, String, Int)] = [
            ("unibus_connections", "gauge", stats.currentConnections.load(ordering: .relaxed)),
            ("unibus_connections_accepted_total", "counter", stats.connectionsAccepted.load(ordering: .relaxed)),
            ("unibus_messages_in_total", "counter", stats.messagesIn.load(ordering: .relaxed)),
            ("unibus_messages_out_total", "counter", stats.messagesOut.load(ordering: .relaxed)),
            ("unibus_bytes_in_total", "counter", stats.bytesIn.load(ordering: .relaxed)),
            ("unibus_bytes_out_total", "counter", stats.bytesOut.load(ordering: .relaxed)),
            ("unibus_slow_consumers_total", "counter", stats.slowConsumers.load(ordering: .relaxed)),
            ("unibus_stale_connections_total", "counter", stats.staleConnections.load(ordering: .relaxed)),
            ("unibus_permission_violations_total", "counter", stats.permissionViolations.load(ordering: .relaxed)),
            ("unibus_protocol_violations_total", "counter", stats.protocolViolations.load(ordering: .relaxed)),
            ("unibus_routes", "gauge", node.broker.cluster?.peers.count ?? 0),
            ("unibus_routes_opened_total", "counter", stats.routesOpened.load(ordering: .relaxed)),
            ("unibus_routed_messages_in_total", "counter", stats.routedIn.load(ordering: .relaxed)),
            ("unibus_routed_messages_out_total", "counter", stats.routedOut.load(ordering: .relaxed)),
            ("unibus_routes_refused_total", "counter", stats.routesRefused.load(ordering: .relaxed)),
            ("unibus_replication_frames_refused_total", "counter", node.refusedReplicationFrames.load(ordering: .relaxed)),
            ("unibus_membership_future_positions_refused_total", "counter", node.membership.refusedFuturePositions),
            ("unibus_control_refusals_total", "counter", stats.controlRefusals.load(ordering: .relaxed)),
            ("unibus_control_connections_cut_total", "counter", stats.controlConnectionsCut.load(ordering: .relaxed)),
            ("unibus_connection_objects", "gauge", stats.liveConnectionObjects.load(ordering: .relaxed)),
            ("unibus_membership_refused_operations", "gauge", node.membership.refusedOperations.count),
            ("unibus_membership_operations_total", "counter", node.membership.operationCount),
            ("unibus_users", "gauge", state.users.values.filter { $0.status == .active }.count),
            ("unibus_rooms", "gauge", state.rooms.values.filter { $0.archived == nil }.count),
        ]
        var text = rows.map { "# TYPE \($0.0) \($0.1)\n\($0.0) \($0.2)\n" }.joined()
        text += "# TYPE unibus_auth_failures_total counter\n"
        for reason in AuthFailureReason.allCases {
            let count = stats.authorizationFailuresByReason[reason]?.load(ordering: .relaxed) ?? 0
            text += "unibus_auth_failures_total{reason=\"\(reason.rawValue)\"} \(count)\n"
        }
        return text
    }
}
