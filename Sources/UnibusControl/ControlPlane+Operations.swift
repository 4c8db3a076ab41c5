import Foundation
import UnibusControlClient
import UnibusCrypto
import UnibusFleet
import UnibusMembership
import UnibusNode

/// The control plane's operations routes: VaultMesh agent heartbeats and
/// the Command Center page.
extension ControlPlane {
    // MARK: VaultMesh agents

    /// `POST /api/agent/heartbeat`, the Node Agent Contract's endpoint: 200
    /// `{"status":"ok"}`, or 4xx/5xx `{"error": "…"}` naming the problem.
    /// By default only signed requests from registered agent keys (users
    /// with role `agent`) are taken; `--agent-heartbeats open` also takes
    /// the contract's unsigned V1 requests.
    func agentHeartbeat(path: String, header: (String) -> String?, body: [UInt8]) -> ControlResponse {
        guard let operations = node.operations else { return .error(404, "this node takes no agent heartbeats") }
        let registry = operations.agents
        if operations.switches.isEngaged(.agentHeartbeats) {
            registry.refused.wrappingIncrement(ordering: .relaxed)
            return .error(503, "killswitch agent_heartbeats is engaged on this node; retry on the next cycle")
        }
        guard registry.mode != .off else {
            registry.refused.wrappingIncrement(ordering: .relaxed)
            return .error(403, "this node takes no agent heartbeats (--agent-heartbeats off)")
        }
        guard let contentType = header("content-type"), contentType.lowercased().hasPrefix("application/json") else {
            registry.refused.wrappingIncrement(ordering: .relaxed)
            return .error(415, "Content-Type must be application/json")
        }
        var key: String?
        if header(RequestSignature.keyHeader) != nil || registry.mode == .signed {
            switch verifier.verify(method: "POST", path: path, body: body, header: header) {
            case .failure(let error):
                registry.refused.wrappingIncrement(ordering: .relaxed)
                let hint = registry.mode == .signed
                    ? " (this node takes heartbeats only from registered agent keys: `unibus user add --role agent`, then `unibus agent --identity FILE`)" : ""
                return .error(error.status, "\(error)\(hint)")
            case .success(let request):
                guard let user = node.membership.snapshot.users[request.caller], user.status == .active, user.role == .agent else {
                    registry.refused.wrappingIncrement(ordering: .relaxed)
                    return .error(403, "\(request.caller) is not an active agent key (an admin registers one with `unibus user add --role agent`)")
                }
                if let error = verifier.claim(request) {
                    registry.refused.wrappingIncrement(ordering: .relaxed)
                    return .error(error.status, "\(error)")
                }
                key = request.caller
            }
        }
        let heartbeat: AgentHeartbeat
        do {
            heartbeat = try AgentHeartbeat.parse(body)
        } catch {
            registry.refused.wrappingIncrement(ordering: .relaxed)
            return .error(400, "\(error)")
        }
        switch registry.record(heartbeat, key: key, nowMs: CommandCenter.nowMs()) {
        case .success:
            return ControlResponse(status: 200, contentType: "application/json", body: AgentHeartbeat.okBody)
        case .failure(let refusal):
            return .error(refusal.status, refusal.description)
        }
    }

    // MARK: Command Center

    /// What the page shows: the fleet and the latest command results.
    struct CommandCenterUpdate: Encodable {
        var view: FleetView
        var results: [UpdateResult]
    }

    /// The admin of a live session, if it is still an active admin.
    private func sessionAdmin(_ header: (String) -> String?) -> String? {
        guard let admin = commandCenter.admin(cookie: header("cookie")) else { return nil }
        guard let user = node.membership.snapshot.users[admin], user.role == .admin, user.status == .active else { return nil }
        return admin
    }

    private func update() -> [UInt8] {
        guard let operations = node.operations else { return Array("{}".utf8) }
        let results = operations.signedResults.suffix(20).compactMap { try? UpdateResult.open($0) }
        return SignedDocument.encode(CommandCenterUpdate(view: operations.view(), results: Array(results)))
    }

    func commandCenterRoute(method: String, route: String, header: (String) -> String?, body: [UInt8]) async -> ControlResponse {
        switch (method, route) {
        case ("GET", "/cc"), ("GET", "/cc/"):
            return ControlResponse(status: 200, contentType: "text/html; charset=utf-8", body: Array(CommandCenterAssets.html.utf8))
        case ("GET", "/cc/app.js"):
            return ControlResponse(status: 200, contentType: "text/javascript; charset=utf-8", body: Array(CommandCenterAssets.javascript.utf8))
        case ("GET", "/cc/app.css"):
            return ControlResponse(status: 200, contentType: "text/css; charset=utf-8", body: Array(CommandCenterAssets.css.utf8))
        case ("POST", "/cc/session"):
            guard let request = ControlAPI.decode(CodeRedemption.self, from: body) else {
                return .error(400, "the body must be {\"code\": \"…\"}")
            }
            guard let (token, admin) = commandCenter.redeem(request.code) else {
                node.broker.statistics.countControlRefusal()
                return .error(401, "the code is unknown, used or expired: run `unibus cc open` for a new one")
            }
            node.log("command center session opened", ["admin": admin])
            var response = ControlResponse.json(200, ControlAPI.Health(status: "ok"))
            response.headers.append(("set-cookie", CommandCenter.setCookie(token, secure: servedOverTLS)))
            return response
        case ("POST", "/cc/logout"):
            commandCenter.endSession(cookie: header("cookie"))
            var response = ControlResponse.json(200, ControlAPI.Health(status: "ok"))
            response.headers.append(("set-cookie", CommandCenter.clearCookie(secure: servedOverTLS)))
            return response
        case ("GET", "/cc/fleet"):
            guard sessionAdmin(header) != nil else { return .error(401, "sign in: run `unibus cc open` and open the URL it prints") }
            return ControlResponse(status: 200, contentType: "application/json", body: update())
        case ("GET", "/cc/events"):
            guard let admin = sessionAdmin(header) else { return .error(401, "sign in: run `unibus cc open` and open the URL it prints") }
            guard commandCenter.streams.wrappingIncrementThenLoad(ordering: .relaxed) <= CommandCenter.maximumStreams else {
                commandCenter.streams.wrappingDecrement(ordering: .relaxed)
                return .error(503, "too many Command Center pages are open on this node")
            }
            let cookie = header("cookie")
            let events = AsyncStream<[UInt8]> { continuation in
                let task = Task { [weak self] in
                    while !Task.isCancelled, let self {
                        // The session (and the admin) must still be valid at every tick.
                        guard self.commandCenter.admin(cookie: cookie) == admin,
                              let user = self.node.membership.snapshot.users[admin], user.role == .admin, user.status == .active else { break }
                        continuation.yield(Array("event: fleet\ndata: ".utf8) + self.update() + Array("\n\n".utf8))
                        try? await Task.sleep(for: .seconds(1))
                    }
                    continuation.finish()
                }
                continuation.onTermination = { [commandCenter] _ in
                    task.cancel()
                    commandCenter.streams.wrappingDecrement(ordering: .relaxed)
                }
            }
            var response = ControlResponse(status: 200, contentType: "text/event-stream", body: [])
            response.events = events
            return response
        default:
            return .error(404, "no such page: \(method) \(route)")
        }
    }
}

/// `POST /cc/session`'s body.
struct CodeRedemption: Codable {
    var code: String
}
