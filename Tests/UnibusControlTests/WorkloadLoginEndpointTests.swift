import Foundation
import Testing
import UnibusBroker
@testable import UnibusControl
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusNode

/// `POST /v1/auth/jwt/login` on an in-process node, without sockets: the
/// two steps, the refusals a key that is not yet a user can cause (each
/// named, with its status), the nonce spent only for a verified token, and
/// the limits per address and per role.
@Suite("Workload login endpoint", .serialized)
struct WorkloadLoginEndpointTests {
    let admin = Identity()
    let issuer = Ed25519KeyPair()

    private func makePlane(limiter: LoginRateLimiter = LoginRateLimiter(perAddressPerMinute: 1000, perRolePerMinute: 1000)) throws -> ControlPlane {
        let store = try MembershipStore(directory: NSTemporaryDirectory() + "unibus-login-\(UUID().uuidString)")
        try store.append(store.signed(.addUser(key: admin.userNKey, exchangeKey: Base64.encode(admin.keyExchange.publicKey.bytes),
                                               handle: "root", role: .admin), by: admin))
        try store.append(store.signed(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: admin))
        let role = LoginRole(name: "ci", issuer: "https://idp", keys: [try JWSPublicKey(ed25519: issuer.publicKey.bytes, kid: "k1")],
                             algorithms: [.edDSA], boundAudiences: ["unibus"], userClaim: "worker", rooms: ["ops"], ttlSeconds: 300)
        try store.append(store.signed(.setLoginRole(role: role), by: admin))
        var configuration = BrokerConfiguration()
        configuration.authorizer = Node.authorizer(for: store)
        return ControlPlane(node: Node(broker: Broker(configuration: configuration), membership: store), loginLimiter: limiter)
    }

