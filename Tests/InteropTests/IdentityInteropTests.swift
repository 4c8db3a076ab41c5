import Foundation
import Testing
import UnibusCrypto

/// nkeys against the `nkeys` package, sealed boxes against PyNaCl.
@Suite("nkeys and sealed boxes against nkeys/PyNaCl")
struct IdentityInteropTests {
    @Test func unibusIdentityIsTheSameNKeyInPythonAndSignaturesCrossVerify() throws {
        let identity = Identity()
        let nonce = "yZ2gUnWzy3ZvSg8"
        let ourSignature = identity.sign(Array(nonce.utf8))
        let reply = try Peer.python(["op": "nkey", "seed": identity.userSeedNKey, "nonce": nonce,
                                     "verify_signature": Base64.encode(ourSignature)])
        #expect(reply["public_key"] as? String == identity.userNKey)
        #expect(reply["verified"] as? Bool == true)
        let theirSignature = try Base64.decode(try #require(reply["signature"] as? String))
        let (_, key) = try NKey.decodePublicKey(identity.userNKey, expecting: .user)
        #expect(key.verify(signature: theirSignature, message: Array(nonce.utf8)))
        #expect(!key.verify(signature: theirSignature, message: Array("another nonce".utf8)))
        // Ed25519 is deterministic: both sides produce the same signature.
        #expect(theirSignature == ourSignature)
    }

    @Test func pythonGeneratedSeedsDecodeToTheSameKey() throws {
        for _ in 0..<3 {
            let generated = try Peer.python(["op": "nkey_generate"])
            let (type, seed) = try NKey.decodeSeed(try #require(generated["seed"] as? String))
            #expect(type == .user)
            let pair = try #require(Ed25519KeyPair(seed: seed))
            #expect(NKey.encodePublicKey(pair.publicKey, type: .user) == generated["public_key"] as? String)
            #expect(NKey.encodeSeed(seed, type: .user) == generated["seed"] as? String)
        }
    }

    @Test func sealedBoxesOpenBothWays() throws {
        let ours = X25519KeyPair()
        let theirs = X25519KeyPair() // PyNaCl is handed this secret to open our box
        let plaintext = Array("room key share".utf8)
        let reply = try Peer.python(["op": "sealed_box",
                                     "open": Base64.encode(SealedBox.seal(plaintext, to: theirs.publicKey)),
                                     "secret": Base64.encode(theirs.secretBytes),
                                     "seal_to": Base64.encode(ours.publicKey.bytes),
                                     "plaintext": Base64.encode(plaintext)])
        #expect(reply["opened"] as? String == Base64.encode(plaintext))
        let sealed = try Base64.decode(try #require(reply["sealed"] as? String))
        #expect(try SealedBox.open(sealed, with: ours) == plaintext)
        #expect(throws: SealedBoxError.authenticationFailed) { try SealedBox.open(sealed, with: theirs) }
    }
}
