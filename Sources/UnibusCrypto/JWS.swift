import COpenSSL
import Foundation

/// A JWS signature algorithm Unibus verifies. `none` and the HMAC family
/// are absent on purpose: an unsigned token proves nothing, and an HMAC
/// secret would have to be shared with every node and client that
/// re-verifies a login (docs/security.md).
public enum JWSAlgorithm: String, Codable, CaseIterable, Sendable {
    case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512"
    case es256 = "ES256", es384 = "ES384"
    case edDSA = "EdDSA"

    var digest: String? {
        switch self {
        case .rs256, .es256: return "SHA256"
        case .rs384, .es384: return "SHA384"
        case .rs512: return "SHA512"
        case .edDSA: return nil
        }
    }
}

/// Why a token or a key was refused; the description names the failing
/// check in words a workload's operator can act on.
public enum JWSError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case algorithmNone
    case algorithmHMAC(String)
    case algorithmUnsupported(String)
    case algorithmNotAllowed(String)
    case algorithmNotAllowedForKey(String)
    case unknownKeyID(String)
    case noKeyForAlgorithm(String)
    case keyIDRequired(String)
    case criticalHeader
    case badSignature
    case badKey(String)

    public var description: String {
        switch self {
        case .malformed(let why): return "malformed token: \(why)"
        case .algorithmNone: return "algorithm none is never accepted"
        case .algorithmHMAC(let alg): return "algorithm \(Self.printable(alg)) is not accepted: an HMAC secret cannot be verified by other nodes and clients without sharing it"
        case .algorithmUnsupported(let alg): return "algorithm \(Self.printable(alg)) is not supported (RS256, RS384, RS512, ES256, ES384, EdDSA)"
        case .algorithmNotAllowed(let alg): return "algorithm not allowed: the role does not accept \(alg)"
        case .algorithmNotAllowedForKey(let alg): return "algorithm not allowed for this key: \(alg) does not match the pinned key's type"
        case .unknownKeyID(let kid): return "unknown key id \(Self.printable(kid)): the role pins no key with this kid"
        case .noKeyForAlgorithm(let alg): return "no pinned key verifies \(alg)"
        case .keyIDRequired(let alg): return "the token names no kid, and the role pins several keys for \(alg): the token must name its key"
        case .criticalHeader: return "the token names critical header parameters (crit) this verifier does not implement"
        case .badSignature: return "signature does not verify with the pinned key"
        case .badKey(let why): return "unusable key: \(why)"
        }
    }

    /// Text from a token for a message: printable ASCII only (a `kid` with a
    /// newline must not forge a log line), at most 64 bytes.
    public static func printable(_ text: String) -> String {
        String(decoding: text.utf8.prefix(64).map { (0x20...0x7e).contains($0) ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
    }
}

/// A public key an identity provider signs with, pinned as its
/// SubjectPublicKeyInfo (DER): RSA of at least 2048 bits, EC P-256 or
/// P-384, or Ed25519. PEM and JWK forms are converted once, when pinned.
public struct JWSPublicKey: Codable, Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case rsa(bits: Int)
        case ec(bits: Int)
        case ed25519
    }

    public let spki: [UInt8]
    /// The `kid` tokens name this key by (nil: matched by algorithm).
    public let kid: String?
    public let kind: Kind

    enum CodingKeys: String, CodingKey { case spki, kid }

    public init(spki: [UInt8], kid: String? = nil) throws(JWSError) {
        guard spki.count <= 4096 else { throw .badKey("longer than 4096 bytes") }
        if let kid { guard (1...128).contains(kid.utf8.count) else { throw .badKey("a kid is 1 to 128 bytes") } }
        var bits: Int32 = 0
        let kind = spki.withUnsafeBufferPointer { unibus_spki_kind($0.baseAddress, $0.count, &bits) }
        switch kind {
        case 1:
            guard bits >= 2048 else { throw .badKey("RSA keys need at least 2048 bits, this one has \(bits)") }
            self.kind = .rsa(bits: Int(bits))
        case 2:
            guard bits == 256 || bits == 384 else { throw .badKey("EC keys must be on P-256 or P-384") }
            self.kind = .ec(bits: Int(bits))
        case 3:
            self.kind = .ed25519
        case -2:
            throw .badKey("the key's parameters fail the public-key check (an RSA exponent of 1, a modulus or point that is not valid): anyone could forge with it")
        default:
            throw .badKey("not an RSA, EC or Ed25519 public key (SubjectPublicKeyInfo)")
        }
        self.spki = spki
        self.kid = kid
    }

    /// The first public key in a PEM text (a `PUBLIC KEY` block or a certificate).
    public init(pem: String, kid: String? = nil) throws(JWSError) {
        var out = [UInt8](repeating: 0, count: 4096)
        let length = pem.withCString { text in unibus_pem_public_key_spki(text, strlen(text), &out, out.count) }
        guard length > 0 else { throw .badKey("no PEM public key or certificate") }
        try self.init(spki: Array(out.prefix(Int(length))), kid: kid)
    }

    /// A JWK (RFC 7517): `kty` RSA (`n`, `e`), EC (`crv` P-256/P-384, `x`,
    /// `y`) or OKP (`crv` Ed25519, `x`). Its `kid` unless one is given.
    public init(jwk: JWK, kid: String? = nil) throws(JWSError) {
        func bytes(_ value: String?, _ name: String) throws(JWSError) -> [UInt8] {
            guard let value, let decoded = try? Base64.decode(value, alphabet: .url), !decoded.isEmpty else {
                throw .badKey("the JWK's \(name) is missing or not base64url")
            }
            return decoded
        }
        var out = [UInt8](repeating: 0, count: 4096)
        var length = -1
        switch (jwk.kty, jwk.crv) {
        case ("RSA", _):
            let n = try bytes(jwk.n, "n"), e = try bytes(jwk.e, "e")
            length = unibus_rsa_spki(n, n.count, e, e.count, &out, out.count)
        case ("EC", "P-256"?), ("EC", "P-384"?):
            let x = try bytes(jwk.x, "x"), y = try bytes(jwk.y, "y")
            length = unibus_ec_spki(jwk.crv == "P-384" ? 1 : 0, x, x.count, y, y.count, &out, out.count)
        case ("OKP", "Ed25519"?):
            let x = try bytes(jwk.x, "x")
            guard x.count == 32 else { throw .badKey("an Ed25519 JWK's x is 32 bytes") }
            out = Self.ed25519Prefix + x
            length = out.count
        default:
            throw .badKey("JWK kty \(jwk.kty.prefix(16)) / crv \((jwk.crv ?? "-").prefix(16)) is not supported (RSA, EC P-256/P-384, OKP Ed25519)")
        }
        guard length > 0 else { throw .badKey("the JWK does not describe a valid public key") }
        try self.init(spki: Array(out.prefix(length)), kid: kid ?? jwk.kid)
    }

    static let ed25519Prefix: [UInt8] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]

    /// A raw 32-byte Ed25519 public key.
    public init(ed25519 publicKey: [UInt8], kid: String? = nil) throws(JWSError) {
        guard publicKey.count == 32 else { throw .badKey("an Ed25519 public key is 32 bytes") }
        try self.init(spki: Self.ed25519Prefix + publicKey, kid: kid)
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let spki = try Base64.decode(try container.decode(String.self, forKey: .spki))
        let kid = try container.decodeIfPresent(String.self, forKey: .kid)
        do {
            try self.init(spki: spki, kid: kid)
        } catch {
            throw DecodingError.dataCorruptedError(forKey: .spki, in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(Base64.encode(spki), forKey: .spki)
        try container.encodeIfPresent(kid, forKey: .kid)
    }

    /// Whether `algorithm` is this key's kind (RS* on RSA, ES256 on P-256,
    /// ES384 on P-384, EdDSA on Ed25519): a token cannot pick another use.
    public func accepts(_ algorithm: JWSAlgorithm) -> Bool {
        switch (algorithm, kind) {
        case (.rs256, .rsa), (.rs384, .rsa), (.rs512, .rsa): return true
        case (.es256, .ec(256)), (.es384, .ec(384)): return true
        case (.edDSA, .ed25519): return true
        default: return false
        }
    }

    /// Whether `signature` over `input` verifies with this key under `algorithm`.
    public func verifies(_ signature: [UInt8], over input: [UInt8], algorithm: JWSAlgorithm) -> Bool {
        guard accepts(algorithm) else { return false }
        let ecdsa: Int32 = (algorithm == .es256 || algorithm == .es384) ? 1 : 0
        if algorithm == .es256 && signature.count != 64 { return false }
        if algorithm == .es384 && signature.count != 96 { return false }
        let result: Int32
        if let digest = algorithm.digest {
            result = digest.withCString { unibus_spki_verify(spki, spki.count, $0, ecdsa, input, input.count, signature, signature.count) }
        } else {
            result = unibus_spki_verify(spki, spki.count, nil, 0, input, input.count, signature, signature.count)
        }
        return result == 1
    }
}

/// The members of a JWK that name a public key.
public struct JWK: Codable, Equatable, Sendable {
    public var kty: String
    public var kid: String?
    public var crv: String?
    public var n: String?
    public var e: String?
    public var x: String?
    public var y: String?

    public init(kty: String, kid: String? = nil, crv: String? = nil, n: String? = nil, e: String? = nil, x: String? = nil, y: String? = nil) {
        self.kty = kty
        self.kid = kid
        self.crv = crv
        self.n = n
        self.e = e
        self.x = x
        self.y = y
    }

    /// RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key as
    /// an OKP JWK: what a token's `cnf.jkt` names to bind itself to a key.
    public static func thumbprint(ed25519 publicKey: [UInt8]) -> String {
        let canonical = "{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"\(Base64.encode(publicKey, alphabet: .url))\"}"
        return Base64.encode(Digest.sha256(Array(canonical.utf8)), alphabet: .url)
    }
}

/// A compact JWS (`header.payload.signature`), parsed but not yet trusted.
public struct CompactJWS: Sendable {
    public let algorithm: JWSAlgorithm
    public let keyID: String?
    public let payload: [UInt8]
    public let signingInput: [UInt8]
    public let signature: [UInt8]

    public static let maximumLength = 16 * 1024

    /// Parses `token`: three base64url parts, a JSON header naming a
    /// supported algorithm. `jku`, `x5u`, `x5c` and `jwk` headers are
    /// ignored (keys come from the role only, never fetched or embedded);
    /// `crit` is refused.
    public init(_ token: String) throws(JWSError) {
        guard token.utf8.count <= Self.maximumLength else { throw .malformed("longer than \(Self.maximumLength) bytes") }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed("a JWS has three dot-separated parts, this one has \(parts.count)") }
        guard let headerBytes = try? Base64.decode(parts[0], alphabet: .url),
              let payload = try? Base64.decode(parts[1], alphabet: .url),
              let signature = try? Base64.decode(parts[2], alphabet: .url) else {
            throw .malformed("a part is not unpadded base64url")
        }
        // A repeated `alg` or `kid` would be whichever one the decoder kept,
        // perhaps differently on another reader of the log: refused first.
        if let problem = JSONObjectKeys.problem(in: headerBytes, naming: "header parameter") { throw .malformed(problem) }
        guard let header = try? JSONDecoder().decode(Header.self, from: Data(headerBytes)) else {
            throw .malformed("the header is not a JSON object")
        }
        guard case .text(let alg) = header.alg else { throw .malformed("the header names no alg") }
        if alg.lowercased() == "none" { throw .algorithmNone }
        if alg.uppercased().hasPrefix("HS") { throw .algorithmHMAC(String(alg.prefix(16))) }
        guard let algorithm = JWSAlgorithm(rawValue: alg) else { throw .algorithmUnsupported(alg) }
        if header.crit != .absent { throw .criticalHeader }
        switch header.kid {
        case .absent:
            keyID = nil
        case .text(let text) where (1...128).contains(text.utf8.count):
            keyID = text
        default:
            throw .malformed("kid must be a string of 1 to 128 bytes")
        }
        self.algorithm = algorithm
        self.payload = payload
        self.signature = signature
        self.signingInput = Array(parts[0].utf8) + [UInt8(ascii: ".")] + Array(parts[1].utf8)
    }

    /// The header parameters read (the rest, `jku`, `x5u`, `x5c` and `jwk`
    /// included, are ignored): each absent, a string, or something else.
    private struct Header: Decodable {
        enum Parameter: Equatable {
            case absent, text(String), other
        }
        let alg: Parameter, kid: Parameter, crit: Parameter

        enum CodingKeys: String, CodingKey { case alg, kid, crit }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            func parameter(_ key: CodingKeys) -> Parameter {
                guard container.contains(key) else { return .absent }
                return (try? container.decode(String.self, forKey: key)).map(Parameter.text) ?? .other
            }
            (alg, kid, crit) = (parameter(.alg), parameter(.kid), parameter(.crit))
        }
    }

    /// Verifies against pinned keys: the one its `kid` names, or (without a
    /// kid) the only one whose type matches the algorithm. Returns the key
    /// used. Exactly one signature check per token: a token cannot make a
    /// node or client try every pinned key, and which key signed it is
    /// never a matter of trying order.
    public func verify(with keys: [JWSPublicKey], allowed: [JWSAlgorithm]) throws(JWSError) -> JWSPublicKey {
        guard allowed.contains(algorithm) else { throw .algorithmNotAllowed(algorithm.rawValue) }
        let key: JWSPublicKey
        if let keyID {
            guard let named = keys.first(where: { $0.kid == keyID }) else { throw .unknownKeyID(keyID) }
            guard named.accepts(algorithm) else { throw .algorithmNotAllowedForKey(algorithm.rawValue) }
            key = named
        } else {
            let candidates = keys.filter { $0.accepts(algorithm) }
            guard let only = candidates.first else { throw .noKeyForAlgorithm(algorithm.rawValue) }
            guard candidates.count == 1 else { throw .keyIDRequired(algorithm.rawValue) }
            key = only
        }
        guard key.verifies(signature, over: signingInput, algorithm: algorithm) else { throw .badSignature }
        return key
    }
}
