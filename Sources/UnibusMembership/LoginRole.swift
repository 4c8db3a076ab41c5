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

    /// Decoding checks the role's shape: a role read from a log or a file is
    /// never used unchecked (an unbounded ttl would overflow time arithmetic).
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        issuer = try container.decode(String.self, forKey: .issuer)
        keys = try container.decode([JWSPublicKey].self, forKey: .keys)
        algorithms = try container.decode([JWSAlgorithm].self, forKey: .algorithms)
        boundAudiences = try container.decode([String].self, forKey: .boundAudiences)
        boundSubject = try container.decodeIfPresent(String.self, forKey: .boundSubject)
        boundClaims = try container.decodeIfPresent([String: String].self, forKey: .boundClaims) ?? [:]
        userClaim = try container.decode(String.self, forKey: .userClaim)
        rooms = try container.decodeIfPresent([String].self, forKey: .rooms) ?? []
        ttlSeconds = try container.decode(Int64.self, forKey: .ttlSeconds)
        expirationLeewaySeconds = try container.decodeIfPresent(Int64.self, forKey: .expirationLeewaySeconds) ?? 150
        notBeforeLeewaySeconds = try container.decodeIfPresent(Int64.self, forKey: .notBeforeLeewaySeconds) ?? 150
        clockSkewLeewaySeconds = try container.decodeIfPresent(Int64.self, forKey: .clockSkewLeewaySeconds) ?? 60
        requireKeyBinding = try container.decodeIfPresent(Bool.self, forKey: .requireKeyBinding) ?? false
        claimMappings = try container.decodeIfPresent([String: String].self, forKey: .claimMappings) ?? [:]
        do { try validate() } catch {
            throw DecodingError.dataCorrupted(DecodingError.Context(codingPath: decoder.codingPath, debugDescription: error.description))
        }
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
        guard Self.isRoleName(name) else { throw .invalidRole("the name must be 1 to 64 of [A-Za-z0-9._-]") }
        try text(issuer, "the issuer")
        try text(userClaim, "user_claim", max: 128)
        guard !keys.isEmpty, keys.count <= 16 else { throw .invalidRole("pin 1 to 16 issuer keys") }
        let kids = keys.compactMap(\.kid)
        guard Set(kids).count == kids.count else { throw .invalidRole("two pinned keys share a kid") }
        guard !algorithms.isEmpty else { throw .invalidRole("allow at least one algorithm") }
        for algorithm in algorithms where !keys.contains(where: { $0.accepts(algorithm) }) {
            throw .invalidRole("no pinned key can verify \(algorithm.rawValue)")
        }
        // A token is checked against one key: the one its kid names, or the
        // only one of its type. Two keys of one type (a rotation) need kids,
        // or no token could choose between them.
        for algorithm in algorithms {
            let candidates = keys.filter { $0.accepts(algorithm) }
            guard candidates.count < 2 || candidates.allSatisfy({ $0.kid != nil }) else {
                throw .invalidRole("several pinned keys can verify \(algorithm.rawValue): give each of them a kid (tokens name the key that signed them)")
            }
        }
        guard !boundAudiences.isEmpty, boundAudiences.count <= 16 else { throw .invalidRole("bind 1 to 16 audiences (a token for another service must not log in here)") }
        for audience in boundAudiences { try text(audience, "an audience") }
        if let boundSubject { try text(boundSubject, "bound_subject") }
        guard boundClaims.count <= 32, claimMappings.count <= 32, rooms.count <= 256 else { throw .invalidRole("too many bound claims, mappings or rooms") }
        // Names that are dictionary keys in signed JSON are printable ASCII:
        // every reader then sorts them (canonical bytes, digests) alike.
        func asciiName(_ value: String, _ what: String, max: Int) throws(LoginError) {
            guard (1...max).contains(value.utf8.count), value.utf8.allSatisfy({ (0x21...0x7e).contains($0) }) else {
                throw .invalidRole("\(what) must be 1 to \(max) bytes of printable ASCII")
            }
        }
        try asciiName(userClaim, "user_claim", max: 128)
        for (claim, pattern) in boundClaims { try asciiName(claim, "a bound claim's name", max: 128); try text(pattern, "a bound claim's value") }
        for (claim, key) in claimMappings { try asciiName(claim, "a mapped claim", max: 128); try asciiName(key, "a metadata key", max: 64) }
        // Two claims kept under one key would make the kept value depend on
        // iteration order: a fold that differs between readers.
        guard Set(claimMappings.values.map { Array($0.utf8) }).count == claimMappings.count else {
            throw .invalidRole("two claim mappings name the same metadata key")
        }
        guard (60...86_400 * 30).contains(ttlSeconds) else { throw .invalidRole("ttl must be 60 s to 30 days") }
        for leeway in [expirationLeewaySeconds, notBeforeLeewaySeconds, clockSkewLeewaySeconds] {
            guard (0...Self.maximumLeewaySeconds).contains(leeway) else { throw .invalidRole("leeways must be 0 to \(Self.maximumLeewaySeconds) s") }
        }
    }

    /// Verifies `token` for this role at `now` (Unix seconds): signature by
    /// a pinned key with an allowed algorithm matching its type, then the
    /// issuer, audience, subject, bound claims, times with the leeways, a
    /// `jti`, the user claim, and (when the role requires it) the binding to
    /// `workloadKey` (the workload's Ed25519 signing key).
    public func verify(_ token: String, at now: Int64, workloadKey: [UInt8]?) throws(LoginError) -> VerifiedLogin {
        // Every time below is within ±10^11 s and every leeway and ttl within
        // the role's bounds, so no sum can overflow.
        guard (0...Self.maximumTime).contains(now) else { throw .claim("the time to check against is out of range") }
        try validate()
        let jws: CompactJWS
        do {
            jws = try CompactJWS(token)
            _ = try jws.verify(with: keys, allowed: algorithms)
        } catch {
            throw .token(error)
        }
        // Before decoding: a repeated key, or one that only Unicode
        // equivalence makes equal to another, would be resolved by whatever
        // the JSON decoder and Swift's String equality do on each reader.
        if let problem = Self.claimKeysProblem(jws.payload) { throw .claim(problem) }
        guard case .object(let claims)? = try? JSONDecoder().decode(ClaimValue.self, from: Data(jws.payload)) else {
            throw .claim("the claims are not a JSON object")
        }
        // Strings are compared as bytes: Unicode-equivalent spellings (a
        // Kelvin sign for K) are different values, as for the issuer that signed them.
        guard let iss = claims["iss"]?.text, Self.same(iss, issuer) else { throw .claim("issuer not trusted") }
        guard let audiences = claims["aud"]?.texts, audiences.contains(where: { audience in boundAudiences.contains { Self.same($0, audience) } }) else {
            throw .claim("audience not allowed")
        }
        let subject = claims["sub"]?.text
        if let boundSubject, !(subject.map { Self.same($0, boundSubject) } ?? false) { throw .claim("subject not allowed") }
        for (name, pattern) in boundClaims.sorted(by: { $0.key < $1.key }) {
            let values = claims[name]?.texts ?? []
            guard values.contains(where: { Self.glob(pattern, matches: $0) }) else { throw .claim("claim \(JWSError.printable(name)) does not match the role") }
        }
        guard let exp = claims["exp"]?.seconds else { throw .claim("the token has no numeric exp (expiry)") }
        guard exp > now - expirationLeewaySeconds else { throw .claim("expired") }
        if let value = claims["nbf"] {
            guard let nbf = value.seconds else { throw .claim("nbf is not a number") }
            guard nbf <= now + notBeforeLeewaySeconds else { throw .claim("not yet valid") }
        }
        if let value = claims["iat"] {
            guard let iat = value.seconds else { throw .claim("iat is not a number") }
            guard iat <= now + clockSkewLeewaySeconds else { throw .claim("issued in the future") }
        }
        guard let jti = claims["jti"]?.text, (1...256).contains(jti.utf8.count) else {
            throw .claim("the token has no jti (1 to 256 bytes): its one-time use cannot be enforced")
        }
        guard let handle = claims[userClaim]?.text else { throw .claim("missing or non-string user claim \(JWSError.printable(userClaim))") }
        guard Self.isHandle(handle) else {
            throw .claim("the user claim must be 1 to 64 bytes of ASCII letters, digits and - _ . @ : / + =")
        }
        if requireKeyBinding {
            guard let workloadKey, case .object(let confirmation)? = claims["cnf"], let jkt = confirmation["jkt"]?.text,
                  Self.same(jkt, JWK.thumbprint(ed25519: workloadKey)) else {
                throw .claim("the token is not bound to this key (cnf.jkt must be the RFC 7638 thumbprint of the workload's Ed25519 key)")
            }
        }
        var metadata: [String: String] = [:]
        for (claim, key) in claimMappings.sorted(by: { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }) {
            // Kept only as printable ASCII of at most 256 bytes: metadata is shown to people.
            if let value = claims[claim]?.text, value.utf8.count <= 256, value.utf8.allSatisfy({ (0x20...0x7e).contains($0) }) { metadata[key] = value }
        }
        // A token accepted within the expiry leeway lasts to the end of it.
        let end = exp > now ? exp : exp + expirationLeewaySeconds
        // The token id is remembered until no role could accept the token,
        // whatever leeway (up to the largest allowed) any role gives it.
        return VerifiedLogin(role: name, handle: handle, subject: subject, jti: jti, expiresAt: min(end, now + ttlSeconds),
                             tokenExpiresAt: exp + Self.maximumLeewaySeconds, metadata: metadata)
    }

    static let maximumTime: Int64 = 100_000_000_000

    /// Why the claim names of a payload are not plain (see `JSONObjectKeys`).
    static func claimKeysProblem(_ json: [UInt8]) -> String? { JSONObjectKeys.problem(in: json, naming: "claim") }

    public static let maximumLeewaySeconds: Int64 = 3600

    /// Role names are ASCII (`[A-Za-z0-9._-]`, 1 to 64): compared, keyed
    /// and sorted alike by every reader, whatever its Unicode tables.
    public static func isRoleName(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count) && text.utf8.allSatisfy { byte in
            (0x30...0x39).contains(byte) || (0x41...0x5a).contains(byte) || (0x61...0x7a).contains(byte) || byte == 0x2e || byte == 0x2d || byte == 0x5f
        }
    }

    static func same(_ a: String, _ b: String) -> Bool { a.utf8.elementsEqual(b.utf8) }

    static func isHandle(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count) && text.utf8.allSatisfy { byte in
            (0x30...0x39).contains(byte) || (0x41...0x5a).contains(byte) || (0x61...0x7a).contains(byte) || Array("-_.@:/+=".utf8).contains(byte)
        }
    }

    /// `*` any run (also empty), `?` one character; everything else literal.
    static func glob(_ pattern: String, matches text: String) -> Bool {
        // On UTF-8 bytes (`?` is one byte): the same verdict whatever Unicode
        // version a node or client was built with.
        let p = Array(pattern.utf8), t = Array(text.utf8)
        let star = UInt8(ascii: "*"), one = UInt8(ascii: "?")
        var pi = 0, ti = 0, starAt = -1, mark = 0
        while ti < t.count {
            if pi < p.count && p[pi] == star {
                starAt = pi; mark = ti; pi += 1
            } else if pi < p.count && (p[pi] == one || p[pi] == t[ti]) {
                pi += 1; ti += 1
            } else if starAt >= 0 {
                pi = starAt + 1; mark += 1; ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == star { pi += 1 }
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
    /// Unix seconds after which no role accepts the token (its `exp` plus
    /// the largest expiry leeway a role may give): its `jti` is remembered until then.
    public var tokenExpiresAt: Int64
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

/// A claim's JSON value, with booleans and numbers kept apart (JSON `1` is
/// a number, `true` is not).
enum ClaimValue: Decodable {
    case null, boolean(Bool), number(Double), string(String), array([ClaimValue]), object([String: ClaimValue])

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null } else if let value = try? container.decode(Bool.self) { self = .boolean(value) } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) { self = .string(value) } else if let value = try? container.decode([ClaimValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: ClaimValue].self))
        }
    }

    var text: String? { if case .string(let value) = self { return value } else { return nil } }

    /// A string, or the strings of an array (other elements ignored).
    var texts: [String]? {
        switch self {
        case .string(let value): return [value]
        case .array(let values): return values.compactMap(\.text)
        default: return nil
        }
    }

    /// A NumericDate: a number within ±10^11 s (fractions cut).
    var seconds: Int64? {
        guard case .number(let value) = self, value.isFinite, abs(value) < Double(LoginRole.maximumTime) else { return nil }
        return Int64(value)
    }
}
