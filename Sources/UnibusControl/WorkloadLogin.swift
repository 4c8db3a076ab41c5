import Atomics
import Foundation
import NIOConcurrencyHelpers
import UnibusControlClient
import UnibusCrypto
import UnibusMembership

/// Token buckets for the login endpoint, which keys that are not users yet
/// call: per source address and per role, so one host cannot spend a
/// role's logins (or the node's JWT verifications) for everyone.
/// Thread-safe; memory bounded (the fullest buckets are the ones forgotten).
public final class LoginRateLimiter: Sendable {
    struct Bucket {
        var tokens: Double
        var updated: Double
    }

    public let perAddressPerMinute: Double
    public let perRolePerMinute: Double
    private let state = NIOLockedValueBox<(addresses: [String: Bucket], roles: [String: Bucket])>(([:], [:]))
    static let maximumTracked = 10_000

    public init(perAddressPerMinute: Int = 30, perRolePerMinute: Int = 600) {
        self.perAddressPerMinute = Double(max(1, perAddressPerMinute))
        self.perRolePerMinute = Double(max(1, perRolePerMinute))
    }

    /// Takes one attempt from `address`'s bucket (IPv6 addresses count by
    /// their /64, which one host usually holds whole); returns the seconds
    /// to wait when it is empty (nothing is taken then). Charged before
    /// anything else is looked at.
    public func take(address: String, now: Double = Date().timeIntervalSince1970) -> Int? {
        let key = Self.addressKey(address)
        return state.withLockedValue { buckets in Self.take(key, from: &buckets.addresses, rate: perAddressPerMinute, now: now) }
    }

    /// Takes one login from `role`'s bucket. Charged only once the token's
    /// signature and claims verified, so strangers cannot spend a role's logins.
    public func take(role: String, now: Double = Date().timeIntervalSince1970) -> Int? {
        state.withLockedValue { buckets in Self.take(role, from: &buckets.roles, rate: perRolePerMinute, now: now) }
    }

    private static func take(_ key: String, from table: inout [String: Bucket], rate: Double, now: Double) -> Int? {
        var bucket = refilled(table[key], rate: rate, now: now)
        guard bucket.tokens >= 1 else { return max(1, Int(((1 - bucket.tokens) * 60 / rate).rounded(.up))) }
        bucket.tokens -= 1
        store(bucket, for: key, in: &table)
        return nil
    }

    /// An IPv4 address as is; an IPv6 address as its first 64 bits.
    static func addressKey(_ address: String) -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        guard address.contains(":"), inet_pton(AF_INET6, address, &bytes) == 1 else { return address }
        if bytes[0..<12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff][...] {   // IPv4-mapped: the IPv4 address
            return bytes[12..<16].map(String.init).joined(separator: ".")
        }
        return Hex.encode(Array(bytes[0..<8])) + "::/64"
    }

    private static func refilled(_ bucket: Bucket?, rate: Double, now: Double) -> Bucket {
        guard let bucket else { return Bucket(tokens: rate, updated: now) }
        let elapsed = max(0, now - bucket.updated)
        return Bucket(tokens: min(rate, bucket.tokens + elapsed * rate / 60), updated: now)
    }

    private static func store(_ bucket: Bucket, for key: String, in table: inout [String: Bucket]) {
        if table[key] == nil, table.count >= maximumTracked {
            // Forget the buckets that have refilled the most (idle callers):
            // an active flooder's empty bucket is kept.
            let idle = table.sorted { $0.value.updated < $1.value.updated }.prefix(maximumTracked / 10)
            for (key, _) in idle { table[key] = nil }
        }
        table[key] = bucket
    }
}

/// Counters of the login endpoint (exposed on /metrics).
public final class LoginStatistics: Sendable {
    public let accepted = ManagedAtomic<Int>(0)
    public let refused = ManagedAtomic<Int>(0)
    public init() {}
}

/// Why a workload login was refused: the status and the check that failed.
struct LoginRefusal: Error {
    let status: Int
    let message: String
}

extension ControlPlane {
    /// `POST /v1/auth/jwt/login` (see `ControlAPI.WorkloadLoginRequest`).
    /// The caller is a key that is not a user yet, so every step costs the
    /// caller before it costs the node more: rate limits first, then the
    /// request signature, then the token; the request's nonce is remembered
    /// only for a token that verified (an outsider cannot fill that memory).
    func workloadLogin(path: String, header: (String) -> String?, body: [UInt8], peer: String?) async -> ControlResponse {
        do {
            return try await attemptWorkloadLogin(path: path, header: header, body: body, peer: peer)
        } catch let refusal as LoginRefusal {
            node.broker.statistics.countControlRefusal()
            loginStatistics.refused.wrappingIncrement(ordering: .relaxed)
            return .error(refusal.status, refusal.message)
        } catch {
            node.broker.statistics.countControlRefusal()
            loginStatistics.refused.wrappingIncrement(ordering: .relaxed)
            return .error(400, "login refused: \(error)")
        }
    }

