import Dispatch
import Foundation
import UnibusBroker
import UnibusControl
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusNode

/// The workload login endpoint (`POST /v1/auth/jwt/login`) end to end,
/// without sockets: the request signed by a fixed workload key, a token
/// whose claims are the input (signed for real by the role's issuer, so the
/// claim checks and the fold see hostile JSON past the signature), or the
/// input as the whole token or the whole body (first byte chooses). When
/// the node answers with the log heads, the harness signs the login
/// operation and sends it too, so the fold's re-verification runs on the
/// same input. Every input ends in an answer with a status, never a trap.
private final class Fixture: @unchecked Sendable {
    let admin = Identity()
    let workload = Identity()
    let issuer = Ed25519KeyPair()
    let plane: ControlPlane

    init() {
        let directory = NSTemporaryDirectory() + "unibus-fuzz-login-\(getpid())"
        let store = try! MembershipStore(directory: directory)   // the harness's own setup, not input
        try? store.append(store.signed(.addUser(key: admin.userNKey, exchangeKey: Base64.encode(admin.keyExchange.publicKey.bytes),
                                                handle: "root", role: .admin), by: admin))
        try? store.append(store.signed(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: admin))
        let key = try! JWSPublicKey(ed25519: issuer.publicKey.bytes, kid: "k1")
        let role = LoginRole(name: "ci", issuer: "https://idp", keys: [key], algorithms: [.edDSA], boundAudiences: ["unibus"],
                             boundClaims: ["env": "ci-*"], userClaim: "worker", rooms: ["ops"], ttlSeconds: 300, claimMappings: ["env": "env"])
        try? store.append(store.signed(.setLoginRole(role: role), by: admin))
        var configuration = BrokerConfiguration()
        configuration.threads = 1
        configuration.authorizer = Node.authorizer(for: store)
        plane = ControlPlane(node: Node(broker: Broker(configuration: configuration), membership: store),
                             loginLimiter: LoginRateLimiter(perAddressPerMinute: 1 << 30, perRolePerMinute: 1 << 30))
    }

    func token(claims: [UInt8]) -> String {
        let head = Base64.encode(Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8), alphabet: .url)
        let body = Base64.encode(claims, alphabet: .url)
        return "\(head).\(body).\(Base64.encode(issuer.sign(Array("\(head).\(body)".utf8)), alphabet: .url))"
    }
}

nonisolated(unsafe) private let fixture = Fixture()

private final class Box: @unchecked Sendable { var response: ControlResponse? }

private func post(_ body: [UInt8]) -> ControlResponse {
    let path = ControlSession.loginPath
    var headers: [String: String] = [:]
    for (name, value) in RequestSignature.headers(method: "POST", path: path, body: body, nodeID: fixture.plane.node.broker.serverID,
                                                  identity: fixture.workload) {
        headers[name.lowercased()] = value
    }
    let done = DispatchSemaphore(value: 0)
    let box = Box()
    let plane = fixture.plane
    let captured = headers
    Task {
        box.response = await plane.handle(method: "POST", path: path, header: { captured[$0.lowercased()] }, body: body, peer: "127.0.0.1")
        done.signal()
    }
    done.wait()
    guard let response = box.response, (200...599).contains(response.status) else {
        fatalError("the control plane gave no answer, or an impossible status")
    }
    return response
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWorkloadLogin(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.first else { return 0 }
    let rest = Array(input.dropFirst())
    let exchangeKey = Base64.encode(fixture.workload.keyExchange.publicKey.bytes)
    if mode % 3 == 2 {
        _ = post(rest)   // the whole body, as an outsider sends it
        return 0
    }
    let token = mode % 3 == 0 ? fixture.token(claims: rest) : String(decoding: rest, as: UTF8.self)
    var request = ControlAPI.WorkloadLoginRequest(role: "ci", jwt: token, signPub: fixture.workload.userNKey, kxPub: exchangeKey)
    let challenge = post(ControlAPI.encode(request))
    guard challenge.status == 200, let heads = ControlAPI.decode(ControlAPI.WorkloadLoginChallenge.self, from: challenge.body) else { return 0 }
    let operation = SignedOperation.sign(.loginWorkload(role: "ci", token: token, exchangeKey: exchangeKey), by: fixture.workload,
                                         parents: heads.parents)
    request.operation = ControlAPI.OperationDocument(operation)
    let answer = post(ControlAPI.encode(request))
    if answer.status == 200 {
        guard fixture.plane.node.membership.snapshot.workloads[fixture.workload.userNKey] != nil else {
            fatalError("a login answered 200 but the log holds no workload")
        }
    }
    return 0
}
