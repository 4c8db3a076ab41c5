import Testing
@testable import UnibusCrypto

/// Produced by vodozemac 0.10 (Python bindings); decrypting it proves
/// byte compatibility without any peer installed.
enum VodozemacVector {
    static let sessionKey = "AgAAAAAN0tH7hhrCYQNmUE0+0pPJfBS5bZ50WsG+sBVtGNM262pvAV5c653DDyoApLdnekda0lNEZ2ozMju8Jv8evL2G6XY2M1JgWb7pxbO7oJLDC9W/8/QMIKWyb/a3aj8V9miGFo0yTqiMdglr9trPJkrAu5+uytkrUJJlcQE5KPA7qc2gS1/a9s56YXZMrMG7sLJb8exG8nT17zJw1J8+Lyp7wgoL4BUzz+9ovane2siJWfQPkbsyGzcKZnMfVEBNxdspk1/soFU6R61iM7KhwGmG4fDw8S2akMgkobktjqS+CQ"
    static let messages: [(index: UInt32, plaintext: String, base64: String)] = [
        (0, "", "AwgAEhAmdTjf9TsTOj8Q7uP/cw6iy9gTwodRAD6u4gAJOJqTlOya/MvpXU4Pep+9vSfmpVE9AgrC2qk6sSeocv2HlXcU74tBEq+5r5zdeaA1mawBKdBnKXW0k44N"),
        (1, "Unibus", "AwgBEhAmyv5J/hH5/9PO1q4o1po3YKV6L/1zlrNvlLx73mso+k4hNgsCGyuUEDP5NF7VeO6GJwwqsdtzlpCUrLIcawJ7edPAHAkApH2etzPDRxsppZNqIg27g98I"),
        (2, String(repeating: "x", count: 16), "AwgCEiBcbTqeLB5KuD75SWKSdyM8S8zdQwkou5/ZZRTpk+aijjmLDaJ+2AhzvnJ+QwYN5f3DbrIUNxjBLbtgYVCATYj4jBdQbvTTGQoTd9ImXOanFt4WLU9cqaxZYEXjEuOLTSflJAaohKrZAg"),
        (3, String(repeating: "y", count: 100), "AwgDEnAd51cxtE6CdtdYyiE8W7Ju//kHhhE2D1WDD6gz/ebMBeQfw6UnTKpV/0HPu65MGkIStaeASiHVH7XZPUdZyiYYdeeSCTEfsYeeilSW9IgBQaQg+kfpQ0Hc1zEjXmUiAciMNEiaGhDAUELallLfy9SxPdZJA4H2EducNIH8vwGP023Lt8hKYmCpFuFep6kJ14tSVNGUr+dGu+Zc9jnMlxlJON6mp/V4LCcNNPQzCkwo7ZbL0h39RqgN"),
    ]
    /// vodozemac's `export_at(2)` of the session above.
    static let exportAt2 = "AQAAAAIN0tH7hhrCYQNmUE0+0pPJfBS5bZ50WsG+sBVtGNM262pvAV5c653DDyoApLdnekda0lNEZ2ozMju8Jv8evL2G6XY2M1JgWb7pxbO7oJLDC9W/8/QMIKWyb/a3aj8V9mharoYx3GdSitxXYXnywYQi5uC9O90gIK63P20yXOoF1M2gS1/a9s56YXZMrMG7sLJb8exG8nT17zJw1J8+Lyp7"
}

@Suite("Megolm")
struct MegolmTests {
    @Test func decryptsVodozemacVectorInAnyOrder() throws {
        let key = try MegolmSessionKey(base64: VodozemacVector.sessionKey)
        var session = MegolmInboundSession(sessionKey: key)
        for vector in VodozemacVector.messages.reversed() + VodozemacVector.messages {
            let decrypted = try session.decrypt(try MegolmMessage(base64: vector.base64))
            #expect(decrypted.index == vector.index)
            #expect(decrypted.plaintext == Array(vector.plaintext.utf8))
        }
        let export = session.export(at: 2)
        #expect(export?.base64 == VodozemacVector.exportAt2)
        #expect(session.sessionID == key.sessionID)
    }

