/// Known-answer and round-trip checks of the crypto stack as linked into
/// this binary (libsodium, libcrypto, the Megolm code), for `unibusd self-check`.
public enum CryptoSelfCheck {
    public struct Result: Sendable {
        public let name: String
        public let passed: Bool
        public let detail: String
    }

    public static func run() -> [Result] {
        var results: [Result] = []
        func check(_ name: String, _ body: () throws -> String) {
            do {
                results.append(Result(name: name, passed: true, detail: try body()))
            } catch {
                results.append(Result(name: name, passed: false, detail: "\(error)"))
            }
        }
        struct Failure: Error, CustomStringConvertible { let description: String }

        check("HMAC-SHA-256 (RFC 4231 case 2)") {
            let mac = Digest.hmacSHA256(key: Array("Jefe".utf8), data: Array("what do ya want for nothing?".utf8))
            guard Hex.encode(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" else {
                throw Failure(description: "wrong MAC \(Hex.encode(mac))")
            }
            return "ok"
        }
        check("HKDF-SHA-256 (RFC 5869 case 1)") {
            let okm = Digest.hkdfSHA256(salt: try Hex.decode("000102030405060708090a0b0c"),
                                        inputKeyMaterial: [UInt8](repeating: 0x0b, count: 22),
                                        info: try Hex.decode("f0f1f2f3f4f5f6f7f8f9"), length: 42)
            guard Hex.encode(okm) == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865" else {
                throw Failure(description: "wrong output \(Hex.encode(okm))")
            }
            return "ok"
        }
        check("Ed25519 (RFC 8032 test 1)") {
            let pair = Ed25519KeyPair(seed: try Hex.decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))!
            let signature = pair.sign([UInt8]())
            guard Hex.encode(pair.publicKey.bytes) == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                  Hex.encode(signature) == "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
                  pair.publicKey.verify(signature: signature, message: [UInt8]()) else {
                throw Failure(description: "signature mismatch")
            }
            return "ok"
        }
        check("sealed box round trip") {
            let recipient = X25519KeyPair()
            let box = SealedBox.seal(Array("unibus".utf8), to: recipient.publicKey)
            guard try SealedBox.open(box, with: recipient) == Array("unibus".utf8) else { throw Failure(description: "wrong plaintext") }
            return "ok"
        }
        check("Megolm round trip, out of order and far ahead") {
            let outbound = MegolmOutboundSession()
            var inbound = MegolmInboundSession(sessionKey: try MegolmSessionKey(base64: outbound.sessionKey.base64))
            let first = try outbound.encrypt(Array("first".utf8))
            let second = try outbound.encrypt(Array("second".utf8))
            guard try inbound.decrypt(try MegolmMessage(base64: second.base64)).plaintext == Array("second".utf8),
                  try inbound.decrypt(first).plaintext == Array("first".utf8) else {
                throw Failure(description: "wrong plaintext")
            }
            return "session \(outbound.sessionID)"
        }
        check("nkey round trip") {
            let identity = Identity()
            let (type, key) = try NKey.decodePublicKey(identity.userNKey, expecting: .user)
            guard type == .user, key == identity.signing.publicKey else { throw Failure(description: "mismatch") }
            return identity.userNKey
        }
        return results
    }
}
