import Testing
@testable import UnibusCrypto

@Suite("Base64, hex, base32, nkeys")
struct EncodingTests {
    @Test func base64RoundTripsEveryLength() throws {
        for length in 0..<70 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            #expect(try Base64.decode(Base64.encode(bytes)) == bytes)
            #expect(try Base64.decode(Base64.encode(bytes, alphabet: .url), alphabet: .url) == bytes)
        }
        #expect(Base64.encode(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(Base64.encode(Array("fooba".utf8)) == "Zm9vYmE")
        #expect(Base64.encode([0xFB, 0xFF], alphabet: .url) == "-_8")
    }

    @Test(arguments: ["Zm9vYmE=", "Zm9vYmF", "Zm9vYmE ", " Zm9vYmE", "Zm9v\nYmE", "Z", "Zm9vY*E", "-_8"])
    func base64RejectsNonCanonicalText(_ text: String) {
        #expect(throws: EncodingError.invalidBase64) { try Base64.decode(text) }
    }

    @Test func hexRoundTripAndErrors() throws {
        #expect(try Hex.decode("00ff10Ab") == [0x00, 0xFF, 0x10, 0xAB])
        #expect(Hex.encode([0x00, 0xFF, 0x10, 0xAB]) == "00ff10ab")
        #expect(throws: EncodingError.invalidHex) { try Hex.decode("abc") }
        #expect(throws: EncodingError.invalidHex) { try Hex.decode("zz") }
    }

    @Test func crc16MatchesXmodemCheckValue() {
        #expect(CRC16.xmodem(Array("123456789".utf8)) == 0x31C3)
    }

    /// The seed/public pair from the NATS documentation, as the nkeys library derives it.
    @Test func nkeyKnownAnswer() throws {
        let seedText = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
        let (type, seed) = try NKey.decodeSeed(seedText)
        #expect(type == .user)
        let pair = try #require(Ed25519KeyPair(seed: seed))
        #expect(NKey.encodePublicKey(pair.publicKey, type: .user) == "UCK5N7N66OBOINFXAYC2ACJQYFSOD4VYNU6APEJTAVFZB2SVHLKGEW7L")
        #expect(NKey.encodeSeed(seed, type: .user) == seedText)
    }

    @Test func nkeyRoundTripsEveryType() throws {
        let pair = Ed25519KeyPair()
        for type in NKeyType.allCases {
            let text = NKey.encodePublicKey(pair.publicKey, type: type)
            #expect(text.first == type.letter)
            #expect(text.count == 56)
            let (decodedType, key) = try NKey.decodePublicKey(text)
            #expect(decodedType == type && key == pair.publicKey)
            let seedText = NKey.encodeSeed(pair.seed, type: type)
            #expect(seedText.hasPrefix("S\(type.letter)"))
            let (seedType, seed) = try NKey.decodeSeed(seedText)
            #expect(seedType == type && seed == pair.seed)
        }
    }

    @Test func nkeyRejectsDamage() throws {
        let text = NKey.encodePublicKey(Ed25519KeyPair().publicKey, type: .user)
        var chars = Array(text)
        chars[10] = chars[10] == "A" ? "B" : "A"
        #expect(throws: EncodingError.invalidNKey("checksum mismatch")) { try NKey.decodePublicKey(String(chars)) }
        #expect(throws: EncodingError.self) { try NKey.decodePublicKey(text.lowercased()) }
        #expect(throws: EncodingError.self) { try NKey.decodePublicKey(String(text.dropLast(3))) }
        #expect(throws: EncodingError.invalidNKey("expected a 'N' key, got a 'U' key")) {
            try NKey.decodePublicKey(text, expecting: .server)
        }
        #expect(throws: EncodingError.self) { try NKey.decodeSeed(text) }
        #expect(throws: EncodingError.self) { try NKey.decodePublicKey("") }
    }
}