    @Test func importedExportDecryptsFromItsIndexOnly() throws {
        var session = MegolmInboundSession(exportedSessionKey: try MegolmExportedSessionKey(base64: VodozemacVector.exportAt2))
        #expect(session.firstKnownIndex == 2)
        #expect(!session.signingKeyVerified)
        #expect(try session.decrypt(try MegolmMessage(base64: VodozemacVector.messages[3].base64)).index == 3)
        #expect(throws: MegolmError.unknownIndex(firstKnown: 2, got: 1)) {
            try session.decrypt(try MegolmMessage(base64: VodozemacVector.messages[1].base64))
        }
    }

    @Test func roundTripOutOfOrderAndFarAhead() throws {
        let outbound = MegolmOutboundSession()
        var inbound = MegolmInboundSession(sessionKey: try MegolmSessionKey(bytes: outbound.sessionKey.bytes))
        var messages: [MegolmMessage] = []
        for n in 0..<300 { messages.append(try outbound.encrypt(Array("message \(n)".utf8))) }
        #expect(outbound.messageIndex == 300)
        for n in [299, 0, 256, 255, 1, 298, 17] {
            let decrypted = try inbound.decrypt(messages[n])
            #expect(decrypted.index == UInt32(n))
            #expect(decrypted.plaintext == Array("message \(n)".utf8))
        }
    }

    @Test func sharedKeyMidSessionCannotReadEarlierMessages() throws {
        let outbound = MegolmOutboundSession()
        let early = try outbound.encrypt(Array("before".utf8))
        var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
        #expect(inbound.firstKnownIndex == 1)
        #expect(throws: MegolmError.unknownIndex(firstKnown: 1, got: 0)) { try inbound.decrypt(early) }
        #expect(try inbound.decrypt(try outbound.encrypt(Array("after".utf8))).plaintext == Array("after".utf8))
    }

    @Test func advancingForgetsEarlierIndices() throws {
        let outbound = MegolmOutboundSession()
        var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
        let first = try outbound.encrypt([1])
        let second = try outbound.encrypt([2])
        let advanced = inbound.advance(to: 1)
        let advancedAgain = inbound.advance(to: 1)
        #expect(advanced && !advancedAgain)
        #expect(throws: MegolmError.unknownIndex(firstKnown: 1, got: 0)) { try inbound.decrypt(first) }
        #expect(try inbound.decrypt(second).plaintext == [2])
        let forgotten = inbound.export(at: 0)
        #expect(forgotten == nil)
    }

    /// Sequential advance() and the fast advance(to:) must agree everywhere,
    /// in particular where R(1), R(2) and R(0) turn over.
    @Test func fastAdvanceMatchesSequentialAcrossPartBoundaries() {
        let starts: [UInt32] = [0, 250, 65_530, (1 << 24) - 3, 0xFFFF_FFF0]
        for start in starts {
            var base = MegolmRatchet()
            base.advance(to: start)
            var sequential = base
            for step in 1...12 {
                sequential.advance()
                var fast = base
                fast.advance(to: start + UInt32(step))
                #expect(fast.index == sequential.index)
                #expect(Array(fast.bytes) == Array(sequential.bytes), "index \(start + UInt32(step))")
                if start + UInt32(step) == UInt32.max { break }
            }
        }
        // A long jump equals the composition of shorter jumps.
        var direct = MegolmRatchet()
        var stepwise = direct
        direct.advance(to: 100_000)
        for target: UInt32 in [1, 255, 256, 257, 65_535, 65_536, 99_999, 100_000] { stepwise.advance(to: target) }
        #expect(Array(direct.bytes) == Array(stepwise.bytes))
    }

    @Test func copiesOfARatchetAreIndependent() {
        var a = MegolmRatchet()
        let b = a
        a.advance()
        #expect(b.index == 0 && a.index == 1)
        #expect(Array(a.bytes) != Array(b.bytes))
    }

    @Test func sessionExhaustsAtTheLastIndex() throws {
        let seed = Ed25519KeyPair().seed
        var ratchet = MegolmRatchet()
        ratchet.advance(to: UInt32.max)
        let state = try #require(MegolmOutboundSessionState(ratchet: Array(ratchet.bytes), index: UInt32.max, signingSeed: seed))
        let outbound = MegolmOutboundSession(state: state)
        var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
        let last = try outbound.encrypt(Array("last".utf8))
        #expect(last.index == UInt32.max)
        #expect(try inbound.decrypt(last).plaintext == Array("last".utf8))
        #expect(throws: MegolmError.sessionExhausted) { try outbound.encrypt([0]) }
        #expect(outbound.state.isExhausted)
    }

    @Test func outboundStateSurvivesAFileRoundTrip() throws {
        let outbound = MegolmOutboundSession()
        _ = try outbound.encrypt([1])
        let restored = MegolmOutboundSession(state: try MegolmOutboundSessionState(file: outbound.state.encodedFile()))
        #expect(restored.sessionID == outbound.sessionID)
        #expect(restored.messageIndex == 1)
        var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
        #expect(try inbound.decrypt(try restored.encrypt([9])).plaintext == [9])
        #expect(throws: CorruptDocument.self) { try MegolmOutboundSessionState(file: Array("{}".utf8)) }
    }

    @Test func messageLayoutIsCanonical() throws {
        let outbound = MegolmOutboundSession()
        let message = try outbound.encrypt(Array("hi".utf8))
        #expect(Array(message.bytes.prefix(5)) == [3, 0x08, 0x00, 0x12, 0x10])
        #expect(message.bytes.count == 5 + 16 + 8 + 64)
        #expect(message.ciphertext.count == 16)
        #expect(message.mac.count == 8)
        #expect(message.signature.count == 64)
        #expect(try MegolmMessage(base64: message.base64) == message)
    }

    /// Each kind of damage gets its own verdict, the one vodozemac gives.
    @Test func tamperedMessagesGetDistinctVerdicts() throws {
        let outbound = MegolmOutboundSession()
        var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
        let bytes = try outbound.encrypt(Array("attack at dawn".utf8)).bytes
        func verdict(_ mutate: (inout [UInt8]) -> Void) -> MegolmError? {
            var copy = bytes
            mutate(&copy)
            do {
                _ = try inbound.decrypt(try MegolmMessage(bytes: copy))
                return nil
            } catch {
                return error
            }
        }
        let cases: [(String, (inout [UInt8]) -> Void, MegolmError?)] = [
            ("untouched", { _ in }, nil),
            ("version byte", { $0[0] = 4 }, .badVersion(expected: 3, got: 4)),
            ("empty", { $0 = [] }, .badVersion(expected: 3, got: nil)),
            ("ciphertext bit", { $0[6] ^= 1 }, .badSignature),
            ("MAC bit", { $0[$0.count - 70] ^= 1 }, .badSignature),
            ("signature bit", { $0[$0.count - 1] ^= 1 }, .badSignature),
            ("index", { $0[2] = 1 }, .badSignature),
            ("byte appended", { $0.append(0) }, .badFormat("ciphertext length 16 does not match the 17 bytes present")),
            ("byte removed", { $0.removeLast() }, .badFormat("message too short (92 bytes)")),
        ]
        for (name, mutate, expected) in cases {
            let got = verdict(mutate)
            #expect(got == expected, "\(name)")
        }
        #expect(throws: MegolmError.badBase64) { try MegolmMessage(base64: "AwgA=") }
    }

    /// A message with a valid signature whose MAC or padding is wrong can only
    /// come from a holder of the signing key; check those verdicts directly.
    @Test func macAndPaddingFailuresBehindAValidSignature() throws {
        let signing = Ed25519KeyPair()
        var ratchet = MegolmRatchet()
        ratchet.advance(to: 0)
        let state = try #require(MegolmOutboundSessionState(ratchet: Array(ratchet.bytes), index: 0, signingSeed: signing.seed))
        let outbound = MegolmOutboundSession(state: state)
        var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
        let good = try outbound.encrypt(Array("x".utf8)).bytes

        func resign(_ bytes: [UInt8]) -> [UInt8] {
            let body = Array(bytes.dropLast(64))
            return body + signing.sign(body)
        }
        var badMAC = good
        badMAC[badMAC.count - 72] ^= 1
        #expect(throws: MegolmError.badMAC) { try inbound.decrypt(try MegolmMessage(bytes: resign(badMAC))) }

        // Encrypt a block with invalid padding under the right keys, MAC and sign it.
        let forged: [UInt8] = MegolmCipher.withKeys(for: ratchet) { aesKey, macKey, iv in
            var header: [UInt8] = [3, 0x08, 0x00, 0x12, 0x10]
            let plaintext = [UInt8](repeating: 0x00, count: 15) // padding byte 0 is never valid
            var block = [UInt8](repeating: 0, count: 32)
            // Encrypt 15 bytes + our own bogus final byte as one block, no padding: emulate with 16 bytes then drop the padding block.
            let sixteen = plaintext + [0x00]
            let written = sixteen.withUnsafeBytes { raw in block.withUnsafeMutableBufferPointer { AES256CBC.encrypt(key: aesKey, iv: iv, plaintext: raw, into: $0.baseAddress!) } }
            #expect(written == 32)
            header += block.prefix(16)
            var mac = [UInt8](repeating: 0, count: 8)
            header.withUnsafeBytes { raw in mac.withUnsafeMutableBufferPointer { MegolmCipher.truncatedMAC(macKey: macKey, data: raw, into: $0.baseAddress!) } }
            return header + mac
        }
        #expect(throws: MegolmError.badPadding) { try inbound.decrypt(try MegolmMessage(bytes: forged + signing.sign(forged))) }
    }

    @Test(arguments: [
        ("overlong index varint", [3, 0x08, 0x80, 0x00, 0x12, 0x10] as [UInt8]),
        ("index larger than 32 bits", [3, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x12, 0x10]),
        ("fields in the wrong order", [3, 0x12, 0x10, 0x08, 0x00]),
        ("unknown field", [3, 0x08, 0x00, 0x1A, 0x00, 0x12, 0x10]),
        ("overlong length varint", [3, 0x08, 0x00, 0x12, 0x90, 0x00]),
    ])
    func strictDecodingRejectsNonCanonicalHeaders(_ name: String, _ header: [UInt8]) {
        let bytes = header + [UInt8](repeating: 0xAB, count: 16) + [UInt8](repeating: 0, count: 72)
        #expect(throws: MegolmError.self, "\(name)") { try MegolmMessage(bytes: bytes) }
        do {
            _ = try MegolmMessage(bytes: bytes)
        } catch {
            #expect(error.reason == "bad-format", "\(name): \(error)")
        }
    }

    @Test func strictDecodingRejectsEmptyAndPartialCiphertext() {
        let empty: [UInt8] = [3, 0x08, 0x00, 0x12, 0x00] + [UInt8](repeating: 0, count: 16 + 72)
        #expect(throws: MegolmError.self) { try MegolmMessage(bytes: empty) }
        let partial: [UInt8] = [3, 0x08, 0x00, 0x12, 0x11] + [UInt8](repeating: 0, count: 17 + 72)
        #expect(throws: MegolmError.badFormat("ciphertext of 17 bytes is not a whole number of AES blocks")) { try MegolmMessage(bytes: partial) }
        #expect(throws: MegolmError.badFormat("message too short (10 bytes)")) { try MegolmMessage(bytes: [3] + [UInt8](repeating: 0, count: 9)) }
    }

    @Test func sessionKeyDecodingIsStrict() throws {
        let key = MegolmOutboundSession().sessionKey
        let bytes = key.bytes
        #expect(bytes.count == 229)
        #expect(try MegolmSessionKey(bytes: bytes).sessionID == key.sessionID)
        #expect(throws: MegolmError.badFormat("1 unexpected bytes at the end")) { try MegolmSessionKey(bytes: bytes + [0]) }
        #expect(throws: MegolmError.badFormat("too short (228 bytes, expected 229)")) { try MegolmSessionKey(bytes: Array(bytes.dropLast())) }
        #expect(throws: MegolmError.badVersion(expected: 2, got: 1)) { try MegolmSessionKey(bytes: [1] + bytes.dropFirst()) }
        var tampered = bytes
        tampered[20] ^= 1
        #expect(throws: MegolmError.badSignature) { try MegolmSessionKey(bytes: tampered) }
        #expect(throws: MegolmError.badBase64) { try MegolmSessionKey(base64: key.base64 + "=") }

        var inbound = MegolmInboundSession(sessionKey: key)
        let exported = inbound.export(at: 0)
        let export = try #require(exported).bytes
        #expect(export.count == 165)
        #expect(throws: MegolmError.badFormat("1 unexpected bytes at the end")) { try MegolmExportedSessionKey(bytes: export + [0]) }
        var badPoint = export
        for i in 133..<165 { badPoint[i] = 0 }
        badPoint[133] = 2 // y = 2 is not on the curve
        #expect(throws: MegolmError.badFormat("the signing key is not a valid Ed25519 public key")) { try MegolmExportedSessionKey(bytes: badPoint) }
    }
}
