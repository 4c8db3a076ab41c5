import Foundation
import UnibusCrypto

/// A login role (issue 16): which identity provider's JWTs become which
/// bus identity. It will travel as an admin-signed membership operation, so
/// every node and client can re-verify a workload's login from the JWT
/// embedded in it; this type holds the role and the checks, which are pure
/// and take the time to check against as an argument (the operation's
/// signed time when folding, the clock at login).
public struct LoginRole: Codable, Equatable, Sendable {
    public var name: String
    /// The `iss` tokens must carry.
    public var issuer: String
    /// The issuer's public keys, pinned (rotating them is a new role operation).
    public var keys: [JWSPublicKey]
    public var algorithms: [JWSAlgorithm]
    /// At least one of these must be in the token's `aud`.
    public var boundAudiences: [String]
    /// The `sub` tokens must carry, when set.
    public var boundSubject: String?
    /// Claims that must match: an exact value, or a glob with `*` and `?`.
    public var boundClaims: [String: String]
    /// The claim whose (string) value becomes the workload's handle.
    public var userClaim: String
    /// Rooms the workload joins as a member.
    public var rooms: [String]
    /// The longest a login lasts (the JWT's `exp` may end it sooner).
    public var ttlSeconds: Int64
    /// Leeways at login, Vault's defaults.
    public var expirationLeewaySeconds: Int64 = 150
    public var notBeforeLeewaySeconds: Int64 = 150
    public var clockSkewLeewaySeconds: Int64 = 60
    /// Whether the token must name the workload's key (`cnf.jkt`, RFC 7800).
    public var requireKeyBinding: Bool
    /// Claims kept as the workload's metadata: claim name → metadata key.
    public var claimMappings: [String: String]

    enum CodingKeys: String, CodingKey {
        case name, issuer, keys, algorithms, rooms
        case boundAudiences = "bound_audiences", boundSubject = "bound_subject", boundClaims = "bound_claims", userClaim = "user_claim"
        case ttlSeconds = "ttl", expirationLeewaySeconds = "expiration_leeway", notBeforeLeewaySeconds = "not_before_leeway"
        case clockSkewLeewaySeconds = "clock_skew_leeway", requireKeyBinding = "require_key_binding", claimMappings = "claim_mappings"
    }

    public init(name: String, issuer: String, keys: [JWSPublicKey], algorithms: [JWSAlgorithm], boundAudiences: [String],
                boundSubject: String? = nil, boundClaims: [String: String] = [:], userClaim: String, rooms: [String] = [],
                ttlSeconds: Int64 = 3600, requireKeyBinding: Bool = false, claimMappings: [String: String] = [:]) {
        self.name = name
        self.issuer = issuer
        self.keys = keys
        self.algorithms = algorithms
        self.boundAudiences = boundAudiences
        self.boundSubject = boundSubject
        self.boundClaims = boundClaims
        self.userClaim = userClaim
        self.rooms = rooms
        self.ttlSeconds = ttlSeconds
        self.requireKeyBinding = requireKeyBinding
        self.claimMappings = claimMappings
    }