    private func token(jti: String = UUID().uuidString, exp: Int64? = nil, audience: String = "unibus") throws -> String {
        let now = Int64(Date().timeIntervalSince1970)
        let claims: [String: Any] = ["iss": "https://idp", "aud": audience, "worker": "w1", "exp": exp ?? now + 600, "jti": jti]
        let head = Base64.encode(Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8), alphabet: .url)
        let body = Base64.encode(try JSONSerialization.data(withJSONObject: claims), alphabet: .url)
        return "\(head).\(body).\(Base64.encode(issuer.sign(Array("\(head).\(body)".utf8)), alphabet: .url))"
    }

    private func post(_ plane: ControlPlane, _ request: ControlAPI.WorkloadLoginRequest, signer: Identity, peer: String = "10.0.0.1",
                      headers fixed: [(String, String)]? = nil) async -> ControlResponse {
        let body = ControlAPI.encode(request)
        let headers = fixed ?? RequestSignature.headers(method: "POST", path: ControlSession.loginPath, body: body,
                                                        nodeID: plane.node.broker.serverID, identity: signer)
        return await plane.handle(method: "POST", path: ControlSession.loginPath, header: { name in
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }, body: body, peer: peer)
    }

    private func text(_ response: ControlResponse) -> String { String(decoding: response.body, as: UTF8.self) }

    private func request(_ workload: Identity, token: String, role: String = "ci") -> ControlAPI.WorkloadLoginRequest {
        ControlAPI.WorkloadLoginRequest(role: role, jwt: token, signPub: workload.userNKey, kxPub: Base64.encode(workload.keyExchange.publicKey.bytes))
    }

    @Test func twoStepsMakeAWorkloadInTheRolesRooms() async throws {
        let plane = try makePlane()
        let workload = Identity()
        var login = request(workload, token: try token())
        let first = await post(plane, login, signer: workload)
        let challenge = try #require(ControlAPI.decode(ControlAPI.WorkloadLoginChallenge.self, from: first.body), "\(text(first))")
        #expect(first.status == 200 && challenge.parents == plane.node.membership.heads)
        let operation = SignedOperation.sign(.loginWorkload(role: "ci", token: login.jwt, exchangeKey: login.kxPub), by: workload,
                                             parents: challenge.parents)
        login.operation = ControlAPI.OperationDocument(operation)
        let second = await post(plane, login, signer: workload)
        let accepted = try #require(ControlAPI.decode(ControlAPI.WorkloadLoginAccepted.self, from: second.body), "\(text(second))")
        #expect(accepted.key == workload.userNKey && accepted.rooms == ["ops"] && accepted.handle == "w1")
        #expect(plane.node.membership.snapshot.isLive(workload.userNKey, now: Int64(Date().timeIntervalSince1970)))
        #expect(plane.nodeMetrics.exposition().contains("unibus_workload_logins_total 1"))
    }

    @Test func refusalsNameTheirCheck() async throws {
        let plane = try makePlane()
        let workload = Identity()
        let cases: [(ControlAPI.WorkloadLoginRequest, Identity, Int, String)] = [
            (request(workload, token: try token(exp: 1_000)), workload, 401, "expired"),
            (request(workload, token: try token(audience: "other")), workload, 401, "audience not allowed"),
            (request(workload, token: try token(), role: "nope"), workload, 401, "no login role"),
            (request(workload, token: "not.a.jwt"), workload, 401, "login refused"),
            // Signed by another key than the one it names.
            (request(workload, token: try token()), Identity(), 400, "sign_pub must be the key that signed"),
            // The admin's key is a user already.
            (request(admin, token: try token()), admin, 409, "registered admin key"),
        ]
        for (login, signer, status, reason) in cases {
            let response = await post(plane, login, signer: signer)
            #expect(response.status == status && text(response).contains(reason), "\(reason): \(response.status) \(text(response))")
        }
        // An operation that is not this login (another token than the request's).
        var login = request(workload, token: try token())
        let other = SignedOperation.sign(.loginWorkload(role: "ci", token: try token(), exchangeKey: login.kxPub), by: workload,
                                         parents: plane.node.membership.heads)
        login.operation = ControlAPI.OperationDocument(other)
        let response = await post(plane, login, signer: workload)
        #expect(response.status == 400 && text(response).contains("same role, token and kx_pub"), "\(text(response))")
        #expect(plane.node.membership.snapshot.workloads.isEmpty)
    }

    @Test func aNonceIsSpentOnlyForAVerifiedTokenAndNeverTwice() async throws {
        let plane = try makePlane()
        let workload = Identity()
        let before = plane.verifier.rememberedNonces
        for _ in 0..<20 { _ = await post(plane, request(Identity(), token: try token(audience: "x")), signer: workload) }
        #expect(plane.verifier.rememberedNonces == before)
        let login = request(workload, token: try token())
        let body = ControlAPI.encode(login)
        let headers = RequestSignature.headers(method: "POST", path: ControlSession.loginPath, body: body, nodeID: plane.node.broker.serverID,
                                               identity: workload)
        #expect(await post(plane, login, signer: workload, headers: headers).status == 200)
        let replay = await post(plane, login, signer: workload, headers: headers)
        #expect(replay.status == 401 && text(replay).contains("nonce"), "\(text(replay))")
    }

    @Test func limitsPerAddressAndPerRole() async throws {
        let plane = try makePlane(limiter: LoginRateLimiter(perAddressPerMinute: 3, perRolePerMinute: 4))
        var statuses: [Int] = []
        for _ in 0..<4 { statuses.append(await post(plane, request(Identity(), token: try token()), signer: Identity(), peer: "10.0.0.1").status) }
        #expect(statuses == [400, 400, 400, 429])
        // Junk from many addresses does not spend the role's logins: only verified tokens do.
        for index in 0..<20 { _ = await post(plane, request(Identity(), token: "junk"), signer: Identity(), peer: "10.1.0.\(index)") }
        statuses = []
        for index in 0..<5 {
            let workload = Identity()
            statuses.append(await post(plane, request(workload, token: try token()), signer: workload, peer: "10.2.0.\(index)").status)
        }
        #expect(statuses == [200, 200, 200, 200, 429])
        // An IPv6 host's /64 is one address.
        statuses = []
        for index in 0..<4 { statuses.append(await post(plane, request(Identity(), token: "junk"), signer: Identity(), peer: "2001:db8:1:2::\(index + 1)").status) }
        #expect(statuses == [400, 400, 400, 429])
    }

    @Test func limiterRefillsAndForgetsIdleAddresses() {
        let limiter = LoginRateLimiter(perAddressPerMinute: 2, perRolePerMinute: 1_000_000)
        #expect(limiter.take(address: "a", now: 0) == nil)
        #expect(limiter.take(address: "a", now: 0) == nil)
        #expect(limiter.take(address: "a", now: 0) == 30)
        #expect(limiter.take(address: "a", now: 30) == nil)
        for index in 0..<20_000 { _ = limiter.take(address: "h\(index)", now: 60 + Double(index) / 1000) }
        #expect(limiter.take(address: "a", now: 100) == nil)
        #expect(LoginRateLimiter.addressKey("::ffff:10.1.2.3") == "10.1.2.3")
        #expect(LoginRateLimiter.addressKey("2001:db8::1") == LoginRateLimiter.addressKey("2001:db8::ffff:1"))
    }
}
