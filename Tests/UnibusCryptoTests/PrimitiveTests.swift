import Testing
@testable import UnibusCrypto

@Suite("Hashes, signatures, sealed boxes")
struct PrimitiveTests {
    @Test func selfCheckPasses() {
        for result in CryptoSelfCheck.run() {
            #expect(result.passed, "\(result.name): \(result.detail)")
        }
    }

    @Test func hmacWithLongKeyMatchesRFC4231Case6() throws {
        let mac = Digest.hmacSHA256(key: [UInt8](repeating: 0xAA, count: 131),
                                    data: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8))
        #expect(Hex.encode(mac) == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    @Test func sha256OfEmptyInput() {
        #expect(Hex.encode(Digest.sha256([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func hkdfWithoutSaltMatchesRFC5869Case3() {
        let okm = Digest.hkdfSHA256(salt: [], inputKeyMaterial: [UInt8](repeating: 0x0B, count: 22), info: [], length: 42)
        #expect(Hex.encode(okm) == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    }

    @Test func ed25519RejectsTamperedMessageSignatureAndKey() {
        let pair = Ed25519KeyPair()
        let message = Array("nonce-1234".utf8)
        var signature = pair.sign(message)
        #expect(pair.publicKey.verify(signature: signature, message: message))
        #expect(!pair.publicKey.verify(signature: signature, message: Array("nonce-1235".utf8)))
        #expect(!Ed25519KeyPair().publicKey.verify(signature: signature, message: message))
        #expect(!pair.publicKey.verify(signature: signature.dropLast(), message: message))
        signature[3] ^= 1
        #expect(!pair.publicKey.verify(signature: signature, message: message))
        #expect(Ed25519PublicKey(bytes: [1, 2, 3]) == nil)
        #expect(Ed25519KeyPair(seed: [1, 2, 3]) == nil)
    }

    @Test func sealedBoxOpensOnlyForItsRecipient() throws {
        let recipient = X25519KeyPair()
        for plaintext in [[UInt8](), Array("room key".utf8), [UInt8](repeating: 7, count: 4096)] {
            let box = SealedBox.seal(plaintext, to: recipient.publicKey)
            #expect(box.count == plaintext.count + SealedBox.overhead)
            #expect(try SealedBox.open(box, with: recipient) == plaintext)
            #expect(throws: SealedBoxError.authenticationFailed) { try SealedBox.open(box, with: X25519KeyPair()) }
            var tampered = box
            tampered[tampered.count - 1] ^= 0x80
            #expect(throws: SealedBoxError.authenticationFailed) { try SealedBox.open(tampered, with: recipient) }
        }
        #expect(throws: SealedBoxError.tooShort(10)) { try SealedBox.open([UInt8](repeating: 0, count: 10), with: recipient) }
    }

    @Test func x25519KeyPairFromSecretIsDeterministic() throws {
        let pair = X25519KeyPair()
        let again = try #require(X25519KeyPair(secret: pair.secretBytes))
        #expect(again.publicKey == pair.publicKey)
        #expect(X25519KeyPair(secret: [0]) == nil)
    }
}