    private func attemptWorkloadLogin(path: String, header: (String) -> String?, body: [UInt8], peer: String?) async throws -> ControlResponse {
        if let refusal = killswitched(.controlWrites) { return refusal }
        guard let request = ControlAPI.decode(ControlAPI.WorkloadLoginRequest.self, from: body) else {
            throw LoginRefusal(status: 400, message: "the body must be {\"role\", \"jwt\", \"sign_pub\", \"kx_pub\"} (and \"operation\" to complete the login)")
        }
        guard !request.role.isEmpty, request.role.utf8.count <= 64 else { throw LoginRefusal(status: 400, message: "role must be 1 to 64 bytes") }
        if let wait = loginLimiter.take(address: peer ?? "unknown") {
            throw LoginRefusal(status: 429, message: "too many login attempts from this address; retry in \(wait) s")
        }
        let signed: VerifiedRequest
        switch verifier.verify(method: "POST", path: path, body: body, header: header) {
        case .failure(let error): throw LoginRefusal(status: error.status, message: "\(error)")
        case .success(let verified): signed = verified
        }
        guard signed.caller == request.signPub else {
            throw LoginRefusal(status: 400, message: "sign_pub must be the key that signed the request (the workload's new identity)")
        }
        guard let exchange = try? Base64.decode(request.kxPub), exchange.count == 32 else {
            throw LoginRefusal(status: 400, message: "kx_pub must be the workload's X25519 public key: 32 bytes of unpadded base64")
        }
        guard let (_, signingKey) = try? NKey.decodePublicKey(request.signPub, expecting: .user) else {
            throw LoginRefusal(status: 400, message: "sign_pub is not a user nkey")
        }
        let state = node.membership.snapshot
        guard let role = state.loginRoles[request.role] else {
            throw LoginRefusal(status: 401, message: "no login role \(JWSError.printable(request.role)) in this cluster's log")
        }
        let now = Int64(Date().timeIntervalSince1970)
        let login: VerifiedLogin
        do { login = try role.verify(request.jwt, at: now, workloadKey: signingKey.bytes) } catch {
            throw LoginRefusal(status: 401, message: "login refused: \(error)")
        }
        if state.usedTokens[MembershipState.tokenKey(issuer: role.issuer, jti: login.jti)] != nil {
            throw LoginRefusal(status: 401, message: "login refused: token id (jti) \(JWSError.printable(login.jti)) was already used (a replayed token)")
        }
        if let refusal = state.loginRefusal(key: request.signPub, role: role.name) {
            throw LoginRefusal(status: Self.loginStatus(refusal), message: "\(refusal)")
        }
        // Charged only for a login that can succeed: a replayed (used) token
        // from the log cannot spend the role's logins.
        if let wait = loginLimiter.take(role: role.name) {
            throw LoginRefusal(status: 429, message: "too many logins through role \(role.name) this minute; retry in \(wait) s")
        }
        if let error = verifier.claim(signed) { throw LoginRefusal(status: error.status, message: "\(error)") }

        guard let document = request.operation else {
            return .json(200, ControlAPI.WorkloadLoginChallenge(parents: node.membership.heads, now: now))
        }
        let operation: SignedOperation
        do { operation = try document.verified() } catch { throw LoginRefusal(status: 400, message: "\(error)") }
        guard operation.actor == request.signPub,
              case .loginWorkload(let roleName, let token, let exchangeKey) = operation.envelope.operation,
              roleName == request.role, token == request.jwt, exchangeKey == request.kxPub else {
            throw LoginRefusal(status: 400, message: "operation must be a workload login signed by sign_pub, for the same role, token and kx_pub")
        }
        let after: MembershipState
        do { after = try await node.apply(operation, arrival: Date()) } catch {
            throw LoginRefusal(status: Self.loginStatus(error), message: "\(error)")
        }
        guard let workload = after.workloads[request.signPub], let user = after.users[request.signPub] else {
            throw LoginRefusal(status: 409, message: "the login was stored but a concurrent change ended it; log in again")
        }
        loginStatistics.accepted.wrappingIncrement(ordering: .relaxed)
        node.log("workload logged in", ["key": user.key, "role": workload.role, "handle": user.handle, "expires": String(workload.expiresAt)])
        return .json(200, ControlAPI.WorkloadLoginAccepted(id: operation.id, key: user.key, handle: user.handle, role: workload.role,
                                                           expiresAt: workload.expiresAt, rooms: after.rooms(of: user.key).map(\.id)))
    }

    /// The login endpoint's status for a refusal by the membership rules.
    static func loginStatus(_ error: MembershipError) -> Int {
        switch error {
        case .unauthorized, .badSignature, .notFound: return 401
        case .conflict, .alreadyRegistered: return 409
        case .storage: return 503
        default: return 400
        }
    }
}