    /// The role's own shape: what an admin may sign. Each problem named.
    public func validate() throws(LoginError) {
        func text(_ value: String, _ what: String, max: Int = 256) throws(LoginError) {
            guard !value.isEmpty, value.utf8.count <= max, !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw .invalidRole("\(what) must be 1 to \(max) bytes without control characters")
            }
        }
        try text(name, "the name", max: 64)
        try text(issuer, "the issuer")
        try text(userClaim, "user_claim", max: 128)
        guard !keys.isEmpty, keys.count <= 16 else { throw .invalidRole("pin 1 to 16 issuer keys") }
        let kids = keys.compactMap(\.kid)
        guard Set(kids).count == kids.count else { throw .invalidRole("two pinned keys share a kid") }
        guard !algorithms.isEmpty else { throw .invalidRole("allow at least one algorithm") }
        for algorithm in algorithms where !keys.contains(where: { $0.accepts(algorithm) }) {
            throw .invalidRole("no pinned key can verify \(algorithm.rawValue)")
        }
        guard !boundAudiences.isEmpty, boundAudiences.count <= 16 else { throw .invalidRole("bind 1 to 16 audiences (a token for another service must not log in here)") }
        for audience in boundAudiences { try text(audience, "an audience") }
        if let boundSubject { try text(boundSubject, "bound_subject") }
        guard boundClaims.count <= 32, claimMappings.count <= 32, rooms.count <= 256 else { throw .invalidRole("too many bound claims, mappings or rooms") }
        for (claim, pattern) in boundClaims { try text(claim, "a bound claim's name", max: 128); try text(pattern, "a bound claim's value") }
        for (claim, key) in claimMappings { try text(claim, "a mapped claim", max: 128); try text(key, "a metadata key", max: 64) }
        guard (60...86_400 * 30).contains(ttlSeconds) else { throw .invalidRole("ttl must be 60 s to 30 days") }
        for leeway in [expirationLeewaySeconds, notBeforeLeewaySeconds, clockSkewLeewaySeconds] {
            guard (0...3600).contains(leeway) else { throw .invalidRole("leeways must be 0 to 3600 s") }
        }
    }

    /// Verifies `token` for this role at `now` (Unix seconds): signature by
    /// a pinned key with an allowed algorithm matching its type, then the
    /// issuer, audience, subject, bound claims, times with the leeways, a
    /// `jti`, the user claim, and (when the role requires it) the binding to
    /// `workloadKey` (the workload's Ed25519 signing key).
    public func verify(_ token: String, at now: Int64, workloadKey: [UInt8]?) throws(LoginError) -> VerifiedLogin {
        let jws: CompactJWS
        do {
            jws = try CompactJWS(token)
            _ = try jws.verify(with: keys, allowed: algorithms)
        } catch {
            throw .token(error)
        }
        guard let claims = try? JSONSerialization.jsonObject(with: Data(jws.payload)) as? [String: Any] else {
            throw .claim("the claims are not a JSON object")
        }
        guard let iss = claims["iss"] as? String, iss == issuer else { throw .claim("issuer not trusted") }
        let audiences: [String]
        switch claims["aud"] {
        case let single as String: audiences = [single]
        case let many as [Any]: audiences = many.compactMap { $0 as? String }
        default: audiences = []
        }
        guard audiences.contains(where: boundAudiences.contains) else { throw .claim("audience not allowed") }
        let subject = claims["sub"] as? String
        if let boundSubject, subject != boundSubject { throw .claim("subject not allowed") }
        for (name, pattern) in boundClaims.sorted(by: { $0.key < $1.key }) {
            let values: [String]
            switch claims[name] {
            case let single as String: values = [single]
            case let many as [Any]: values = many.compactMap { $0 as? String }
            default: values = []
            }
            guard values.contains(where: { Self.glob(pattern, matches: $0) }) else { throw .claim("claim \(name.prefix(64)) does not match the role") }
        }
        guard let exp = Self.seconds(claims["exp"]) else { throw .claim("the token has no numeric exp (expiry)") }
        guard exp > now - expirationLeewaySeconds else { throw .claim("expired") }
        if let value = claims["nbf"] {
            guard let nbf = Self.seconds(value) else { throw .claim("nbf is not a number") }
            guard nbf <= now + notBeforeLeewaySeconds else { throw .claim("not yet valid") }
        }
        if let value = claims["iat"] {
            guard let iat = Self.seconds(value) else { throw .claim("iat is not a number") }
            guard iat <= now + clockSkewLeewaySeconds else { throw .claim("issued in the future") }
        }
        guard let jti = claims["jti"] as? String, (1...256).contains(jti.utf8.count) else {
            throw .claim("the token has no jti (1 to 256 bytes): its one-time use cannot be enforced")
        }
        guard let handle = claims[userClaim] as? String else { throw .claim("missing or non-string user claim \(userClaim.prefix(64))") }
        guard !handle.isEmpty, handle.count <= 64, !handle.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw .claim("the user claim must be 1 to 64 characters without control characters")
        }
        if requireKeyBinding {
            guard let workloadKey, let confirmation = claims["cnf"] as? [String: Any], let jkt = confirmation["jkt"] as? String,
                  jkt == JWK.thumbprint(ed25519: workloadKey) else {
                throw .claim("the token is not bound to this key (cnf.jkt must be the RFC 7638 thumbprint of the workload's Ed25519 key)")
            }
        }
        var metadata: [String: String] = [:]
        for (claim, key) in claimMappings {
            if let value = claims[claim] as? String { metadata[key] = String(value.prefix(256)) }
        }
        let expires = min(exp, now + ttlSeconds)
        return VerifiedLogin(role: name, handle: handle, subject: subject, jti: jti, expiresAt: expires, metadata: metadata)
    }

    /// A NumericDate (seconds; fractions cut), within ±10^11 s.
    static func seconds(_ value: Any?) -> Int64? {
        guard let number = value as? NSNumber, !(value is Bool) else { return nil }
        let double = number.doubleValue
        guard double.isFinite, abs(double) < 1e11 else { return nil }
        return Int64(double)
    }

    /// `*` any run (also empty), `?` one character; everything else literal.
    static func glob(_ pattern: String, matches text: String) -> Bool {
        let p = Array(pattern), t = Array(text)
        var pi = 0, ti = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count && (p[pi] == "?" || p[pi] == t[ti]) {
                pi += 1; ti += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi; mark = ti; pi += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}

/// What a verified login grants: the handle, when it ends, the token's id
/// (used once), and the metadata the role keeps.
public struct VerifiedLogin: Equatable, Sendable, Codable {
    public var role: String
    public var handle: String
    public var subject: String?
    public var jti: String
    /// Unix seconds: the earlier of the token's `exp` and the role's ttl.
    public var expiresAt: Int64
    public var metadata: [String: String]
}

/// Why a role or a login was refused, naming the failing check.
public enum LoginError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidRole(String)
    case token(JWSError)
    case claim(String)

    public var description: String {
        switch self {
        case .invalidRole(let why): return "invalid login role: \(why)"
        case .token(let error): return error.description
        case .claim(let why): return why
        }
    }
}
