import Foundation
import UnibusCrypto
import UnibusMembership

extension ControlSession {
    /// Logs `identity` (the workload's own key, new or renewing) in through
    /// login role `role` with `jwt`: the node checks the token and names the
    /// log heads, then this signs the `loginWorkload` operation (embedding
    /// the token) with the identity and the node appends it. Every node and
    /// client re-verifies the token from that operation. Throws the node's
    /// refusal, which names the failing check (`expired`, `audience not
    /// allowed`, …), with its status (400, 401, 409, 429).
    public static func loginWorkload(url: String, caPath: String?, role: String, jwt: String, identity: Identity,
                                     clientCertificate: ClientCertificate? = nil) async throws -> ControlAPI.WorkloadLoginAccepted {
        let session = try await ControlSession.open(url: url, caPath: caPath, identity: identity, clientCertificate: clientCertificate)
        return try await session.loginWorkload(role: role, jwt: jwt)
    }

    /// `loginWorkload` through this session (its identity is the workload's).
    public func loginWorkload(role: String, jwt: String) async throws -> ControlAPI.WorkloadLoginAccepted {
        let token = jwt.trimmingCharacters(in: .whitespacesAndNewlines)
        let exchangeKey = Base64.encode(identity.keyExchange.publicKey.bytes)
        var request = ControlAPI.WorkloadLoginRequest(role: role, jwt: token, signPub: identity.userNKey, kxPub: exchangeKey)
        let challenge = try await call("POST", Self.loginPath, body: ControlAPI.encode(request), expecting: ControlAPI.WorkloadLoginChallenge.self)
        let operation = SignedOperation.sign(.loginWorkload(role: role, token: token, exchangeKey: exchangeKey), by: identity,
                                             parents: challenge.parents)
        request.operation = ControlAPI.OperationDocument(operation)
        return try await call("POST", Self.loginPath, body: ControlAPI.encode(request), expecting: ControlAPI.WorkloadLoginAccepted.self)
    }

    public static let loginPath = "/v1/auth/jwt/login"
}
