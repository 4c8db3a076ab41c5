import Foundation
import Testing
import UnibusCrypto
@testable import UnibusMembership

@Suite("Login roles")
struct LoginRoleTests {
    let issuer = Ed25519KeyPair()
    let now: Int64 = 1_800_000_000

    var role: LoginRole {
        get throws {
            let key = try JWSPublicKey(ed25519: issuer.publicKey.bytes, kid: "k1")
            return LoginRole(name: "ci", issuer: "https://idp", keys: [key], algorithms: [.edDSA], boundAudiences: ["unibus"],
                             boundClaims: ["env": "ci-*"], userClaim: "worker", ttlSeconds: 300)
        }
    }

    func token(_ claims: [String: Any], header: [String: Any] = ["alg": "EdDSA", "kid": "k1"], signer: Ed25519KeyPair? = nil) throws -> String {
        let head = Base64.encode(try JSONSerialization.data(withJSONObject: header), alphabet: .url)
        let body = Base64.encode(try JSONSerialization.data(withJSONObject: claims), alphabet: .url)
        let signature = (signer ?? issuer).sign(Array("\(head).\(body)".utf8))
        return "\(head).\(body).\(Base64.encode(signature, alphabet: .url))"
    }

    func claims(_ changes: [String: Any?] = [:]) -> [String: Any] {
        var claims: [String: Any] = ["iss": "https://idp", "aud": "unibus", "worker": "w1", "env": "ci-7", "exp": now + 600, "jti": "j1"]
        for (key, value) in changes { claims[key] = value }
        return claims
    }

