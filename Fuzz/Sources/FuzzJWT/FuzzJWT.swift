import Foundation
import UnibusCrypto
import UnibusMembership

/// Arbitrary bytes as a workload's JWT against a role (an Ed25519 key
/// pinned), and as the forms an admin pins keys in (PEM, JWK JSON, SPKI):
/// every input ends in a login or a named refusal, never a trap; a key
/// that parses survives its Codable round trip.
private let issuer = Ed25519KeyPair()
private let role: LoginRole? = {
    guard let key = try? JWSPublicKey(ed25519: issuer.publicKey.bytes, kid: "k1") else { return nil }
    return LoginRole(name: "fuzz", issuer: "https://idp", keys: [key], algorithms: [.edDSA, .rs256, .es256], boundAudiences: ["unibus"],
                     boundClaims: ["env": "ci-*"], userClaim: "worker", ttlSeconds: 300, requireKeyBinding: true)
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJWT(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let text = String(decoding: bytes, as: UTF8.self)
    if let role {
        _ = try? role.verify(text, at: 1_800_000_000, workloadKey: issuer.publicKey.bytes)
        // The same claims signed for real, so the claim checks see hostile JSON past the signature.
        let head = Base64.encode(Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8), alphabet: .url)
        let body = Base64.encode(bytes, alphabet: .url)
        let signature = issuer.sign(Array("\(head).\(body)".utf8))
        _ = try? role.verify("\(head).\(body).\(Base64.encode(signature, alphabet: .url))", at: 1_800_000_000, workloadKey: nil)
    }
    for key in [try? JWSPublicKey(pem: text), try? JWSPublicKey(spki: bytes),
                (try? JSONDecoder().decode(JWK.self, from: Data(bytes))).flatMap { try? JWSPublicKey(jwk: $0) }] {
        guard let key else { continue }
        guard let encoded = try? JSONEncoder().encode(key), (try? JSONDecoder().decode(JWSPublicKey.self, from: encoded)) == key else {
            fatalError("a pinned key does not survive its Codable round trip")
        }
    }
    return 0
}