    @Test func aValidTokenGrantsTheHandleUntilTheEarlierEnd() throws {
        let login = try role.verify(try token(claims()), at: now, workloadKey: nil)
        #expect(login == VerifiedLogin(role: "ci", handle: "w1", subject: nil, jti: "j1", expiresAt: now + 300,
                                      tokenExpiresAt: now + 600 + 3600, metadata: [:]))
        #expect(try role.verify(try token(claims(["exp": now + 60])), at: now, workloadKey: nil).expiresAt == now + 60)
    }

    @Test func eachCheckNamesItself() throws {
        func refusal(_ token: String) throws -> String {
            let role = try self.role
            do { _ = try role.verify(token, at: now, workloadKey: nil); return "accepted" } catch { return error.description }
        }
        #expect(try refusal(try token(claims(), signer: Ed25519KeyPair())) == "signature does not verify with the pinned key")
        #expect(try refusal(try token(claims(["exp": now - 151]))) == "expired")
        #expect(try refusal(try token(claims(["exp": now - 149]))) == "accepted")
        #expect(try refusal(try token(claims(["nbf": now + 151]))) == "not yet valid")
        #expect(try refusal(try token(claims(["iat": now + 61]))) == "issued in the future")
        #expect(try refusal(try token(claims(["aud": ["a", "b"]]))) == "audience not allowed")
        #expect(try refusal(try token(claims(["env": "prod"]))) == "claim env does not match the role")
        #expect(try refusal(try token(claims(["worker": ["w1"]]))) == "missing or non-string user claim worker")
        #expect(try refusal(try token(claims(), header: ["alg": "EdDSA", "kid": "k2"])) .hasPrefix("unknown key id k2"))
        #expect(try refusal(try token(claims(), header: ["alg": "none"])) == "algorithm none is never accepted")
        #expect(try refusal(try token(claims(), header: ["alg": "EdDSA", "crit": ["exp"]])).contains("critical header"))
        #expect(try refusal("a.b") == "malformed token: a JWS has three dot-separated parts, this one has 2")
        #expect(try refusal(String(repeating: "a", count: 20_000)).hasPrefix("malformed token: longer than"))
    }

    @Test func hostileTimesAndRolesAreRefusedNotTrapped() throws {
        let role = try self.role
        for time in [Int64.min, -1, Int64.max] {
            #expect(throws: LoginError.self) { _ = try role.verify(try token(claims()), at: time, workloadKey: nil) }
        }
        #expect(throws: LoginError.self) { _ = try role.verify(try token(claims(["exp": 1e300])), at: now, workloadKey: nil) }
        // A role read from a log with an unbounded ttl is refused when decoded.
        var encoded = String(decoding: try JSONEncoder().encode(role), as: UTF8.self)
        encoded = encoded.replacingOccurrences(of: "\"ttl\":300", with: "\"ttl\":9223372036854775807")
        #expect(throws: DecodingError.self) { _ = try JSONDecoder().decode(LoginRole.self, from: Data(encoded.utf8)) }
        // JSON 0 and 1 are numbers, not booleans.
        #expect(try role.verify(try token(claims(["nbf": 0, "iat": 1])), at: now, workloadKey: nil).handle == "w1")
        // Unicode lookalikes are different bytes.
        var kelvin = role
        kelvin.boundClaims = ["env": "Kube-*"]
        #expect(throws: LoginError.self) { _ = try kelvin.verify(try token(claims(["env": "\u{212A}ube-1"])), at: now, workloadKey: nil) }
        #expect(throws: LoginError.self) { _ = try role.verify(try token(claims(["worker": "w\u{202E}1"])), at: now, workloadKey: nil) }
    }

    @Test func rolesAreCheckedBeforeAnAdminSignsThem() throws {
        var bad = try role
        bad.boundAudiences = []
        #expect(throws: LoginError.self) { try bad.validate() }
        bad = try role
        bad.algorithms = [.rs256]   // no RSA key pinned
        #expect(throws: LoginError.self) { try bad.validate() }
        bad = try role
        bad.ttlSeconds = 10
        #expect(throws: LoginError.self) { try bad.validate() }
        try role.validate()
    }

    @Test func globs() {
        #expect(LoginRole.glob("ci-*", matches: "ci-"))
        #expect(LoginRole.glob("ci-*", matches: "ci-build-7"))
        #expect(LoginRole.glob("a?c", matches: "abc"))
        #expect(!LoginRole.glob("a?c", matches: "ac"))
        #expect(LoginRole.glob("*a*b*", matches: "xxaxxbxx"))
        #expect(!LoginRole.glob("prod", matches: "production"))
        #expect(LoginRole.glob("*b", matches: "*xb"))
    }

    @Test func claimKeysAreScannedAsBytes() {
        #expect(LoginRole.claimKeysProblem(Array(#"{"aud":"a","x":{"aud":1},"l":[{"k":1},{"k":2}]}"#.utf8)) == nil)
        #expect(LoginRole.claimKeysProblem(Array(#"{"aud":"unibus","aud":"other"}"#.utf8))?.contains("twice") == true)
        #expect(LoginRole.claimKeysProblem(Array(#"{"cnf":{"jkt":"a","jkt":"b"}}"#.utf8))?.contains("twice") == true)
        #expect(LoginRole.claimKeysProblem(Array("{\"\u{212A}ind\":1}".utf8)) == "claim names must be ASCII without escapes")
        #expect(LoginRole.claimKeysProblem(Array(#"{"\u0061ud":1}"#.utf8)) == "claim names must be ASCII without escapes")
        // Strings that are values (with escapes, quotes, braces) are not keys.
        #expect(LoginRole.claimKeysProblem(Array(#"{"a":"x\"}{,\"a\":","b":"\u00e9"}"#.utf8)) == nil)
        // Any bytes: an answer, never a trap.
        for junk in ["", "{", "\"", "{\"", "}}}]]", "{\"a\\", "[{\"a\":1,\"a\""] { _ = LoginRole.claimKeysProblem(Array(junk.utf8)) }
    }

    @Test func aTokenWithARepeatedClaimIsRefused() throws {
        let token = try tokenText(#"{"iss":"https://idp","aud":"unibus","worker":"w1","env":"ci-7","exp":\#(now + 600),"jti":"j1","worker":"w2"}"#)
        #expect(throws: LoginError.claim("the claim worker appears twice")) { try role.verify(token, at: now, workloadKey: nil) }
    }

    /// Without a kid, a token is checked against the one pinned key of its
    /// algorithm's type; with two such keys (an issuer mid-rotation) it must
    /// name one. One signature check per token, whatever the role pins.
    @Test func aTokenWithoutAKidNeedsAnUnambiguousKey() throws {
        let second = Ed25519KeyPair()
        let payload = #"{"iss":"https://idp","aud":"unibus","worker":"w1","env":"ci-7","exp":\#(now + 600),"jti":"j1"}"#
        let one = try JWSPublicKey(ed25519: issuer.publicKey.bytes, kid: "k1"), two = try JWSPublicKey(ed25519: second.publicKey.bytes, kid: "k2")
        func role(_ keys: [JWSPublicKey]) -> LoginRole {
            LoginRole(name: "ci", issuer: "https://idp", keys: keys, algorithms: [.edDSA], boundAudiences: ["unibus"],
                      boundClaims: ["env": "ci-*"], userClaim: "worker", ttlSeconds: 300)
        }
        let kidless = try tokenText(payload, header: #"{"alg":"EdDSA"}"#)
        #expect(try role([one]).verify(kidless, at: now, workloadKey: nil).handle == "w1")
        #expect(throws: LoginError.token(.keyIDRequired("EdDSA"))) { try role([two, one]).verify(kidless, at: now, workloadKey: nil) }
        // Naming the key works with both pinned, and a token signed by the other key verifies only as that key.
        #expect(try role([two, one]).verify(try tokenText(payload, header: #"{"alg":"EdDSA","kid":"k1"}"#), at: now, workloadKey: nil).handle == "w1")
        #expect(throws: LoginError.token(.badSignature)) {
            try role([two, one]).verify(try tokenText(payload, header: #"{"alg":"EdDSA","kid":"k2"}"#), at: now, workloadKey: nil)
        }
        #expect(LoginError.token(.keyIDRequired("EdDSA")).description.contains("must name its key"))
        // A role whose keys of one type cannot be told apart is refused before an admin signs it.
        let bare = try JWSPublicKey(ed25519: issuer.publicKey.bytes), bareToo = try JWSPublicKey(ed25519: second.publicKey.bytes)
        #expect(throws: LoginError.invalidRole("several pinned keys can verify EdDSA: give each of them a kid (tokens name the key that signed them)")) {
            try role([bare, bareToo]).validate()
        }
        #expect(throws: LoginError.invalidRole("several pinned keys can verify EdDSA: give each of them a kid (tokens name the key that signed them)")) {
            try role([one, bareToo]).validate()
        }
        try role([one, two]).validate()
        try role([bare]).validate()
    }

    /// The header is scanned like the claims, and each of its parameters
    /// is read one way: a token signed by the issuer with a repeated `kid`
    /// or `alg` (which one a decoder keeps differs by platform) is refused.
    @Test func headerParametersHaveOneReading() throws {
        let payload = #"{"iss":"https://idp","aud":"unibus","worker":"w1","env":"ci-7","exp":\#(now + 600),"jti":"j1"}"#
        func refusal(_ header: String) throws -> String {
            let role = try self.role, token = try tokenText(payload, header: header)
            do { _ = try role.verify(token, at: now, workloadKey: nil); return "accepted" } catch { return error.description }
        }
        #expect(try refusal(#"{"alg":"EdDSA","kid":"k1"}"#) == "accepted")
        #expect(try refusal(#"{"alg":"EdDSA","kid":"k1","jku":"https://evil","x5u":"https://evil","jwk":{"kty":"OKP"}}"#) == "accepted")
        #expect(try refusal(#"{"alg":"EdDSA","kid":"k2","kid":"k1"}"#) == "malformed token: the header parameter kid appears twice")
        #expect(try refusal(#"{"alg":"none","alg":"EdDSA","kid":"k1"}"#) == "malformed token: the header parameter alg appears twice")
        #expect(try refusal(#"{"\u0061lg":"EdDSA","kid":"k1"}"#) == "malformed token: header parameter names must be ASCII without escapes")
        #expect(try refusal(#"{"alg":"EdDSA","kid":null}"#) == "malformed token: kid must be a string of 1 to 128 bytes")
        #expect(try refusal(#"{"alg":"EdDSA","kid":7}"#) == "malformed token: kid must be a string of 1 to 128 bytes")
        #expect(try refusal(#"{"alg":"EdDSA","kid":""}"#) == "malformed token: kid must be a string of 1 to 128 bytes")
        #expect(try refusal(#"{"alg":"EdDSA","kid":"k1","crit":null}"#).contains("critical header"))
        #expect(try refusal(#"{"alg":["EdDSA"],"kid":"k1"}"#) == "malformed token: the header names no alg")
        #expect(try refusal(#"["alg","EdDSA"]"#) == "malformed token: the JSON is not an object")
        #expect(try refusal(#""EdDSA""#) == "malformed token: the JSON is not an object")
    }

    /// Foundation's decoder reads UTF-16 and UTF-32 too, where a byte of a
    /// character (U+2200 is 22 00 in UTF-16LE) looks like a quote to a
    /// UTF-8 scan and hides the keys after it. Such JSON is refused before
    /// any decoder sees it, in the header and in the claims.
    @Test func jsonInAnotherEncodingIsRefused() throws {
        func utf16(_ text: String, bom: Bool) -> [UInt8] {
            (bom ? [0xFF, 0xFE] : []) + text.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        }
        func signed(header: [UInt8], payload: [UInt8]) -> String {
            let head = Base64.encode(header, alphabet: .url), body = Base64.encode(payload, alphabet: .url)
            return "\(head).\(body).\(Base64.encode(issuer.sign(Array("\(head).\(body)".utf8)), alphabet: .url))"
        }
        let role = try self.role
        let payload = #"{"iss":"https://idp","aud":"unibus","worker":"w1","env":"ci-7","exp":\#(now + 600),"jti":"j1"}"#
        let header = #"{"x":"\#u{2200}","alg":"EdDSA","kid":"k2","kid":"k1"}"#
        for bom in [false, true] {
            #expect(throws: LoginError.token(.malformed("the JSON is not UTF-8 (it holds a zero byte)"))) {
                try role.verify(signed(header: utf16(header, bom: bom), payload: Array(payload.utf8)), at: now, workloadKey: nil)
            }
            let claims = #"{"x":"\#u{2200}","iss":"https://idp","aud":"unibus","worker":"w2","env":"ci-7","exp":\#(now + 600),"jti":"j1","worker":"w1"}"#
            #expect(throws: LoginError.claim("the JSON is not UTF-8 (it holds a zero byte)")) {
                try role.verify(signed(header: Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8), payload: utf16(claims, bom: bom)), at: now, workloadKey: nil)
            }
        }
        // A UTF-8 byte order mark is not JSON either.
        #expect(throws: LoginError.claim("the JSON is not an object")) {
            try role.verify(signed(header: Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8), payload: [0xEF, 0xBB, 0xBF] + Array(payload.utf8)),
                            at: now, workloadKey: nil)
        }
    }

    func tokenText(_ payload: String, header: String = #"{"alg":"EdDSA","kid":"k1"}"#) throws -> String {
        let head = Base64.encode(Array(header.utf8), alphabet: .url)
        let body = Base64.encode(Array(payload.utf8), alphabet: .url)
        return "\(head).\(body).\(Base64.encode(issuer.sign(Array("\(head).\(body)".utf8)), alphabet: .url))"
    }
}
